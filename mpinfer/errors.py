"""The exception hierarchy: the library raises these; only the CLI turns them into messages.

Every exception here survives pickling (it may cross a process boundary), so each keeps its
constructor arguments in ``args`` and rebuilds from them.
"""

from __future__ import annotations

from typing import Any


class MpinferError(Exception):
    """Base of every error mpinfer raises on purpose."""

    exit_code = 1


class ConfigError(MpinferError):
    """A setting is missing or invalid (flag, environment, .env or mpinfer.toml)."""

    exit_code = 2


class SettingsChanged(ConfigError):
    """The output holds answers made with other answer-changing settings (see --allow-mixed)."""

    exit_code = 2

    def __init__(self, changes: list[str]) -> None:
        super().__init__(changes)
        self.changes = changes

    def __str__(self) -> str:
        return "\n".join([*self.changes,
                          "rerun with --allow-mixed to mix them, or write to another output"])


class InputError(MpinferError):
    """The input file is unreadable or malformed; names the file and line."""

    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, path, line)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"


class OutputError(MpinferError):
    """The output file cannot be read, locked or written (includes a full disk)."""

    exit_code = 3


class RunLockedError(OutputError):
    """Another run is live on the same output."""

    exit_code = 4


class ImageError(MpinferError):
    """One task's image is missing, unreadable or not an image; a per-task failure, never fatal."""


class ImagesTooLarge(ImageError):
    """One request's images together pass the provider's limit; the task fails before it is sent."""


class NoKeysLeft(MpinferError):
    """Every API key of the run has been rejected (401/403): no task can be sent; the run aborts."""


class MalformedResponse(MpinferError):
    """A 200 whose body is not a chat completion; retried like a server error."""


class BadAnswer(MpinferError):
    """An answer that does not parse or fit the run's --json-schema or --labels: asked again."""


class HttpStatusError(MpinferError):
    """An answer with a status outside 2xx, sent without the SDK (api/wire.py): read as the SDK's
    ``APIStatusError`` is (api/failures.py), with the same message, body and code."""

    def __init__(self, message: str, status_code: int = 0, code: str | None = None,
                 body: object = None, headers: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.body = body  # the body's ``error`` object (the whole body, or its text, without one)
        self.headers = headers  # a case-insensitive mapping (Retry-After and the limits' hints)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.status_code, self.code, self.body,
                             None if self.headers is None else dict(self.headers)))


class ConnectionFailed(MpinferError):
    """A request sent without the SDK got no answer: refused, reset, dropped, or a proxy's refusal
    (the kind of the SDK's ``APIConnectionError``); retried."""


class BatchApiError(MpinferError):
    """A Batch API call (upload, create, poll, download, cancel) failed after its retries; the batch
    plan beside the output keeps everything already submitted, so a rerun goes on from there."""

    exit_code = 5
