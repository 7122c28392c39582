"""mpinfer's command line (see README.md), as the ``mpinfer`` command and ``python -m mpinfer``."""

from mpinfer.cli import entry

if __name__ == "__main__":
    entry()
