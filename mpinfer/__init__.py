"""mpinfer: a resumable, crash-safe batch runner for OpenAI-compatible chat APIs.

The public API: ``run`` a job, read its ``status``, ``validate`` (and ``repair``) its output, ``export``
the results, or start afresh (``fresh_start``); settle settings with ``load_config`` into a ``RunConfig``.
Errors are ``MpinferError`` subclasses.

Names load on first use, so that ``python -m mpinfer.mockserver`` and ``--status`` do not pay for
importing the API client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config", "load_config": "config",
    "ConfigError": "errors", "InputError": "errors", "MpinferError": "errors", "OutputError": "errors",
    "RunAborted": "errors", "RunLockedError": "errors",
    "RunSummary": "summary", "run": "pool",
    "StatusReport": "status", "status": "status",
    "ValidationReport": "validate", "validate": "validate",
    "ExportReport": "export", "export": "export",
    "RepairReport": "repair", "repair": "repair", "fresh_start": "repair",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from .config import RunConfig, load_config
    from .errors import ConfigError, InputError, MpinferError, OutputError, RunAborted, RunLockedError
    from .pool import run
    from .summary import RunSummary
    from .status import StatusReport, status
    from .validate import ValidationReport, validate
    from .export import ExportReport, export
    from .repair import RepairReport, fresh_start, repair


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
