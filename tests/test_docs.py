"""The documentation stays true: README.md is the front door and docs/ the reference.

Each RunConfig field declared with ``setting()`` is the one source of its default, help and names;
the CLI's help, the settings table of docs/settings.md and .env.example are held to it. Every
relative link in the README and docs/ leads to a file (and heading) that exists, every ``--flag``
they name is a flag of the CLI or of a tool listed here, and the README stays a short front door.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from mpinfer.cli import build_parser
from mpinfer.config import OPTIONS, RunConfig, load_config
from mpinfer.mock.cli import build_arg_parser as mock_parser
from mpinfer.settings import env_line, settings_row

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETTINGS = ROOT / "docs" / "settings.md"
TABLE_HEADER = "| flag | variable / toml key | default | meaning |"
FLAGS_ONLY_HEADER = "| flag | default | meaning |"
VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")
README_MAX_LINES = 360
LINE_MAX = 100

# Flags the pages name that belong to other tools, each with the tool that defines it. The
# mock server's are checked against its parser, the bench scripts' against their source.
MOCK_FLAGS = {"--port", "--refuse-marker", "--reasoning-models", "--filter-marker",
              "--filter-answer-marker", "--omit-usage", "--answer-labels", "--label-models",
              "--pbad-answer"}
BENCH_FLAGS = {
    "bench/throughput.py": {"--latencies", "--target-configs", "--transports", "--scale-tasks",
                            "--configs", "--jitter", "--scale-lanes"},
    "bench/http_stack.py": {"--latency", "--requests"},
    "bench/startup.py": {"--processes", "--one-task-repeat"},
    "bench/sdk_floor.py": {"--shapes", "--requests", "--text", "--floor"},
    "bench/run_all.py": {"--full"},
    "bench/resume_scan.py": {"--lines", "--steps", "--repeat"},
    "bench/client_cpu.py": {"--compile-each-run"},
}
RAY_START_FLAGS = {"--head", "--address"}  # `ray start`, Ray's own command line


def doc_pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def table_rows(path: Path, header: str) -> list[str]:
    """The rows of the table under ``header`` in ``path`` (after its rule, up to the blank line)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2
    end = lines.index("", start)
    return lines[start:end]


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings (a repeated heading gets -1, -2, ...)."""
    found: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        in_fence ^= line.startswith("```")
        if in_fence or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def relative_links(path: Path) -> Iterator[str]:
    """The targets of a page's Markdown links that are not URLs (code spans left out)."""
    text = CODE_SPAN.sub("", path.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def test_the_settings_page_has_each_settings_row_as_its_field_declares_it() -> None:
    # Given the settings table of docs/settings.md
    rows = table_rows(SETTINGS, TABLE_HEADER)
    # Then it holds one row per setting, in field order, with the field's names, default and help
    expected = [settings_row(option) for option in OPTIONS]
    missing = "\n".join(row for row in expected if row not in rows)
    assert not missing, f"docs/settings.md's table lacks (or has another form of):\n{missing}"
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
    # Then every setting has the same value as when nothing is set: the example's defaults are
    # the fields'
    defaults = RunConfig()
    settled = {o.name: getattr(config, o.name) for o in OPTIONS}
    assert settled == {o.name: getattr(defaults, o.name) for o in OPTIONS}


def test_every_setting_default_is_its_fields_default_and_passes_its_own_parser() -> None:
    # Given the settings and the dataclass fields they come from
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert len(OPTIONS) > 40
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
    assert len(OPTIONS) > 40
    for option in OPTIONS:
        if not option.cli:  # a setting without a flag (its flag's name does something else there)
            assert option.name not in actions
            continue
        action = actions[option.name]
        # Then each setting has its flags, its metavar and its help with the default the field holds
        assert action.option_strings == ([option.short] if option.short else []) + [option.flag]
        assert action.metavar == (None if option.is_switch else option.metavar), option.name
        default = option.default_text
        shown = "" if option.is_switch or not default else f" (default: {default})"
        assert action.help == option.help + shown
    # And the whole help renders (argparse would fail on a stray "%" in a help text)
    assert "--max-cost USD" in parser.format_help()


def test_every_flag_of_the_command_line_is_on_the_settings_page() -> None:
    # Given the settings page and the parser's flags, settings and command-line-only ones alike
    page = SETTINGS.read_text(encoding="utf-8")
    flags = [s for action in build_parser()._actions for s in action.option_strings
             if s.startswith("--")]
    assert len(flags) > 50
    # Then every flag is documented there
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", page)]
    assert missing == []


def test_the_settings_page_shows_the_parsers_defaults_for_the_command_line_only_flags() -> None:
    # Given the settings page's table of command-line-only flags and the parser
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in table_rows(SETTINGS, FLAGS_ONLY_HEADER)]
    actions = {s: a for a in build_parser()._actions for s in a.option_strings}
    # Then each number the parser holds as a default is the one shown there (for an optional value,
    # the one it takes when the value is left out)
    shown = {}
    for cells in rows:
        flag = re.findall(r"--[\w-]+", cells[0])[-1]
        action = actions[flag]
        default = action.const if action.nargs == "?" else action.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):  # a number it holds
            shown[flag] = (cells[1], f"{default:g}")
    assert shown and all(page == parser for page, parser in shown.values()), shown


