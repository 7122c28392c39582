"""mpinfer: a resumable, crash-safe batch runner for OpenAI-compatible chat APIs.

The public API: ``run`` a job (keyword settings in, a ``RunResult`` out), read its ``status``,
``validate`` (and ``repair``) its output, ``export`` the results, or start afresh (``fresh_start``);
settle settings with ``load_config`` into a ``RunConfig``. Errors are ``MpinferError`` subclasses.

Names load on first use (``run`` too), so that ``python -m mpinfer.mockserver``, ``--status`` and
``--validate`` do not pay for importing the API client, the run's lifecycle and its backends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "BackendKind": "config", "RunConfig": "config", "Transport": "config", "load_config": "config",
    "RunResult": "pyapi", "run": "pyapi",
    "ConfigError": "errors", "InputError": "errors", "MpinferError": "errors",
    "OutputError": "errors",
    "RunLockedError": "errors",
    "RunSummary": "reports.summary",
    "StatusReport": "reports.status", "status": "reports.status",
    "ValidationReport": "reports.validate", "validate": "reports.validate",
    "ExportReport": "reports.export", "export": "reports.export",
    "RepairReport": "store.repair", "repair": "store.repair", "fresh_start": "store.repair",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

# ``run`` is the Python callers' wrapper (mpinfer/pyapi.py) over the run the CLI calls
# (mpinfer/lifecycle.py); no module of the package is called ``run``, so nothing shadows it.

if TYPE_CHECKING:
    # What __getattr__ loads, for type checkers; "X as X" marks each name as re-exported (mypy
    # --strict and ruff read no re-export from the computed __all__).
    from .config import BackendKind as BackendKind
    from .config import RunConfig as RunConfig
    from .config import Transport as Transport
    from .config import load_config as load_config
    from .errors import ConfigError as ConfigError
    from .errors import InputError as InputError
    from .errors import MpinferError as MpinferError
    from .errors import OutputError as OutputError
    from .errors import RunLockedError as RunLockedError
    from .pyapi import RunResult as RunResult
    from .pyapi import run as run
    from .reports.export import ExportReport as ExportReport
    from .reports.export import export as export
    from .reports.status import StatusReport as StatusReport
    from .reports.status import status as status
    from .reports.summary import RunSummary as RunSummary
    from .reports.validate import ValidationReport as ValidationReport
    from .reports.validate import validate as validate
    from .store.repair import RepairReport as RepairReport
    from .store.repair import fresh_start as fresh_start
    from .store.repair import repair as repair

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
