"""The mock server's command line: its arguments, ``serve`` (run until a signal) and ``main``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO

# --help shows the package docstring's first line, as when this was one module.
from . import __doc__ as _package_doc
from .config import MockConfig
from .server import MockServer

READY_PREFIX = "MOCK_READY"
"""First word of the single line the server prints to stdout once it listens."""


def build_arg_parser() -> argparse.ArgumentParser:
    """The ``python -m mpinfer.mockserver`` argument parser (defaults from MockConfig)."""
    d = MockConfig()
    p = argparse.ArgumentParser(prog="python -m mpinfer.mockserver",
                                description=_package_doc.split("\n", 1)[0])
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--latency-ms", type=float, default=d.latency_ms)
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--p429", type=float, default=d.p429)
    p.add_argument("--p500", type=float, default=d.p500)
    p.add_argument("--phang", type=float, default=d.phang)
    p.add_argument("--preset", type=float, default=d.preset)
    p.add_argument("--pmalformed", type=float, default=d.pmalformed)
    p.add_argument("--pquota", type=float, default=d.pquota)
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--hang-s", type=float, default=d.hang_s)
    p.add_argument("--model-map", nargs="+", action="extend", default=[], metavar="SRC=DST")
    p.add_argument("--keys", default="", help="comma-separated accepted API keys")
    p.add_argument("--rpm", type=int, default=d.rpm)
    p.add_argument("--tpm", type=int, default=d.tpm)
    p.add_argument(
        "--window-s",
        type=float,
        default=d.window_s,
        help="length of the sliding rpm/tpm window and of the window "
        "stats, in seconds (default: 60)",
    )
    p.add_argument("--backlog", type=int, default=d.backlog)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--quantum-s", type=float, default=d.quantum_s,
                   help="enforce rpm/tpm as buckets holding this many "
                   "seconds' worth (0: sliding window)")
    p.add_argument("--limit-style", default=d.limit_style, choices=("openai", "litellm", "none"))
    p.add_argument("--max-concurrent", type=int, default=d.max_concurrent)
    p.add_argument("--slow-bps", type=float, default=d.slow_bps)
    p.add_argument("--reasoning-models", nargs="+", action="extend", default=[],
                   metavar="MODEL=FIELD",
                   help="answer MODEL with its thinking in FIELD (reasoning_content or reasoning)")
    p.add_argument("--max-image-bytes", type=int, default=None,
                   help="400 for requests with more image data")
    p.add_argument("--azure-deployments", nargs="+", action="extend", default=[],
                   metavar="DEPLOYMENT=MODEL",
                   help="answer Azure's /openai/deployments/DEPLOYMENT/chat/completions as MODEL")
    p.add_argument("--refuse-marker", default=None, metavar="TEXT",
                   help="refuse prompts that hold TEXT")
    p.add_argument("--filter-marker", default=None, metavar="TEXT",
                   help="stop prompts that hold TEXT with Azure's 400 content_filter")
    p.add_argument("--filter-answer-marker", default=None, metavar="TEXT",
                   help="answer prompts that hold TEXT with a completion Azure's content filter "
                        "stopped (finish_reason content_filter)")
    p.add_argument("--answer-labels", default="", metavar="A,B",
                   help="answer plain requests naming one of these labels (a judge)")
    p.add_argument("--label-models", default="", metavar="M,N",
                   help="only these models answer with --answer-labels (default: every model)")
    p.add_argument("--pbad-answer", type=float, default=d.pbad_answer,
                   help="share of structured answers that come malformed")
    p.add_argument("--omit-usage", action="store_true",
                   help="answer without usage, as some OpenAI-compatible servers do")
    p.add_argument("--record-bodies", action="store_true",
                   help="keep the last request body per task key in stats")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when stdin reaches EOF (used by MockServerProcess so "
        "a crashed test run leaves no server)",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> MockConfig:
    """Turn parsed arguments into a validated MockConfig (ValueError on bad input)."""
    model_map = _pairs("--model-map", ns.model_map)
    keys = tuple(k.strip() for k in ns.keys.split(",") if k.strip())
    return MockConfig(
        host=ns.host,
        port=ns.port,
        latency_ms=ns.latency_ms,
        jitter_ms=ns.jitter_ms,
        seed=ns.seed,
        p429=ns.p429,
        p500=ns.p500,
        phang=ns.phang,
        preset=ns.preset,
        pmalformed=ns.pmalformed,
        pquota=ns.pquota,
        retry_after=ns.retry_after,
        hang_s=ns.hang_s,
        model_map=model_map,
        keys=keys,
        rpm=ns.rpm,
        tpm=ns.tpm,
        window_s=ns.window_s,
        backlog=ns.backlog,
        max_body_bytes=ns.max_body_bytes,
        quantum_s=ns.quantum_s,
        limit_style=ns.limit_style,
        max_concurrent=ns.max_concurrent,
        slow_bps=ns.slow_bps,
        record_bodies=ns.record_bodies,
        reasoning_models=_pairs("--reasoning-models", ns.reasoning_models),
        refuse_marker=ns.refuse_marker,
        filter_marker=ns.filter_marker,
        filter_answer_marker=ns.filter_answer_marker,
        omit_usage=ns.omit_usage,
        max_image_bytes=ns.max_image_bytes,
        azure_deployments=_pairs("--azure-deployments", ns.azure_deployments),
        answer_labels=tuple(x.strip() for x in ns.answer_labels.split(",") if x.strip()),
        label_models=tuple(x.strip() for x in ns.label_models.split(",") if x.strip()),
        pbad_answer=ns.pbad_answer,
    )


def _pairs(flag: str, items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"{flag} expects SRC=DST, got {item!r}")
        pairs[src] = dst
    return pairs


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: each connection is an fd."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # best effort; the server still works with fewer connections


async def serve(config: MockConfig, *, ready_stream: IO[str] | None = None,
                exit_with_parent: bool = False) -> None:
    """Run a server until SIGTERM/SIGINT (or stdin EOF with ``exit_with_parent``).

    Prints the MOCK_READY line to ``ready_stream`` (stdout by default) once
    listening, because that line is how launchers learn the chosen port.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = MockServer(config)
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # e.g. Windows or a non-main thread; rely on the caller
    if exit_with_parent:

        def watch_stdin() -> None:
            # Blocks until the parent closes the pipe or dies. Raw os.read, not
            # sys.stdin: a daemon thread parked inside a buffered reader makes
            # interpreter shutdown abort with "could not acquire lock".
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # loop already closed: we are exiting anyway

        threading.Thread(target=watch_stdin, name="mock-parent-watch", daemon=True).start()
    stream = ready_stream if ready_stream is not None else sys.stdout
    stream.write(f"{READY_PREFIX} {server.base_url}\n")
    stream.flush()
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = build_arg_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="mockserver: %(levelname)s %(message)s")
    _raise_fd_limit()
    try:
        asyncio.run(serve(config, exit_with_parent=ns.exit_with_parent))
    except OSError as exc:
        print(f"mockserver: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