def test_every_relative_link_leads_to_a_file_and_heading_that_exist() -> None:
    # Given the README and the docs pages, and the relative links in them
    links = [(page, target) for page in doc_pages() for target in relative_links(page)]
    assert len(links) > 20
    broken = []
    for page, target in links:
        file, _, anchor = target.partition("#")
        # Then each leads to a file that exists (the page itself for "#anchor")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        # And to a heading of that page, when it names one
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    # Given the docs pages and the README's links
    pages = sorted((ROOT / "docs").glob("*.md"))
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    # Then a newcomer can reach every page from the front door
    assert len(pages) >= 7
    assert [page.name for page in pages if page not in linked] == []


def test_every_flag_the_docs_name_is_a_flag_of_the_cli_or_of_a_listed_tool() -> None:
    # Given the flags of the CLI, and those of the other tools the pages show
    cli = {s for action in build_parser()._actions for s in action.option_strings}
    bench = {flag for flags in BENCH_FLAGS.values() for flag in flags}
    others = MOCK_FLAGS | bench | RAY_START_FLAGS
    # When every --flag named in the README and docs/ is collected
    named = {(page.name, flag) for page in doc_pages() for flag in FLAG.findall(page.read_text())}
    assert len(named) > 100
    # Then each is the CLI's or a listed tool's
    assert sorted((page, flag) for page, flag in named if flag not in cli | others) == []


def test_the_other_tools_flags_the_docs_name_are_theirs() -> None:
    # Given the flags listed as other tools' (the mock server's and the bench scripts')
    mock = {s for action in mock_parser()._actions for s in action.option_strings}
    # Then the mock server's parser has each of its flags
    assert sorted(MOCK_FLAGS - mock) == []
    # And each bench script declares each of its flags
    for script, flags in BENCH_FLAGS.items():
        source = (ROOT / script).read_text(encoding="utf-8")
        assert sorted(f for f in flags if f'add_argument("{f}"' not in source) == [], script


def test_the_readme_is_a_short_front_door_with_the_newcomer_commands() -> None:
    # Given the README
    lines = README.read_text(encoding="utf-8").splitlines()
    # Then it stays short: the reference lives in docs/
    assert len(lines) < README_MAX_LINES
    # And it gives the two newcomer commands, the test command being the one CI runs
    commands = [line.split("#")[0].strip() for line in lines
                if line.startswith("    python3 dev.py")]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == "python3 dev.py test"


def test_the_pages_lines_are_within_100_characters_but_table_rows() -> None:
    # Given the README and the docs pages
    pages = doc_pages()
    assert len(pages) >= 8
    # Then no line passes 100 characters, but a table's row (Markdown cannot wrap one)
    long = [f"{page.name}:{n}" for page in pages
            for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > LINE_MAX and not line.startswith("|")]
    assert long == []
