"""The resume's done index: the ids an output holds, kept beside it so that a rerun reads only what
was appended since mpinfer last read it.

``scan_done`` is the run's scan of an output (what ``output.scan`` does, faster, and remembered):

- It keeps a hidden file beside the output (``.results.jsonl.done-index``): the ids found, one bit
  each over the input's id index, the ids not in the input, the bad lines, and a ``FileMark`` of
  where the output was read up to. The file is trusted only for the same input read the same way
  (the input's own mark and keys) and only while the output is still the file it read: same device
  and inode, not shorter, the same bytes at its head and just before the mark, and the same mtime
  when it did not grow (store/marks.py). Lines appended since (by a run killed before it updated
  the index, or by another writer) are read from the mark; anything else (truncated, replaced,
  rewritten) means a full read, as without an index.
- A full read goes block by block (a MB). A line in the form mpinfer writes, ``{"id":"<id>",
  "input_prompt":...}`` ending in ``}``, its id plain (printable ASCII, no escape), is taken
  without decoding it: its id is sliced out and looked up. When every line of a block is such a
  line, one regex pass finds them all (an entry for each newline: the next line's id, or nothing
  when that line is not such a line or the one before is not closed) and a count checks that
  none holds a second record's start (a torn line with another glued on); else line by line,
  and every other line is decoded and judged as ``output.scan`` judges it (an answer record, or a
  bad line). A block where a line taken fast holds a second record's start is decoded whole. The
  cost of the answers (``--max-cost``) is read line by line. A line in mpinfer's form whose middle
  was damaged in place (not torn: mpinfer cuts a torn tail before it appends) is taken as done.
- A read from the output's start matches its ids with the input's rows in order (store/row_match.py:
  the input's ids read beside the output's, compared as bytes); the ids it leaves, and those of a
  read from the mark, are looked up by hash. Such a read of a big output (``SPLIT_FROM``) has its
  second half's blocks read by a forked child meanwhile (store/block_scan.py), taken in order after.
- A hash is never taken for an id: an id counts only once it compares equal with the input's id of
  its row (``RowMatch``) or at its slot (``IdIndex.find_raws``: a byte compare of the input's row,
  or the row read again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from .blobfile import BlobReader, write_blobs
from .block_scan import HEAD, SPLIT_FROM, SecondHalf, fast_ids, half_point
from .idset import IdIndex, IdSubset
from .marks import FileMark
from .output import BadLine, Scan, answer_cost
from .records import answer_id
from .row_match import RowMatch

_MAGIC = b"mpinfer done index 1\n"
_BLOCK = 1 << 20
_BAD_KEPT = 20  # bad lines kept by line number and snippet (all are counted)
_NEXT = b'","input_prompt":'
_PLAIN = bytes(range(0x20)) + b"\\"  # bytes that never stand for themselves in a JSON string
_COST = b',"cost":'
_COST_ESTIMATE = b',"cost_estimate":'


def index_path(output: Path) -> Path:
    """Where the done index of ``output`` is kept: a hidden file beside it."""
    return output.with_name(f".{output.name}.done-index")


@dataclass
class _State:
    """What an output holds up to its mark."""

    done: IdSubset  # the input's ids found (over the whole input, not only a selection)
    unknown: set[str] = field(default_factory=set)
    bad_lines: list[BadLine] = field(default_factory=list)
    bad: int = 0
    lines: int = 0  # non-blank lines
    numbered: int = 0  # lines of any kind: the last line's number
    cost: float | None = None  # counted only when a run asks for it (--max-cost)
    mark: FileMark | None = None
    match: RowMatch | None = None  # while an output is read from its start: never kept

    def take_bad(self, number: int, raw: bytes) -> None:
        self.bad += 1
        if len(self.bad_lines) < _BAD_KEPT:
            self.bad_lines.append(BadLine.of(number, raw))


def scan_done(output: Path, within: IdSubset, input_key: dict[str, Any] | None,
              want_cost: bool = False, split_from: int = SPLIT_FROM) -> Scan:
    """The ids of ``within`` (the selected ids of the input) answered in ``output``, as
    ``output.scan(output, within=within)`` finds them; bad lines are all counted (``Scan.bad``) and
    the first few kept. ``input_key`` says which input the slots are of (None: keep no index);
    ``want_cost`` adds up what the answers cost; an output read from its start from ``split_from``
    bytes on is read by two processes."""
    index = within.index
    kept = index_path(output)
    state = _load(kept, input_key, index, want_cost) if input_key is not None else None
    start: int | None = 0
    if state is not None:
        start = state.mark.resume_at(output) if state.mark is not None else None
    if state is None or start is None:
        state, start = _State(done=IdSubset(index), cost=0.0 if want_cost else None), 0
    before = state.mark
    try:
        handle = output.open("rb")
    except FileNotFoundError:
        return Scan(done=within.empty())
    except OSError as exc:
        raise OutputError(f"{output}: cannot read: {exc.strerror or exc}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        torn = _read(handle, start, state, index, split_from)
    if input_key is not None and state.mark != before:
        _save(kept, input_key, state)
    if torn.strip():  # a last line without its newline: judged, never kept in the index
        _take_decoded(torn, state.numbered + 1, state, index)
    return Scan(done=state.done.both(within), unknown=state.unknown,
                bad_lines=list(state.bad_lines), bad=state.bad, lines=state.lines,
                end_offset=size, cost=state.cost or 0.0)


@dataclass(frozen=True)
class KeptDone:
    """What an output's done index says of its lines up to ``mark``: the input's ids answered
    there (over the whole input) and the ids not in the input."""

    done: IdSubset
    unknown: frozenset[str]
    mark: FileMark

    def holds(self, output: Path, read: FileMark | None) -> bool:
        """Whether this describes the lines of ``output`` up to its mark, as a read of the file
        that ended at ``read`` (the same file, still the one indexed, read at least that far)."""
        return (read is not None and (read.dev, read.ino) == (self.mark.dev, self.mark.ino)
                and read.offset >= self.mark.offset and self.mark.resume_at(output) is not None)


def kept_done(output: Path, index: IdIndex, input_key: dict[str, Any] | None) -> KeptDone | None:
    """The done index kept beside ``output`` (by a run or a rerun's scan), when it is of this
    input (``input_key``, the input index's) and ``output`` is still the file it read, maybe
    grown since; None otherwise. Its ids were each found equal to the input's (never a hash)."""
    if input_key is None:
        return None
    state = _load(index_path(output), input_key, index, want_cost=False)
    if state is None or state.mark is None or state.mark.resume_at(output) is None:
        return None
    return KeptDone(state.done, frozenset(state.unknown), state.mark)


def _read(handle: BufferedReader, start: int, state: _State, index: IdIndex,
          split_from: int) -> bytes:
    """Read whole lines from ``start`` into ``state`` and mark where they end; the torn rest."""
    fd = handle.fileno()
    # Matching with the input in order pays on a read from the output's start (not a few lines
    # appended since the mark, far from the input's start).
    state.match = RowMatch.over(index) if start == 0 else None
    size = os.fstat(fd).st_size
    half = (half_point(fd, size) if start == 0 and state.cost is None and size >= split_from
            else None)
    second = SecondHalf.fork(fd, half, _BLOCK) if half is not None else None
    try:
        offset, torn = _read_range(handle, start, state, index, half if second else None)
        blocks = second.blocks() if second is not None and not torn else None
    finally:
        if second is not None:
            second.close()
    if blocks is not None:
        for block in blocks:
            if block.ids is None:
                _take_lines(os.pread(fd, block.end - block.start, block.start), state, index)
            else:
                _take_lines_of(block.ids, state, index)
            offset = block.end
    if second is not None:  # what the child did not read (appended since, or a torn tail)
        offset, torn = _read_range(handle, offset, state, index, None)
    if state.match is not None:
        unmatched = state.match.finish(state.done)
        state.match = None
        _take_ids(unmatched, state, index)
    state.mark = FileMark.of_fd(fd, offset)
    return torn


def _read_range(handle: BufferedReader, start: int, state: _State, index: IdIndex,
                stop: int | None) -> tuple[int, bytes]:
    """Read whole lines from ``start`` up to ``stop`` (None: the end) into ``state``; where they
    end, and the bytes after (a line cut there)."""
    handle.seek(start)
    buffer = bytearray(_BLOCK)
    offset, held = start, 0  # held: the start of a line cut by the block's end, moved to the front
    while True:
        if held == len(buffer):  # a line longer than the block: room for more of it
            buffer.extend(bytes(len(buffer)))
        room = len(buffer) - held if stop is None else min(len(buffer) - held,
                                                             stop - offset - held)
        with memoryview(buffer) as view, view[held:held + room] as free:
            got = handle.readinto(free) if room > 0 else 0
        if not got:
            break
        size = held + got
        cut = buffer.rfind(b"\n", 0, size) + 1
        if cut:
            _take_block(buffer, cut, state, index)
            offset += cut
            buffer[:size - cut] = buffer[cut:size]
            held = size - cut
        else:
            held = size
    return offset, bytes(buffer[:held])


def _take_block(buffer: bytearray, end: int, state: _State, index: IdIndex) -> None:
    """Count the whole lines in ``buffer[:end]``: at a few passes of C over the block when every
    line is in mpinfer's form, its id plain and its record ended, and none holds a second record's
    start; else line by line."""
    ids = fast_ids(buffer, end) if state.cost is None else None
    if ids is None:
        _take_lines(bytes(buffer[:end]), state, index)
    else:
        _take_lines_of(ids, state, index)


def _take_lines_of(ids: list[bytes], state: _State, index: IdIndex) -> None:
    """Count a block of answer lines in mpinfer's form, one for each id."""
    _take_ids(ids, state, index)
    state.lines += len(ids)
    state.numbered += len(ids)


def _take_ids(ids: list[bytes], state: _State, index: IdIndex) -> None:
    """Count ids sliced out of answer lines (their bytes are the ids: no escape in them): matched
    with the input's rows in order when the output is read from its start, else (and those not
    matched) looked up by hash."""
    if state.match is not None:
        ids = state.match.take(ids)
    if not ids:
        return
    slots = index.find_raws(ids)
    found = [slot for slot in slots if slot is not None]
    if len(found) < len(slots):
        state.unknown.update(raw.decode() for raw, slot in zip(ids, slots, strict=True)
                             if slot is None)
    state.done.add_slots(found)


def _take_lines(block: bytes, state: _State, index: IdIndex) -> None:
    """Count one block of whole lines, line by line."""
    lines = block.split(b"\n")
    lines.pop()  # after the last newline
    fast: list[bytes] = []
    costs: list[bytes] = []
    slow: list[int] = []
    counting = state.cost is not None
    for at, line in enumerate(lines):
        if line.startswith(HEAD):
            end = line.find(b'"', 7)
            raw = line[7:end]
            # an id with an escape or a control character is decoded: its bytes are not the id
            if (end > 7 and line.startswith(_NEXT, end) and line.endswith(b"}") and raw.isascii()
                    and len(raw.translate(None, _PLAIN)) == len(raw)):
                fast.append(raw)
                if counting:
                    costs.append(line)
                continue
        slow.append(at)
    # Each line taken fast starts a record; none may hold a second one (a torn line with the next
    # glued on): else every line of this block is decoded.
    if block.count(HEAD) - sum(lines[at].count(HEAD) for at in slow) != len(fast):
        fast, costs, slow = [], [], list(range(len(lines)))
    _take_ids(fast, state, index)
    state.lines += len(fast)
    if counting:
        state.cost = (state.cost or 0.0) + sum(_line_cost(line) for line in costs)
    base = state.numbered
    for at in slow:
        if lines[at].strip():
            _take_decoded(lines[at], base + at + 1, state, index)
    state.numbered = base + len(lines)


def _line_cost(line: bytes) -> float:
    """The cost of an answer line in mpinfer's form, read without decoding it: ``cost``, or
    ``cost_estimate`` when the cost is null (an answer without usage, at its estimate)."""
    for key in (_COST, _COST_ESTIMATE):
        at = line.rfind(key)
        if at < 0:
            return 0.0
        at += len(key)
        end = line.find(b",", at)
        value = line[at:end if end >= 0 else len(line) - 1]
        if value != b"null":
            try:
                return float(value)
            except ValueError:
                return float(answer_cost(orjson.loads(line)))
    return 0.0


def _take_decoded(raw: bytes, number: int, state: _State, index: IdIndex) -> None:
    """Judge one line by decoding it, as ``output.scan`` does."""
    state.lines += 1
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    rid = answer_id(obj)
    if rid is None:
        state.take_bad(number, raw)
        return
    slot = index.find(rid)
    if slot is None:
        state.unknown.add(rid)
    else:
        state.done.add_slot(slot)
    if state.cost is not None:
        state.cost += answer_cost(obj)


def _load(path: Path, input_key: dict[str, Any] | None, index: IdIndex,
          want_cost: bool) -> _State | None:
    """The kept state, or None without one (or one for another input, or without the cost asked
    for, or that cannot be read)."""
    try:
        with BlobReader(path, _MAGIC) as reader:
            header = reader.header
            if header["input"] != input_key or (want_cost and header["cost"] is None):
                return None
            state = _State(done=IdSubset(index))
            state.done.load_bytes(reader.take("done"))
            state.unknown = {str(v) for v in header["unknown"]}
            state.bad_lines = [BadLine(int(n), str(s)) for n, s in header["bad_lines"]]
            state.bad, state.lines = int(header["bad"]), int(header["lines"])
            state.numbered = int(header["numbered"])
            state.cost = None if header["cost"] is None else float(header["cost"])
            state.mark = FileMark.from_dict(header["mark"])
            return state
    except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        return None


def _save(path: Path, input_key: dict[str, Any], state: _State) -> None:
    """Keep ``state`` beside the output; a folder that cannot take it only means a full read."""
    if state.mark is None:
        return
    header = {"input": input_key, "mark": state.mark.to_dict(), "unknown": sorted(state.unknown),
              "bad_lines": [[b.line, b.snippet] for b in state.bad_lines], "bad": state.bad,
              "lines": state.lines, "numbered": state.numbered, "cost": state.cost}
    write_blobs(path, _MAGIC, header, [("done", [state.done.to_bytes()])])
