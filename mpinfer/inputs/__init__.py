"""Tasks and their readers: JSONL, CSV and Batch API files, the input check, and the selection.

What the rest of mpinfer may use: ``Task``, ``FieldKeys``, ``InputFormat``, ``Selection``,
``InputIndex``, ``check_input`` (every line checked before anything is spent), ``iter_tasks`` /
``iter_selected`` (the streaming feed), ``reading`` and ``selection`` (from a RunConfig),
``detect_format``.
"""

from .check import check_input, reading, selection
from .readers import detect_format, iter_selected, iter_tasks
from .tasks import FieldKeys, InputFormat, InputIndex, Selection, Task

__all__ = ["FieldKeys", "InputFormat", "InputIndex", "Selection", "Task", "check_input",
           "detect_format", "iter_selected", "iter_tasks", "reading", "selection"]
