"""The documentation keeps up with the settings: every option has its variable in .env.example and its
flag in the README."""

from __future__ import annotations

from pathlib import Path

from mpinfer.config import OPTIONS

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_has_its_variable_in_the_env_example() -> None:
    # Given the documented example environment
    example = (ROOT / ".env.example").read_text()
    # Then every option's variable is listed in it, with OPENAI_API_KEY
    missing = [option.env_names[0] for option in OPTIONS if f"{option.env_names[0]}=" not in example]
    assert missing == []
    assert "OPENAI_API_KEY=" in example


def test_every_flag_is_in_the_readme() -> None:
    # Given the README
    readme = (ROOT / "README.md").read_text()
    # Then every option's flag is documented there
    assert [option.flag for option in OPTIONS if option.flag not in readme] == []
