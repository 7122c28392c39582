"""Keeping secrets out of everything mpinfer writes: logs, lines, manifests, messages.

Two layers. The exact API keys of the run are replaced wherever they occur, so a key never
leaves the process in clear even when it has no recognisable shape. Then anything shaped
like a credential is scrubbed too (OpenAI-style ``sk-`` keys, ``Bearer`` tokens, passwords
in URLs), which catches keys the run was not given: a key in a base URL, in an SDK's
exception text, or pasted into an extra body.

What is left of a key is its last four characters, the same hint the logs and reports use to tell
keys apart; a key shorter than 12 characters shows nothing, since its last four would give too much
of it away. Every pattern here is matched in time linear in the text, so a megabyte of log message
costs milliseconds.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Collection, Iterable, Sequence

MIN_HINTED_LENGTH = 12
MIN_SECRET_LENGTH = 4
MASK = "***"

# Options of mpinfer whose names contain "key" but whose values name an input field or a file:
# hiding them would make a recorded command line useless and protect nothing (the values still go
# through redact()).
NOT_SECRET_OPTIONS: frozenset[str] = frozenset({"--id-key", "--prompt-key", "--images-key",
                                                "--api-keys-file"})
_SECRET_OPTION_WORDS = ("key", "token", "secret", "password")

# Not preceded by a letter or digit, so "task-0123456789abcdefgh" is an id, not a key.
_OPENAI_KEY = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{16,}")
# RFC 6750 token characters. At least 8 of them, so prose such as "the bearer of bad news" stays
# whole; a shorter token is no credential worth the name ("Bearer none" for a local server).
_BEARER = re.compile(r"\b(bearer)[ \t]+[A-Za-z0-9._~+/-]{8,}=*", re.IGNORECASE)
# Anchored on "://" rather than on the scheme: a scheme pattern would rescan every long run of
# letters from each of its starting points (quadratic). The password may hold an unencoded "@"; the
# last one before the path ends it.
_URL_PASSWORD = re.compile(r"://([^\s/?#@:]*):[^\s/?#]*@")
_PLAIN_FORMATTER = logging.Formatter()


def key_hint(key: str, index: int) -> str:
    """How key ``index`` (0-based) may be shown: ``...wxyz``, or ``key #2`` if it is short."""
    return f"...{key[-4:]}" if len(key) >= MIN_HINTED_LENGTH else f"key #{index + 1}"


def _mask(secret: str) -> str:
    return f"...{secret[-4:]}" if len(secret) >= MIN_HINTED_LENGTH else MASK


@functools.lru_cache(maxsize=32)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of the secrets, longest first: a key that starts another never splits it."""
    wanted = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    if not wanted:
        return None
    return re.compile("|".join(re.escape(s) for s in wanted))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret replaced by its hint and credential-shaped strings scrubbed.

    The exact secrets go first: a pattern could cut a secret in two and leave a
    piece of it that the exact match would no longer find.
    """
    pattern = _secrets_pattern(tuple(secrets))
    if pattern is not None:
        text = pattern.sub(lambda m: _mask(m.group()), text)
    if "sk-" in text:
        text = _OPENAI_KEY.sub(lambda m: f"sk-...{m.group()[-4:]}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"://\1:{MASK}@", text)
    return _BEARER.sub(rf"\1 {MASK}", text)


class RedactingFilter(logging.Filter):
    """A logging filter that removes secrets from each record; it rewrites records, never drops one.

    Attach it to handlers, not loggers: a logger's filters see only the records logged on that very
    logger, never those propagating from its children, whereas a handler's see every record it is
    about to write.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the formatted message, traceback and stack; the record always passes."""
        try:
            message = record.getMessage()
        except Exception:
            # logging would report the failed formatting itself, printing msg and args as they are.
            message = f"{record.msg!s} % {record.args!r}"
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            # A formatter fills exc_text from exc_info only after the filters ran, so the traceback
            # would go out unredacted: render it here; formatters reuse an exc_text that is set.
            record.exc_text = _PLAIN_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def _is_secret_option(name: str, not_secret: Collection[str]) -> bool:
    if name in not_secret:
        return False
    lowered = name.lstrip("-").lower()
    return any(word in lowered for word in _SECRET_OPTION_WORDS)


def redact_argv(
    argv: Sequence[str],
    secrets: Iterable[str] = (),
    not_secret: Collection[str] = NOT_SECRET_OPTIONS,
) -> list[str]:
    """The command line fit to be recorded: secrets redacted, secret options' values hidden.

    An option is secret when its name contains key, token, secret or password (``--api-key X``,
    ``--token=X``), unless it is one of ``not_secret``; its value becomes ``***``. After ``--``
    nothing is an option.
    """
    secrets = tuple(secrets)
    cleaned: list[str] = []
    hide_next = False
    options_ended = False
    for item in argv:
        if hide_next:
            cleaned.append(MASK)
            hide_next = False
            continue
        if options_ended or not item.startswith("-") or item == "-":
            cleaned.append(redact(item, secrets))
            continue
        if item == "--":
            options_ended = True
            cleaned.append(item)
            continue
        name, equals, _value = item.partition("=")
        if _is_secret_option(name, not_secret):
            if equals:
                cleaned.append(f"{redact(name, secrets)}={MASK}")
            else:
                cleaned.append(redact(name, secrets))
                hide_next = True
        else:
            cleaned.append(redact(item, secrets))
    return cleaned
