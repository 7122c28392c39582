"""The package's version, in a module of its own.

Modules inside the package (the run manifest records the version) import it from here rather than
from ``mpinfer`` itself, whose ``__init__`` imports them: that would be an import circle.
pyproject.toml reads it from here too, without importing the package.
"""

__version__ = "0.1.0"
