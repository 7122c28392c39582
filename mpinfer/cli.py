"""The command line: argparse, printing and exit codes. Nothing else in mpinfer prints or exits."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .config import DEFAULT_GRACE_S, OPTIONS, RunConfig, load_config
from .errors import MpinferError
from .events import StopReason
from .reports.summary import RunSummary
from .reports.text import (
    cancel_lines,
    dry_run_lines,
    export_lines,
    fresh_lines,
    repair_lines,
    report_lines,
    status_lines,
    summary_lines,
    validation_lines,
)
from .settings import Option

# A run (its lifecycle, backends and the API client), the reports, export and repair are imported
# by the commands that use them: --status and --validate start without a run's modules, a run
# without the reports'.

CLI_OPTIONS = tuple(option for option in OPTIONS if option.cli)  # the settings that have a flag

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # the run ended with tasks not done (failed or stopped): rerun to retry them
EXIT_PROBLEMS = 1  # --validate found problems
EXIT_INTERRUPTED = StopReason.INTERRUPTED.exit_code  # the other stops' codes are in StopReason too


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: a flag for each setting of RunConfig, then the actions."""
    parser = argparse.ArgumentParser(
        prog="mpinfer",
        description="Run image+text prompts through an OpenAI-compatible "
        "chat API: resumable, crash-safe.",
        epilog="Every option can also be set as MPINFER_<NAME> in the "
        "environment or .env, or in mpinfer.toml. "
               "The key comes from OPENAI_API_KEY (environment or .env) only.",
    )
    for option in CLI_OPTIONS:
        names = [option.short, option.flag] if option.short else [option.flag]
        if option.is_switch:
            parser.add_argument(*names, dest=option.name, default=None,
                                action="store_false" if option.default else "store_true",
                                help=option.help)
            continue
        parser.add_argument(*names, dest=option.name, default=None, metavar=option.metavar,
                            help=option_help(option))
    mode = parser.add_mutually_exclusive_group()
    # -s and -v as the tool mpinfer replaces has them (verbose keeps only its long flag)
    mode.add_argument("-s", "--status", action="store_true",
                      help="show progress, tokens and ETA; works during a run")
    mode.add_argument("--cancel", action="store_true",
                      help="from another terminal: stop the live run on this output as Ctrl-C "
                      "would (requests in flight get --grace seconds), wait for it to exit; "
                      "exit 1 when no run is live; with --backend batch: cancel the output's "
                      "open batches at the server (answers they already gave are kept; a "
                      "rerun sends the rest)")
    mode.add_argument("-v", "--validate", action="store_true",
                      help="check the output's integrity against the input")
    mode.add_argument("--demo", action="store_true",
                      help="run the bundled demo against the local mock server")
    mode.add_argument("--dry-run", action="store_true",
                      help="check every task and image, estimate tokens and cost, send nothing")
    # --export, --repair and --fresh are command-line only (not in OPTIONS): mpinfer.toml or the
    # environment must never rewrite or move files on a run that did not ask for it.
    mode.add_argument("--export", metavar="FILE", default=None,
                      help="write one row per input task (.csv, .jsonl or .parquet: input fields, "
                      "answer, tokens, cost, status ok/failed/missing) and the missing "
                      "tasks to <output>.missing.jsonl")
    parser.add_argument("--excel", action="store_true",
                        help="with --export FILE.csv: write UTF-8 with a byte-order mark, so that "
                        "Excel opens non-Latin text (Chinese, ...) as it is")
    mode.add_argument("--report", dest="report_now", nargs="?", const="", default=None,
                      metavar="FILE",
                      help="write an HTML report of the output (charts of rate, latency, failures, "
                      "cost; a table per model) to FILE (default: <output>.report.html); "
                      "needs mpinfer[report]. report = true in mpinfer.toml (or "
                      "MPINFER_REPORT=1) writes one after every run")
    parser.add_argument("--repair", action="store_true",
                        help="with --validate: rewrite the output without corrupt lines and "
                        "duplicate ids (after a backup copy <output>.bak-<time>), then "
                        "validate again")
    parser.add_argument("--fresh", action="store_true",
                        help="start over: first move the output, its companions and the logs of "
                        "earlier runs on it to <output>.backup-<time>/ (nothing is deleted)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="read settings from FILE instead of "
                        "./mpinfer.toml (also MPINFER_CONFIG)")
    parser.add_argument("--json", action="store_true",
                        help="with --status, --validate or --dry-run: one JSON object")
    parser.add_argument("--watch", nargs="?", type=float, const=2.0, default=None,
                        metavar="SECONDS",
                        help="with --status: redraw every SECONDS (default 2) until the run ends")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                        help="on Ctrl-C or SIGTERM, wait this long for requests in "
                        f"flight (default: {DEFAULT_GRACE_S:g})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="version", version=f"mpinfer {__version__}")
    return parser


