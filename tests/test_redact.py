"""Secrets out of logs, outputs and command lines: key hints, redact, log filter, redact_argv."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from mpinfer.redact import RedactingFilter, key_hint, redact, redact_argv

KEY = "sk-test-4f9Qz7LmN2pR8sT1vX3yZ9wxyz"
OTHER_KEY = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34qrst"
LINEAR_INPUT_CHARS = 200_000
LINEAR_LIMIT_S = 1.0


# --- key_hint -------------------------------------------------------------------------------------


def test_key_hint_shows_the_last_four_characters_of_a_long_key() -> None:
    # Given a key of 12 characters or more
    # When it is named for a log
    hint = key_hint("abcdefgh1234", 0)
    # Then only its last four characters show
    assert hint == "...1234"


def test_key_hint_names_a_short_key_by_its_number_only() -> None:
    # Given a key too short to show any of it (its last 4 would give most of it away)
    # When the second key is named
    hint = key_hint("none", 1)
    # Then it is named by its 1-based number
    assert hint == "key #2"


# --- redact ---------------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence_of_each_secret_by_its_hint() -> None:
    # Given a text holding a long key twice and a short key once
    text = f"key={KEY}; again {KEY}; local=secret7"
    # When it is redacted with both keys
    cleaned = redact(text, [KEY, "secret7"])
    # Then the long key shows only its last four and the short key nothing
    assert cleaned == "key=...wxyz; again ...wxyz; local=***"


def test_redact_ignores_secrets_shorter_than_four_characters() -> None:
    # Given a three-character "secret" that is also a common word
    # When a text holding it is redacted
    cleaned = redact("the cat sat", ["cat"])
    # Then the text is unchanged: masking it would mangle every log line and hide nothing
    assert cleaned == "the cat sat"


def test_redact_replaces_a_secret_whole_when_another_secret_is_its_prefix() -> None:
    # Given two secrets, one the start of the other
    long_secret = "abcdefghijklmnop9876"
    prefix = "abcdefghij"
    # When a text with the longer one is redacted with both
    cleaned = redact(f"x {long_secret} y", [prefix, long_secret])
    # Then the longer one is replaced whole, no tail of it left behind
    assert cleaned == "x ...9876 y"


def test_redact_scrubs_openai_style_keys_it_was_not_given() -> None:
    # Given a text with an sk- key and an sk-proj- key, neither of them passed as a secret
    text = f"Incorrect API key provided: {KEY}. Also {OTHER_KEY}."
    # When it is redacted with no secrets
    cleaned = redact(text)
    # Then both keys are cut down to their last four
    assert cleaned == "Incorrect API key provided: sk-...wxyz. Also sk-...qrst."


def test_redact_scrubs_bearer_tokens_in_any_case() -> None:
    # Given HTTP authorization headers as an SDK might log them
    text = ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc= | "
            "authorization: bearer tok_12345678")
    # When it is redacted
    cleaned = redact(text)
    # Then the tokens are gone and the scheme is kept
    assert cleaned == "Authorization: Bearer *** | authorization: bearer ***"


def test_redact_scrubs_the_password_of_a_url_and_keeps_the_user() -> None:
    # Given URLs with user info, one password holding an unencoded "@"
    text = "base https://alice:hunter22@proxy.local:8080/v1 and http://bob:p@ss@host/x"
    # When it is redacted
    cleaned = redact(text)
    # Then only the passwords are masked
    assert cleaned == "base https://alice:***@proxy.local:8080/v1 and http://bob:***@host/x"


@pytest.mark.parametrize("text", [
    "task-0123456789abcdefghij finished in 1.2 s",
    "the bearer of bad news",
    "Bearer none",
    "see https://example.com:8080/v1/chat?user=a@b.c",
    "sk-short is not a key",
    "model gpt-4o-mini answered 'A red square.'",
])
def test_redact_leaves_text_without_secrets_alone(text: str) -> None:
    # Given text that only resembles credentials
    # When it is redacted with a key it does not contain
    cleaned = redact(text, [KEY])
    # Then it is unchanged
    assert cleaned == text


def adversarial_inputs() -> Iterator[tuple[str, str]]:
    """Inputs on which a careless pattern backtracks quadratically."""
    n = LINEAR_INPUT_CHARS
    yield "letters", "a" * n
    yield "schemes without userinfo", "https" * (n // 5) + " ://"
    yield "colons after a scheme", "a://" + ":" * n
    yield "short sk- runs", ("sk-" + "a" * 15 + " ") * (n // 19)
    yield "bearers without tokens", "bearer " * (n // 7)
    yield "a secret's near misses", (KEY[:-1] + " ") * (n // len(KEY))


ADVERSARIAL = dict(adversarial_inputs())


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_redact_takes_linear_time_on_long_adversarial_text(name: str) -> None:
    # Given a long text built to make patterns backtrack
    text = ADVERSARIAL[name]
    # When it is redacted
    started = time.perf_counter()
    redact(text, [KEY])
    elapsed = time.perf_counter() - started
    # Then it takes well under the time a quadratic scan would (minutes at this length)
    assert elapsed < LINEAR_LIMIT_S, f"{name}: {elapsed:.2f} s"


# --- RedactingFilter ------------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger tree whose parent's handler writes to a StringIO through a RedactingFilter."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter([KEY]))
    parent = logging.getLogger("test_redact.parent")
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    parent.addHandler(handler)
    try:
        yield parent.getChild("child"), sink
    finally:
        parent.removeHandler(handler)


def test_redacting_filter_removes_a_key_given_as_a_percent_argument(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    # Given a child logger whose records reach a filtered handler on its parent
    logger, sink = logged
    # When a message carries the key as a %-argument
    logger.warning("request with key %s failed (%d)", KEY, 401)
    # Then the line is written, formatted, with the key's hint instead of the key
    assert (sink.getvalue()
            == "WARNING test_redact.parent.child request with key ...wxyz failed (401)\n")


def test_redacting_filter_removes_a_key_from_an_exceptions_traceback(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    # Given an exception whose text holds the key, as an SDK's error might
    logger, sink = logged
    try:
        raise RuntimeError(f"Incorrect API key provided: {KEY}")
    except RuntimeError:
        # When it is logged with its traceback
        logger.exception("call failed")
    # Then the traceback is written without the key
    written = sink.getvalue()
    assert "RuntimeError: Incorrect API key provided: ...wxyz" in written
    assert "Traceback (most recent call last)" in written
    assert KEY not in written


def test_redacting_filter_keeps_the_key_out_of_a_message_that_cannot_be_formatted(
    logged: tuple[logging.Logger, io.StringIO], capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a message whose arguments do not fit its format (logging would print them raw to stderr)
    logger, sink = logged
    # When it is logged with the key among the arguments
    logger.error("%d tasks left", KEY)
    # Then a line is still written, without the key, and nothing reaches stderr
    assert KEY not in sink.getvalue()
    assert "...wxyz" in sink.getvalue()
    assert capsys.readouterr().err == ""


def test_redacting_filter_passes_every_record() -> None:
    # Given a filter and a record holding the key
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (KEY,), None)
    # When the record is filtered
    kept = RedactingFilter([KEY]).filter(record)
    # Then it is kept, rewritten with its arguments folded in
    assert kept is True
    assert (record.msg, record.args) == ("key ...wxyz", None)


# --- redact_argv ----------------------------------------------------------------------------------


def test_redact_argv_hides_values_of_secret_options_and_secrets_anywhere() -> None:
    # Given a command line with secret options in both forms, a key in a URL, and field-name options
    argv = ["mpinfer", "-i", "tasks.jsonl", "--api-key", "plain-value-1", "--token=abc",
            "--client-secret", "s3", "--db-password=pw", "--base-url", "https://u:pw@host/v1",
            "--prompt-key", "question", f"--note={KEY}", "--", "--api-key", "positional"]
    # When it is redacted
    cleaned = redact_argv(argv, [KEY])
    # Then secret option values are ***, field names stay, and after -- nothing is an option
    assert cleaned == ["mpinfer", "-i", "tasks.jsonl", "--api-key", "***", "--token=***",
                       "--client-secret", "***", "--db-password=***", "--base-url",
                       "https://u:***@host/v1", "--prompt-key", "question", "--note=...wxyz", "--",
                       "--api-key", "positional"]


def test_redact_argv_hides_field_name_options_too_when_told_nothing_is_exempt() -> None:
    # Given a command line with --prompt-key, whose name contains "key"
    argv = ["mpinfer", "--prompt-key", "question"]
    # When it is redacted with no exempt options
    cleaned = redact_argv(argv, [], not_secret=())
    # Then its value is hidden like any other key's
    assert cleaned == ["mpinfer", "--prompt-key", "***"]
