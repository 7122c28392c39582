"""Parquet inputs: a file, or a folder of shards as Hugging Face ``datasets`` writes them, as rows.

pyarrow (the ``parquet`` extra) is imported only when a Parquet input is read. Rows are read a
batch at a time, only the columns a task needs: the images column's bytes are never read by the
parent. A cell that holds image bytes (the datasets Image feature's ``{bytes, path}`` struct, raw
bytes, or a list of either) becomes one reference per image, ``<file>#row=R&column=C`` (with
``&item=K`` in a list), which a worker reads back from its row group when it builds the request
(``read_cell``); a column of path strings is read as the paths it holds. A row's place is its
position in the input (shards in name order), which the id index keeps instead of a byte offset.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import ImageError, InputError

SUFFIX = ".parquet"
DEFAULT_IMAGES = "images"  # --images-key's default
BATCH_ROWS = 1024  # rows a batch when no bytes are read
BYTES_BATCH_ROWS = 64  # rows a batch when a column of bytes must be read (to count its images)
READ_BUFFER = 8 << 20  # pyarrow reads a column chunk through a buffer this big, not all at once
MAX_GROUP_BYTES = 256 << 20  # a worker reads a row group's column whole up to this size
_REF = "#row="
_CACHED_FILES = 8


class ImageColumn(Enum):
    """What the images column holds, told by its type."""

    NONE = "none"  # no such column: no images
    PATHS = "paths"  # a path or URL string, or a list of them: read as they are
    STRUCT = "struct"  # {bytes, path} (datasets' Image feature): its path alone tells a null
    STRUCT_LIST = "struct_list"
    BYTES = "bytes"  # raw bytes: read, to tell a null
    BYTES_LIST = "bytes_list"


def shards(path: Path) -> list[Path]:
    """The Parquet files of an input: the file itself, or a folder's ``*.parquet`` files (its
    subfolders too) in name order; an InputError when a folder holds none."""
    if not path.is_dir():
        return [path]
    found = sorted((p for p in path.rglob(f"*{SUFFIX}") if p.is_file()),
                   key=lambda p: p.relative_to(path).as_posix())
    if not found:
        raise InputError(f"no {SUFFIX} files in the folder", str(path))
    return found


def is_parquet(path: Path) -> bool:
    """Whether an input path is Parquet: a ``.parquet`` file, or a folder holding such files."""
    if path.suffix.lower() == SUFFIX:
        return True
    return path.is_dir() and next(path.rglob(f"*{SUFFIX}"), None) is not None


def _open(path: Path, whole: bool = False) -> Any:
    """A pyarrow ParquetFile: streamed through a buffer (the parent's batches of rows), or read a
    column chunk at once (a worker's row groups: several times faster than through a buffer)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading Parquet needs pyarrow: pip install 'mpinfer[parquet]'",
                         str(path)) from None
    try:
        if whole:
            return pq.ParquetFile(path)
        return pq.ParquetFile(path, buffer_size=READ_BUFFER)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable Parquet file: {exc}", str(path)) from None


_LISTED = {ImageColumn.PATHS: ImageColumn.PATHS, ImageColumn.BYTES: ImageColumn.BYTES_LIST,
           ImageColumn.STRUCT: ImageColumn.STRUCT_LIST}


def _kind(arrow_type: Any) -> ImageColumn:
    """What a column of this type holds as images (NONE: nothing mpinfer sends as an image)."""
    import pyarrow as pa

    def one(t: Any) -> ImageColumn:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return ImageColumn.PATHS
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return ImageColumn.BYTES
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return ImageColumn.STRUCT
        return ImageColumn.NONE

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _LISTED.get(one(arrow_type.value_type), ImageColumn.NONE)
    return one(arrow_type)


def _holds_bytes(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        return any(_holds_bytes(f.type) for f in arrow_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _holds_bytes(arrow_type.value_type)
    return False


@dataclass(frozen=True)
class Layout:
    """What is read of each file: its columns (Parquet column paths), the images column's kind."""

    columns: tuple[str, ...]
    images: str
    kind: ImageColumn


def layout(files: list[Path], images: str, needed: tuple[str, ...]) -> Layout:
    """Check that every shard has the first one's schema (else an InputError naming the file) and
    that the ``needed`` columns exist; what to read of each row."""
    first = _open(files[0])
    schema = first.schema_arrow.remove_metadata()
    for other in files[1:]:
        theirs = _open(other).schema_arrow.remove_metadata()
        if not theirs.equals(schema):
            raise InputError(f"its columns differ from {files[0].name}'s ({_columns(theirs)} "
                             f"vs {_columns(schema)}): a folder of shards must share one schema",
                             str(other))
    for name in needed:
        if schema.get_field_index(name) < 0:
            raise InputError(f"no column {name!r} (columns: {', '.join(schema.names)})",
                             str(files[0]))
    if images == DEFAULT_IMAGES and images not in schema.names:
        found = [f.name for f in schema if _kind(f.type) not in (ImageColumn.NONE,
                                                                 ImageColumn.PATHS)]
        if found:
            # a datasets file's images are in its own column: sending none would be a silent loss
            raise InputError(f"no column {images!r}, but {', '.join(map(repr, found))} holds "
                             f"images: set --images-key {found[0]} (or --images-key none to "
                             "send no images)", str(files[0]))
    kind = _kind(schema.field(images).type) if images in schema.names else ImageColumn.NONE
    leaves = [first.schema.column(i).path for i in range(len(first.schema))]
    columns: list[str] = []
    for field in schema:
        if field.name == images and kind in (ImageColumn.STRUCT, ImageColumn.STRUCT_LIST):
            # only the path leaf: it tells a null struct and counts a list's items, without bytes
            columns += [p for p in leaves if p.startswith(images + ".") and p.endswith(".path")
                        ] or [images]
        elif field.name == images or not _holds_bytes(field.type):
            columns.append(field.name)
    return Layout(tuple(columns), images, kind)


def _columns(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def cell_ref(file: str, row: int, column: str, item: int | None = None) -> str:
    """The reference a worker reads an image cell back by (``file``: its resolved path)."""
    ref = f"{file}{_REF}{row}&column={column}"
    return ref if item is None else f"{ref}&item={item}"


def is_cell_ref(ref: str) -> bool:
    """Whether an image reference points into a Parquet file."""
    return f"{SUFFIX}{_REF}" in ref


def _refs(value: Any, kind: ImageColumn, file: str, row: int, column: str) -> Any:
    """The images column's value as the task reads it: references for cells of bytes."""
    if value is None or kind in (ImageColumn.NONE, ImageColumn.PATHS):
        return value
    if kind in (ImageColumn.STRUCT, ImageColumn.BYTES):
        return [cell_ref(file, row, column)]
    return [cell_ref(file, row, column, k) for k in range(len(value))]


def rows(path: Path, images: str, needed: tuple[str, ...],
         ) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, row in that file, the row's fields) of every row, shards in name order; the images
    column holds references to cells of bytes (``cell_ref``)."""
    files = shards(path)
    plan = layout(files, images, needed)
    reads_bytes = plan.kind in (ImageColumn.BYTES, ImageColumn.BYTES_LIST)
    size = BYTES_BATCH_ROWS if reads_bytes else BATCH_ROWS
    for file in files:
        row = 0
        resolved = str(file.resolve())
        # one thread: the parent forks its workers later, and its columns here are small
        for batch in _open(file).iter_batches(batch_size=size, columns=list(plan.columns),
                                              use_threads=False):
            for fields in batch.to_pylist():
                if plan.images in fields:
                    fields[plan.images] = _refs(fields[plan.images], plan.kind, resolved, row,
                                                plan.images)
                yield file, row, fields
                row += 1


def checksum(path: Path) -> tuple[int, str]:
    """Size in bytes and a sha256 over each shard's name, size and footer (its metadata: schema,
    row groups, their sizes and statistics): a 50 GB input is not read whole to say which it is."""
    digest = hashlib.sha256()
    size = 0
    for file in shards(path):
        try:
            with file.open("rb") as handle:
                length = handle.seek(0, 2)
                handle.seek(max(0, length - 8))
                footer_len = int.from_bytes(handle.read(8)[:4], "little")
                handle.seek(max(0, length - 8 - footer_len))
                footer = handle.read(footer_len + 8)
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror or exc}", str(file)) from None
        digest.update(f"{file.name}\0{length}\0".encode())
        digest.update(footer)
        size += length
    return size, digest.hexdigest()


class _Files:
    """Open Parquet files by path, with each one's row-group starts, a few at a time."""

    def __init__(self) -> None:
        self._open: OrderedDict[str, tuple[Any, list[int]]] = OrderedDict()

    def get(self, path: str) -> tuple[Any, list[int]]:
        hit = self._open.get(path)
        if hit is None:
            handle = _open(Path(path), whole=True)
            starts = [0]
            for g in range(handle.metadata.num_row_groups):
                starts.append(starts[-1] + handle.metadata.row_group(g).num_rows)
            hit = self._open[path] = (handle, starts)
            while len(self._open) > _CACHED_FILES:
                self._open.popitem(last=False)
        self._open.move_to_end(path)
        return hit


@dataclass
class _Stream:
    """Where a worker is in a big row group it reads a batch at a time."""

    key: tuple[str, int, str]
    batches: Iterator[Any]
    start: int = 0  # the row (in the group) of the batch's first
    batch: Any = None


class RowGroupReader:
    """Reads one column's value at a row of a Parquet file, a whole row group at a time; the last
    row group read is kept, so the rows of one group cost one read (a worker's tasks come in input
    order). A row group whose column is larger than ``max_group_bytes`` (a file written as one
    group, as pandas does) is streamed a batch of rows at a time instead, forward from the last row
    read: memory stays bounded, at the price of reading again from its start for an earlier row."""

    def __init__(self, max_group_bytes: int = MAX_GROUP_BYTES) -> None:
        self.max_group_bytes = max_group_bytes
        self._files = _Files()
        self._group: tuple[str, int, str] | None = None
        self._values: Any = None
        self._leaves: dict[tuple[str, str, str], str] = {}
        self._stream: _Stream | None = None
        self._buffered: dict[str, Any] = {}

    def _leaf(self, handle: Any, path: str, column: str, leaf: str) -> str:
        """The Parquet path of a struct column's field (``image.bytes``), or the column's own."""
        key = (path, column, leaf)
        found = self._leaves.get(key)
        if found is None:
            schema = handle.schema
            found = next((p for p in (schema.column(i).path for i in range(len(schema)))
                          if p.startswith(column + ".") and p.endswith("." + leaf)), column)
            self._leaves[key] = found
        return found

    def value(self, path: str, row: int, column: str, leaf: str | None = None) -> Any:
        """The cell's value (as_py): of its struct's ``leaf`` field alone when it has one (a
        worker reads only the bytes it sends); LookupError when the file has no such row."""
        import bisect

        handle, starts = self._files.get(path)
        if not 0 <= row < starts[-1]:
            raise LookupError(f"{path} has no row {row}")
        group = bisect.bisect_right(starts, row) - 1
        if leaf is not None:
            column = self._leaf(handle, path, column, leaf)
        key = (path, group, column)
        offset = row - starts[group]
        if self._group != key:
            if _chunk_bytes(handle, group, column) > self.max_group_bytes:
                return self._streamed(key, offset).as_py()
            # one thread: a worker reads while others send, and threads cost more than they save
            self._values = handle.read_row_group(group, columns=[column],
                                                 use_threads=False).column(0)
            self._group = key
        return self._values[offset].as_py()

    def _streamed(self, key: tuple[str, int, str], offset: int) -> Any:
        """The value at ``offset`` of a big row group, read a batch of rows at a time."""
        path, group, column = key
        state = self._stream
        if state is None or state.key != key or offset < state.start:
            handle = self._buffered.get(path)
            if handle is None:
                handle = self._buffered[path] = _open(Path(path))
            state = self._stream = _Stream(key, iter(handle.iter_batches(
                batch_size=BYTES_BATCH_ROWS, row_groups=[group], columns=[column],
                use_threads=False)))
        while state.batch is None or offset >= state.start + len(state.batch):
            if state.batch is not None:
                state.start += len(state.batch)
            state.batch = next(state.batches).column(0)
        return state.batch[offset - state.start]

    def __getstate__(self) -> dict[str, Any]:
        # open files do not cross processes: a copy opens its own
        return {"max_group_bytes": self.max_group_bytes, "_files": _Files(), "_group": None,
                "_values": None, "_leaves": {}, "_stream": None, "_buffered": {}}


def _chunk_bytes(handle: Any, group: int, column: str) -> int:
    """The uncompressed bytes of a column (its leaves) in a row group, from the file's footer."""
    meta = handle.metadata.row_group(group)
    chunks = (meta.column(j) for j in range(meta.num_columns))
    return sum(c.total_uncompressed_size for c in chunks
               if c.path_in_schema == column or c.path_in_schema.startswith(column + "."))


def read_cell(reader: RowGroupReader, ref: str) -> tuple[bytes | None, str | None]:
    """(bytes, path) of the image a cell reference names: its bytes, or failing that the path the
    datasets struct gives; an ImageError when the cell cannot be read or holds neither."""
    file, _, query = ref.partition("#")
    try:
        fields = dict(part.split("=", 1) for part in query.split("&"))
        value = _item(reader.value(file, int(fields["row"]), fields["column"], "bytes"), fields)
        if isinstance(value, dict) and not value.get("bytes"):
            # a struct without bytes: its path names the image
            value = _item(reader.value(file, int(fields["row"]), fields["column"], "path"), fields)
    except (OSError, ValueError, KeyError, IndexError, LookupError, InputError) as exc:
        raise ImageError(f"image {ref!r}: cannot read the cell: {exc}") from None
    if isinstance(value, dict):
        data, named = value.get("bytes"), value.get("path")
        if data:
            return bytes(data), None
        if isinstance(named, str) and named:
            return None, named
        raise ImageError(f"image {ref!r}: the cell has neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), None
    raise ImageError(f"image {ref!r}: the cell holds no image bytes")


def _item(value: Any, fields: dict[str, str]) -> Any:
    """A list cell's item that a reference names (``&item=K``), or the cell itself."""
    if "item" not in fields or value is None:
        return value
    return value[int(fields["item"])]


class ParquetIdReader:
    """Reads the id of the row at a position of a Parquet input (the id index's resolver)."""

    def __init__(self, path: Path, id_key: str) -> None:
        self.path = path
        self.id_key = id_key
        self._starts: list[int] | None = None
        self._files: list[Path] = []
        self._reader = RowGroupReader()

    def __call__(self, position: int) -> str:
        import bisect

        if self._starts is None:
            self._files = shards(self.path)
            self._starts = [0]
            for file in self._files:
                self._starts.append(self._starts[-1] + _open(file).metadata.num_rows)
        at = bisect.bisect_right(self._starts, position) - 1
        file = self._files[at]
        return str(self._reader.value(str(file), position - self._starts[at], self.id_key))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_starts": None, "_files": [], "_reader": RowGroupReader()}
