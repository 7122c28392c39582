"""An OpenAI-compatible mock chat-completions server, plus a subprocess helper.

The code lives in the package ``mpinfer.mock``, one module per job (see its docstring); this
module keeps the names that ``--demo``, the tests and the benchmarks import from it, and the
command line.

Run it with ``python -m mpinfer.mockserver --port 0``; it prints exactly one
line ``MOCK_READY http://127.0.0.1:PORT/v1`` once it is listening.
"""

from __future__ import annotations

import sys

from .mock.cli import READY_PREFIX, build_arg_parser, config_from_args, main, serve
from .mock.config import MockConfig
from .mock.limits import format_duration
from .mock.process import MockServerProcess
from .mock.server import SCRIPTABLE_OUTCOMES, MockServer
from .mock.stats import OUTCOMES, RECORDED_BODIES_MAX

__all__ = [
    "OUTCOMES",
    "READY_PREFIX",
    "RECORDED_BODIES_MAX",
    "SCRIPTABLE_OUTCOMES",
    "MockConfig",
    "MockServer",
    "MockServerProcess",
    "build_arg_parser",
    "config_from_args",
    "format_duration",
    "main",
    "serve",
]

if __name__ == "__main__":
    sys.exit(main())
