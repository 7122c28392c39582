"""Tasks and their readers: JSONL, CSV and Batch API files, the input check, and the selection.

The rest of mpinfer imports these names from here, never from the modules below
(tests/test_layout.py keeps it so): ``Task`` (tasks.py, with ``FieldKeys``, ``InputFormat``,
``Selection`` and ``InputIndex``), ``check_input`` (check.py: every line checked before anything is
spent, with ``reading`` and ``selection`` from a RunConfig, ``settle_models``, ``asked_models``,
``id_resolver`` and ``refuse_input_as_output``), ``checked_input`` (index_cache.py: the check, or
the index a run kept beside its output when the input is unchanged, with ``input_index_path``,
``keep_input_index`` and ``kept_index``), ``iter_tasks`` / ``iter_selected`` (readers.py: the
streaming feed, with ``detect_format``), ``has_system`` (chat.py: a chat row's messages), ``render``
/ ``fields_named`` (template.py: ``{field}`` templates, with ``prompt_forms`` / ``PromptForm``: a
task's prompt from its row, per variant) and, from parquet.py, ``parquet_checksum`` (the manifest's
checksum of a Parquet input), ``is_cell_ref``, ``read_cell`` and ``RowGroupReader`` (a worker reads
an image cell back from its row group).
"""

from .chat import has_system
from .check import (
    asked_models,
    check_input,
    id_resolver,
    reading,
    refuse_input_as_output,
    selection,
    settle_models,
)
from .index_cache import checked_input, input_index_path, keep_input_index, kept_index
from .parquet import RowGroupReader, is_cell_ref, read_cell
from .parquet import checksum as parquet_checksum
from .readers import detect_format, iter_selected, iter_tasks
from .tasks import FieldKeys, InputFormat, InputIndex, Selection, Task
from .template import PromptForm, fields_named, prompt_forms, render

__all__ = ["FieldKeys", "InputFormat", "InputIndex", "PromptForm", "RowGroupReader", "Selection",
           "Task", "asked_models", "check_input", "checked_input", "detect_format", "fields_named",
           "has_system", "id_resolver", "input_index_path", "is_cell_ref", "iter_selected",
           "iter_tasks", "keep_input_index", "kept_index", "parquet_checksum", "prompt_forms",
           "read_cell", "reading", "refuse_input_as_output", "render", "selection",
           "settle_models"]
