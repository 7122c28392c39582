"""The command line: argparse, printing and exit codes. Nothing else in mpinfer prints or exits."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from . import __version__
from .config import OPTIONS, RunConfig, load_config
from .errors import MpinferError
from .pool import DEFAULT_GRACE_S, run
from .summary import RunSummary
from .status import StatusReport, status
from .validate import ValidationReport, validate

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # the run ended with tasks not done (failed or stopped): rerun to retry them
EXIT_PROBLEMS = 1  # --validate found problems
EXIT_ABORTED = 5
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpinfer",
        description="Run image+text prompts through an OpenAI-compatible chat API: resumable, crash-safe.",
        epilog="Every option can also be set as MPINFER_<NAME> in the environment or .env, or in mpinfer.toml. "
               "The key comes from OPENAI_API_KEY (environment or .env) only.",
    )
    for option in OPTIONS:
        names = [option.short, option.flag] if option.short else [option.flag]
        if option.is_switch:
            parser.add_argument(*names, dest=option.name, action="store_true", default=None, help=option.help)
            continue
        default = f" (default: {option.default})" if option.default is not None else ""
        parser.add_argument(*names, dest=option.name, default=None, metavar=option.metavar,
                            help=option.help + default)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="show progress, tokens and ETA; works during a run")
    mode.add_argument("--validate", action="store_true", help="check the output's integrity against the input")
    mode.add_argument("--demo", action="store_true", help="run the bundled demo against the local mock server")
    parser.add_argument("--json", action="store_true", help="with --status: one JSON object")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                        help=f"on Ctrl-C or SIGTERM, wait this long for requests in flight (default: {DEFAULT_GRACE_S:g})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", default=None, help="log more")
    parser.add_argument("--version", action="version", version=f"mpinfer {__version__}")
    return parser


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def print_summary(summary: RunSummary) -> None:
    tokens = summary.prompt_tokens + summary.completion_tokens
    print(f"done {summary.done}/{summary.total} ({summary.already_done} before this run, "
          f"{summary.succeeded + summary.recovered} now), failed {summary.failed}, left {summary.remaining}; "
          f"{tokens} tokens ({summary.prompt_tokens} in, {summary.completion_tokens} out); "
          f"{summary.elapsed_s:.1f}s")
    if summary.failures_by_type:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.failures_by_type.items()))
        print(f"failures by type: {kinds} (details in the errors file; a rerun retries them)")
    if summary.stopped:
        print(f"stopped: {summary.stopped}")
    if summary.remaining and not summary.stopped:
        print("rerun the same command to retry what is left")
    if summary.log_file:
        print(f"log: {summary.log_file}")


def print_status(report: StatusReport) -> None:
    live = f"yes (pid {report.live_pid})" if report.live else "no"
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.last_written_at)) \
        if report.last_written_at else "-"
    rate = f"{report.recent_per_s:.2f} tasks/s" if report.recent_per_s else "-"
    rows = [
        ("input", report.input), ("output", report.output), ("total", report.total),
        ("done", f"{report.done} ({report.percent:.1f}%)"), ("failed", report.failed),
        ("pending", f"{report.pending} (not done, failed included)"),
        ("tokens", f"{report.total_tokens} ({report.prompt_tokens} in, {report.completion_tokens} out)"),
        ("recent rate", rate), ("ETA", _duration(report.eta_s)), ("last write", last), ("run live", live),
        ("429s", report.rate_limited),
    ]
    if report.bad_lines:
        rows.append(("bad lines", f"{report.bad_lines} (see --validate)"))
    if report.unknown_ids:
        rows.append(("unknown ids", f"{report.unknown_ids} (see --validate)"))
    for name, value in rows:
        print(f"{name:>12}: {value}")
    if len(report.models) > 1:
        print("  per output: done / failed / pending")
        for part in report.models:
            print(f"    {part.output}: {part.done} / {part.failed} / {part.pending}")
    for title, tallies in (("per model", report.per_model), ("per key", report.per_key)):
        if len(tallies) > 1 or (tallies and any(t.get("rate_limited") for t in tallies.values())):
            print(f"  {title}: requests / tokens / 429s")
            for name, tally in tallies.items():
                off = " (disabled)" if tally.get("disabled") else ""
                print(f"    {name}: {tally.get('requests', 0)} / {tally.get('tokens', 0)} / "
                      f"{tally.get('rate_limited', 0)}{off}")


def print_validation(report: ValidationReport) -> None:
    print(f"{report.output}: {report.lines} lines, {report.records} records")
    if report.ok:
        print("ok: every line parses, no duplicates, every input id answered, answers and models as asked")
        return
    for kind, count in report.counts.items():
        print(f"{kind.value}: {count}")
        for problem in report.examples.get(kind, []):
            where = f"line {problem.line}" if problem.line else "input"
            ident = f" id {problem.id!r}" if problem.id is not None else ""
            print(f"  {where}{ident}: {problem.message}")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {option.name: getattr(args, option.name) for option in OPTIONS} | {"verbose": args.verbose}


def _run(config: RunConfig, args: argparse.Namespace) -> int:
    summary = run(config, progress=not args.no_progress, grace_s=args.grace)
    print_summary(summary)
    if summary.stopped:
        if summary.stopped == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_ABORTED
    return EXIT_OK if summary.remaining == 0 else EXIT_INCOMPLETE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.demo:
            from .demo import run_demo

            return run_demo(progress=not args.no_progress)
        config = load_config(_flags(args))
        if args.status:
            report = status(config)
            if args.json:
                sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
            else:
                print_status(report)
            return EXIT_OK
        if args.validate:
            results = validate(config)
            for result in results:
                print_validation(result)
            return EXIT_OK if all(r.ok for r in results) else EXIT_PROBLEMS
        return _run(config, args)
    except MpinferError as exc:
        print(f"mpinfer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mpinfer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
