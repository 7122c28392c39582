"""mpinfer: a resumable, crash-safe batch runner for OpenAI-compatible chat APIs.

The public API: ``run`` a job, read its ``status``, ``validate`` its output; settle settings with
``load_config`` into a ``RunConfig``. Errors are ``MpinferError`` subclasses.
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config
from .errors import ConfigError, InputError, MpinferError, OutputError, RunAborted, RunLockedError
from .pool import RunSummary, run
from .status import StatusReport, status
from .validate import ValidationReport, validate

__all__ = [
    "ConfigError", "InputError", "MpinferError", "OutputError", "RunAborted", "RunConfig", "RunLockedError",
    "RunSummary", "StatusReport", "ValidationReport", "__version__", "load_config", "run", "status", "validate",
]
