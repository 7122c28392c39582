"""``python -m mpinfer``."""

from .cli import entry

entry()
