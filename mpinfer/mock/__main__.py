"""``python -m mpinfer.mock``: run the mock server; this is what ``MockServerProcess`` launches."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