def option_help(option: Option) -> str:
    """A setting's --help text: its help and, for a value (not a switch), its default."""
    if option.is_switch or not option.default_text:
        return option.help
    return f"{option.help} (default: {option.default_text})"


def _write(text: str) -> bool:
    """Write to stdout; False once its reader is gone (``| head`` has read enough), which is no
    error: what the command did stands (a run's answers are on disk), so it goes on quietly and
    exits as it would."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()
        return False
    return True


def _stdout_gone() -> None:
    # Point stdout at /dev/null, so that neither a later print nor the
    # interpreter's last flush raises again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _print(lines: list[str]) -> bool:
    return _write("\n".join(lines) + "\n")


def _watch(config: RunConfig, every_s: float) -> int:
    """Redraw the status in place until no run is live on the output (Ctrl-C,
    or a reader that left, ends it sooner).

    One reader for all the redraws: each reads only what the run appended since the last.
    """
    from .reports.status import StatusReader  # (the reports load only for their commands)

    reader = StatusReader(config, watching=True)
    try:
        while True:
            report = reader.read()
            lines = status_lines(report)
            lines[0] = ("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n") + lines[0]
            if not _print(lines) or not report.live:
                return EXIT_OK
            time.sleep(every_s)
    finally:
        reader.close()


def _dry_run(config: RunConfig, as_json: bool) -> int:
    from .api.prices import load_prices
    from .reports.dryrun import plan

    result = plan(config, load_prices(config.prices, config.price_input, config.price_output))
    if as_json:
        _write(orjson.dumps(result.to_dict()).decode() + "\n")
    else:
        _print(dry_run_lines(result))
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def _demo(args: argparse.Namespace) -> int:
    """An evaluation on bundled tasks against the local mock server: answers, a judge, then status
    by scenario, validate and the report with its results section."""
    from .demo import DEMO_DIR, demo_config, prepare_demo, start_demo_server
    from .eval.judging import run
    from .reports.html import write_report
    from .reports.status import status
    from .reports.validate import validate

    tasks = prepare_demo()
    print(f"demo: {tasks} (24 image questions in 4 scenarios, MM-SafetyBench's shape), "
          f"{DEMO_DIR}/variants.toml (2 prompt variants), {DEMO_DIR}/judge.toml (a judge); "
          "starting the mock server on 127.0.0.1")
    with start_demo_server() as server:
        config = demo_config(DEMO_DIR, tasks, server.base_url)
        print(f"demo: run -i {config.input} -o {config.output} --model {config.model} "
              f"--variants {config.variants} --judge {config.judge} --images-key image -p 2 -c 4 "
              f"against {server.base_url} (which fails some requests on purpose)")
        _print(summary_lines(run(config, progress=not args.no_progress)))
        print(f"\ndemo: --status --by {config.by}")
        _print(status_lines(status(config)))
        print("\ndemo: --validate")
        reports = validate(config)
        for report in reports:
            _print(validation_lines(report))
        print(f"\ndemo: --report --by {config.by}")
        if importlib.util.find_spec("plotly") is None:
            print("skipped: the report needs Plotly (pip install "
                  "'mpinfer[report]'; python3 dev.py demo has it)")
        else:
            _print(report_lines(write_report(config)))
    print(f"\ndemo: answers are in {DEMO_DIR}/results.<variant>.<model>.jsonl, verdicts in "
          f"{DEMO_DIR}/results.<variant>.<model>.judge.jsonl; a rerun sends nothing, and a rerun "
          "of a stopped run resumes where it stopped")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_PROBLEMS


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {option.name: getattr(args, option.name) for option in CLI_OPTIONS}


def _run(config: RunConfig, args: argparse.Namespace) -> int:
    from .eval.judging import run

    summary = run(config, progress=not args.no_progress, grace_s=args.grace, argv=sys.argv)
    _print(summary_lines(summary))
    return run_exit_code(summary)


def run_exit_code(summary: RunSummary) -> int:
    """The one place a run's end becomes an exit code: its StopReason's, else whether work is left.

    A stop whose code is EXIT_INCOMPLETE (the budget) only leaves work undone, so it counts as that:
    a budget stop that turned out to leave nothing undone ends with EXIT_OK.
    """
    if summary.stopped is not None and summary.stopped.exit_code != EXIT_INCOMPLETE:
        return summary.stopped.exit_code
    if summary.remaining:
        return EXIT_INCOMPLETE
    # --judge: the first judging run that did not end well says how the command ends
    return next((code for judged in summary.judged if (code := run_exit_code(judged))), EXIT_OK)


def _cancel(config: RunConfig, grace_s: float) -> int:
    if config.backend == "batch":
        return _cancel_batches(config)
    from .cancel import CANCEL_MARGIN_S, cancel_run

    result = cancel_run(config, grace_s + CANCEL_MARGIN_S)
    _print(cancel_lines(result, config.output))
    return EXIT_OK if result is not None and result.exited else EXIT_INCOMPLETE


def _cancel_batches(config: RunConfig) -> int:
    """--cancel --backend batch: the batches at the server, whether a run is live or not."""
    from .backends.batch_cancel import cancel

    cancelled = cancel(config)
    for name, batch_id, state in cancelled:
        print(f"{batch_id} ({name}): {state}")
    # "already completed" counts
    done = sum(not state.startswith("not") for _, _, state in cancelled)
    print(f"cancelled {done} of {len(cancelled)} open batches" if cancelled
          else "no open batches to cancel")
    return EXIT_OK if done == len(cancelled) else EXIT_INCOMPLETE


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repair and not args.validate:
        parser.error("--repair goes with --validate (it repairs, then validates again)")
    if args.excel and not (args.export or "").lower().endswith(".csv"):
        parser.error("--excel goes with --export FILE.csv (it marks the CSV as UTF-8 for Excel)")
    if args.fresh and (args.status or args.validate or args.demo or args.dry_run or args.export):
        parser.error("--fresh starts a run: it does not go with --status, "
                     "--validate, --demo, --dry-run or --export")


def _validate(config: RunConfig, with_repair: bool, as_json: bool) -> int:
    # With --json, stdout holds the one JSON object: what the repair did goes to stderr.
    shown = sys.stderr if as_json else sys.stdout
    if with_repair:
        from .store.repair import repair

        for report in repair(config):
            print("\n".join(repair_lines(report)), file=shown)
        print("validate after the repair:", file=shown)
    from .reports.validate import validate  # (the reports load only for their commands)

    results = validate(config)
    ok = all(r.ok for r in results)
    if as_json:
        _write(orjson.dumps({"ok": ok, "outputs": [r.to_dict() for r in results]}).decode()
               + "\n")
    else:
        for result in results:
            _print(validation_lines(result))
    return EXIT_OK if ok else EXIT_PROBLEMS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; the exit code (errors are printed, not raised)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    try:
        if args.demo:
            return _demo(args)
        config = load_config(_flags(args), config_file=args.config)
        for warning in config.warnings:
            print(f"mpinfer: warning: {warning}", file=sys.stderr)
        if args.dry_run:
            return _dry_run(config, args.json)
        if args.status and args.watch is not None:
            return _watch(config, max(0.2, args.watch))
        if args.status:
            from .reports.status import status

            report = status(config)
            if args.json:
                _write(orjson.dumps(report.to_dict()).decode() + "\n")
            else:
                _print(status_lines(report))
            return EXIT_OK
        if args.cancel:
            return _cancel(config, args.grace)
        if args.validate:
            return _validate(config, args.repair, args.json)
        if args.report_now is not None:
            from .reports.html import write_report

            _print(report_lines(write_report(config,
                                             Path(args.report_now) if args.report_now else None)))
            return EXIT_OK
        if args.export is not None:
            from .reports.export import export

            _print(export_lines(export(config, Path(args.export), excel=args.excel)))
            return EXIT_OK
        if args.fresh:
            from .store.repair import fresh_start

            config.require_api_keys()  # a run that cannot start must not move the old files first
            _print(fresh_lines(fresh_start(config)))
        return _run(config, args)
    except MpinferError as exc:
        print(f"mpinfer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    # a print outside _print (the demo's): the reader left; nothing was lost
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_OK
    except KeyboardInterrupt:
        print("mpinfer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
