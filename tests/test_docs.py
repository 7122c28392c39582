"""The documentation keeps up with the settings: each RunConfig field declared with ``setting()`` is the one
source of its default, help and names, and the CLI's help, the README's settings table and .env.example are
held to it."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from mpinfer.cli import build_parser
from mpinfer.config import OPTIONS, RunConfig, load_config
from mpinfer.settings import env_line, readme_row

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| flag | variable / toml key | default | meaning |"
VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def readme_settings_rows() -> list[str]:
    """The rows of the README's settings table (after its header and rule, up to the blank line)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(TABLE_HEADER) + 2
    end = lines.index("", start)
    return lines[start:end]


def test_the_readme_settings_table_has_each_settings_row_as_its_field_declares_it() -> None:
    # Given the README's settings table
    rows = readme_settings_rows()
    # Then it holds one row per setting, in field order, with the field's names, default and help
    expected = [readme_row(option) for option in OPTIONS]
    missing = "\n".join(row for row in expected if row not in rows)
    assert not missing, f"README.md's settings table lacks (or has another form of) these rows:\n{missing}"
    assert rows == expected  # and in field order, with no row of a setting that is gone


def test_the_env_example_has_each_settings_variable_with_its_default_and_nothing_stale() -> None:
    # Given the documented example environment
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    variables = [line for line in lines if VARIABLE.match(line)]
    # Then every setting's line is there as the field declares it, with the API key variables
    expected = [env_line(option) for option in OPTIONS]
    missing = "\n".join(line for line in expected if line not in variables)
    assert not missing, f".env.example lacks (or has another default in) these lines:\n{missing}"
    # And it names no variable that is not a setting's or a key's
    assert sorted(set(variables) - set(expected)) == ["OPENAI_API_KEY=", "OPENAI_API_KEYS="]


def test_copying_the_env_example_to_dotenv_changes_no_setting(tmp_path: Path) -> None:
    # Given .env.example copied to .env as it is
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    (tmp_path / ".env").chmod(0o600)
    # When the config is settled from it alone
    config = load_config({}, environ={}, cwd=tmp_path)
    # Then every setting has the same value as when nothing is set: the example's defaults are the fields'
    defaults = RunConfig()
    assert {o.name: getattr(config, o.name) for o in OPTIONS} == {o.name: getattr(defaults, o.name) for o in OPTIONS}


def test_every_setting_default_is_its_fields_default_and_passes_its_own_parser() -> None:
    # Given the settings and the dataclass fields they come from
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for option in OPTIONS:
        # Then the option's default is the field's default
        assert option.default == fields[option.name].default, option.name
        # And a default written as text (as .env.example writes it) parses back to itself
        if option.env_value:
            assert option.parse(option.env_value) == option.default, option.name


def test_the_cli_help_shows_each_settings_flags_metavar_help_and_default() -> None:
    # Given the command line's parser
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions}
    for option in OPTIONS:
        if not option.cli:  # a setting without a flag (its flag's name does something else on the command line)
            assert option.name not in actions
            continue
        action = actions[option.name]
        # Then each setting has its flags, its metavar and its help with the default the field holds
        assert action.option_strings == ([option.short] if option.short else []) + [option.flag]
        assert action.metavar == (None if option.is_switch else option.metavar), option.name
        shown = "" if option.is_switch or not option.default_text else f" (default: {option.default_text})"
        assert action.help == option.help + shown
    # And the whole help renders (argparse would fail on a stray "%" in a help text)
    assert "--max-cost USD" in parser.format_help()


def test_every_flag_of_the_command_line_is_in_the_readme() -> None:
    # Given the README and the parser's flags, settings and command-line-only ones alike
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    flags = [s for action in build_parser()._actions for s in action.option_strings if s.startswith("--")]
    # Then every flag is documented there
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", readme)]
    assert missing == []


def test_the_readme_shows_the_parsers_defaults_for_the_command_line_only_flags() -> None:
    # Given the README's table of command-line-only flags and the parser
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| flag | default | meaning |") + 2
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:lines.index("", start)]]
    actions = {s: a for a in build_parser()._actions for s in a.option_strings}
    # Then each number the parser holds as a default is the one shown there (for an optional value, the one
    # it takes when the value is left out)
    shown = {}
    for cells in rows:
        flag = re.findall(r"--[\w-]+", cells[0])[-1]
        action = actions[flag]
        default = action.const if action.nargs == "?" else action.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):  # a number the parser holds
            shown[flag] = (cells[1], f"{default:g}")
    assert shown and all(readme == parser for readme, parser in shown.values()), shown
