"""An input written by Python's json.dumps (``{"id": "x", "prompt": ...}``: a space after each
colon and comma) gets the fast paths a compact one gets (inputs/locate.py ``KeyForm``): its ids
are read from its bytes in order, compared at their rows, matched with an output's; and those
paths stay exact on rows whose id their bytes do not tell (a key named twice, or with an escape)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from helpers import result_line, write_jsonl
from test_status_fast import _own, as_compared, reference_tally, reference_validate, tally_of

from mpinfer.config import RunConfig
from mpinfer.inputs import checked_input, locate, reading, selection
from mpinfer.inputs.check import check_input
from mpinfer.inputs.locate import BOM, IdReader
from mpinfer.inputs.tasks import InputFormat
from mpinfer.reports.tally import OutputTally
from mpinfer.reports.validate import validate_output
from mpinfer.store.done_index import scan_done
from mpinfer.store.output import scan
from mpinfer.store.parts import Parts
from mpinfer.store.row_match import RowMatch, RowSlots, covered_slots

N = 3000
STYLES = ["compact", "dumps", "loose"]


def _tasks(n: int = N) -> list[dict[str, str]]:
    return [{"id": f"t{i}", "prompt": f"question t{i}: what is shown?"} for i in range(n)]


def _write(path: Path, tasks: list[dict[str, str]], style: str) -> Path:
    """``tasks`` as one JSON line each: compact, as json.dumps writes them, or spaced loosely
    (spaces and tabs around every token, CRLF line ends)."""
    if style == "compact":
        lines = [orjson.dumps(task) for task in tasks]
    elif style == "dumps":
        lines = [json.dumps(task).encode() for task in tasks]
    else:
        lines = [json.dumps(task, separators=(" ,\t", " :\t")).replace("{", "{ \t", 1).encode()
                 + b"\r" for task in tasks]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _in_flight(ids: list[str]) -> list[str]:
    """``ids`` as a run writes them: shuffled within windows of 24, every seventh missing, one
    written again far from its row, a stranger."""
    rng = random.Random(7)
    out: list[str] = []
    for start in range(0, len(ids), 24):
        window = [rid for n, rid in enumerate(ids[start:start + 24], start) if n % 7]
        rng.shuffle(window)
        out += window
    out[2000:2000] = [ids[1], "stranger"]
    return out


def _parsed_ids(path: Path) -> list[bytes]:
    """The reference: each line parsed, its id's bytes (b"" for a blank line)."""
    lines = path.read_bytes().removeprefix(BOM).split(b"\n")[:-1]
    return [str(orjson.loads(line)["id"]).encode() if line.strip() else b"" for line in lines]


def _offsets(path: Path) -> list[int]:
    """Where each non-blank line starts."""
    data, at, found = path.read_bytes(), 0, []
    for line in data.split(b"\n")[:-1]:
        if line.strip():
            found.append(at)
        at += len(line) + 1
    return found


@pytest.mark.parametrize("style", ["dumps", "loose"])
def test_a_spaced_input_gives_the_ids_rows_and_slots_a_compact_one_gives(
        tmp_path: Path, style: str) -> None:
    # Given the same 3,000 tasks written compact and spaced, and an output of most of their ids
    # in about their order
    tasks = _tasks()
    compact = _write(tmp_path / "compact.jsonl", tasks, "compact")
    spaced = _write(tmp_path / f"{style}.jsonl", tasks, style)
    answered = [rid.encode() for rid in _in_flight([task["id"] for task in tasks])]
    seen: list[object] = []
    for path in (compact, spaced):
        reader = IdReader(path, "id", InputFormat.JSONL)
        within = check_input(path).ids
        index = within.index
        # When its ids are read from its bytes in order, compared at their rows (a few, then
        # many: after the whole file is counted), and matched with the output's
        ids = [raw for block in reader.plain_ids() or [] for raw in block]
        offsets = _offsets(path)
        expected = _parsed_ids(path)
        few = reader.same_many(offsets[:5], expected[:5])
        many = reader.same_many(offsets, expected)
        wrong = reader.same_many(offsets[:3], [b"t1", b"t2", b"x"])
        rows = RowSlots.over(index, exact_first=0)
        left = [raw for at in range(0, len(answered), 100)
                for raw in rows.cover(answered[at:at + 100])]
        slots = RowSlots.over(index, exact_first=0)
        found = [slot for at in range(0, len(answered), 100)
                 for slot in slots.slots(answered[at:at + 100])]
        match = RowMatch.over(index)
        assert match is not None
        late = [raw for at in range(0, len(answered), 100)
                for raw in match.take(answered[at:at + 100])]
        done = within.empty()
        late += match.finish(done)
        # Then every id is the one parsing its row gives, each told by its bytes
        assert ids == expected and len(ids) == N
        assert few == [True] * 5 and many == [True] * N and wrong == [None] * 3
        # and the rows marked, the slots found, the ids left to the exact lookup are a
        # compact input's (all but the repeat and the stranger matched at their rows)
        covered = rows.covered()
        assert covered.count(1) == len(set(answered)) - 1
        assert sorted(left) == [b"stranger", b"t1"]
        matched = sorted(index.id_at(slot) for slot in done.slots())
        assert b"stranger" in late and len(matched) > 0.8 * len(answered)
        marked, but = covered_slots(index, covered)
        seen.append((ids, covered, [index.id_at(s) if s is not None else None for s in found],
                     sorted(index.id_at(slot) for slot in marked), but, matched, sorted(late)))
    assert seen[0] == seen[1]


def test_status_validate_and_the_resume_scan_of_a_spaced_input_find_what_one_read_finds(
        tmp_path: Path) -> None:
    # Given 3,000 tasks as json.dumps writes them and compact, and an output of most of them
    # about in their order, with a repeat far from its row and a stranger
    tasks = _tasks()
    answered = _in_flight([task["id"] for task in tasks])
    found: list[object] = []
    for style in ("compact", "dumps"):
        folder = tmp_path / style
        folder.mkdir()
        inp = _write(folder / "tasks.jsonl", tasks, style)
        out = folder / "results.jsonl"
        out.write_bytes(b"".join(_own(rid) for rid in answered))
        config = RunConfig(input=inp, output=out)
        within = checked_input(inp, reading(config), selection(config), None).ids
        # When the resume scan, status and validate read it (in one part and in three)
        fast, slow = scan_done(out, within, None), scan(out, within=within)
        assert fast.done is not None and slow.done is not None
        assert sorted(fast.done) == sorted(slow.done) and fast.unknown == slow.unknown
        for parts in (Parts(least=1 << 40), Parts(least=1 << 14, most=3)):
            tally = OutputTally.empty(within)
            tally.refresh(out, folder / "none.errors.jsonl", parts)
            report = validate_output(out, within, parts)
            # Then they find what a line-by-line read finds, whichever way the input is written
            assert tally_of(tally) == reference_tally(out, within)
            assert as_compared(report) == as_compared(reference_validate(out, within))
        found.append((sorted(fast.done), tally_of(tally), dict(report.counts)))
    assert found[0] == found[1]
    assert len(found[0][0]) == len(set(answered)) - 1  # all but the stranger


# Rows whose id their bytes do not tell, each spaced as json.dumps writes it: the whole block is
# then read as rows not told (b""), and a row compared at its offset is read whole (None).
TRICKY = {
    "named twice": b'{"id": "x", "prompt": "p", "id": "y"}',
    "named twice, spaced otherwise": b'{"id": "x", "prompt": "p", "id" :\t"y"}',
    "named again with an escape": b'{"id": "x", "prompt": "p", "\\u0069d": "y"}',
    "named again, its letters escaped": b'{"id": "x", "prompt": "p", "\\u0069\\u0064" : "y"}',
    "named in a nested object": b'{"id": "x", "prompt": "p", "meta": {"id": "z"}}',
}
# Rows whose id is told exactly however they are spaced: beside rows as json.dumps writes them.
TOLD = [
    b'{"id": "a", "prompt": "say \\"id\\": \\"y\\" and stop"}',  # the key's text in a prompt
    b'{ "id" : "b" , "prompt" : "p" }',
    b'{\t"id"\t:\t"c",\t"prompt":\t"p"}',
    b'  {"id": "d", "prompt": "an escape \\u0064 that is no key"}\r',
    b'{"id": "e", "prompt": "id"}',  # the key's name as a value
]


@pytest.mark.parametrize("case", sorted(TRICKY))
@pytest.mark.parametrize("style", ["compact", "dumps"])
def test_a_row_that_names_the_id_key_again_is_never_taken_on_its_bytes(
        tmp_path: Path, case: str, style: str) -> None:
    # Given an input of rows compact or spaced as json.dumps writes them, one of them naming the
    # id key again (parsing takes the last), and an output of the ids parsing gives and of "x",
    # the id the row's start shows
    tasks = [{"id": f"t{i}", "prompt": "p"} for i in range(40)]
    rows = [orjson.dumps(task) if style == "compact" else json.dumps(task).encode()
            for task in tasks]
    rows[20] = (TRICKY[case] if style == "dumps" else
                TRICKY[case].replace(b'": ', b'":').replace(b", ", b","))
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(rows) + b"\n")
    expected = _parsed_ids(inp)
    reader = IdReader(inp, "id", InputFormat.JSONL)
    # When its ids are read from its bytes, the row is compared with "x" and with its id, and
    # the output is scanned
    ids = [raw for block in reader.plain_ids() or [] for raw in block]
    offset = _offsets(inp)[20]
    verdicts = reader.same_many([offset, offset], [b"x", expected[20]])
    output = write_jsonl(tmp_path / "out.jsonl",
                         [result_line(raw.decode()) for raw in [b"x", *expected]])
    index = check_input(inp)
    fast, slow = scan_done(output, index.ids, None), scan(output, within=index.ids)
    # Then no id is told from the block's bytes, the row is left to a full read, and the scan
    # finds what decoding finds: "x" is no task's (but the one whose key is named in a nested
    # object: its id is "x", which the full read confirms)
    assert ids == [b""] * 40
    assert verdicts == [None, None]
    assert fast.done is not None and slow.done is not None
    assert sorted(fast.done) == sorted(slow.done) == sorted({raw.decode() for raw in expected})
    assert fast.unknown == slow.unknown == {"x"} - {raw.decode() for raw in expected}


def test_rows_spaced_every_way_json_allows_are_told_exactly_beside_blank_lines_and_a_bom(
        tmp_path: Path) -> None:
    # Given an input behind a BOM, of rows spaced as json.dumps writes them and otherwise, the
    # key's text in a prompt, a blank line, an id with an escape and a non-ASCII id
    rows = [json.dumps({"id": "first", "prompt": "p"}).encode(), *TOLD, b"",
            b'{"id": "f\\u0067", "prompt": "p"}', '{"id": "é", "prompt": "p"}'.encode()]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(BOM + b"\n".join(rows) + b"\n")
    reader = IdReader(inp, "id", InputFormat.JSONL)
    # When its ids are read from its bytes and each row is compared with the id parsing gives
    ids = [raw for block in reader.plain_ids() or [] for raw in block]
    offsets = _offsets(inp)
    parsed = [raw for raw in _parsed_ids(inp) if raw]
    verdicts = reader.same_many(offsets, parsed)
    # Then each row whose id is plain gives it (the first behind its BOM too); the blank line,
    # the escaped and the non-ASCII id give none
    assert ids == [b"first", b"a", b"b", b"c", b"d", b"e", b"", b"", b""]
    assert _parsed_ids(inp)[:6] == ids[:6]
    # and at its offset every plain row is taken (the first is read whole: the BOM is before
    # it), the others are read whole
    assert verdicts == [None, True, True, True, True, True, None, None]


def test_an_id_whose_bytes_run_past_a_rows_id_is_never_taken_on_them(tmp_path: Path) -> None:
    # Given rows, compact and spaced, whose id is followed by a key of their own
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"id":"a","x":"p","prompt":"p"}\n{"id": "b", "x": "p", "prompt": "p"}\n')
    reader = IdReader(inp, "id", InputFormat.JSONL)
    # When each is compared with ids whose bytes are the row's id and what follows it (as an
    # id of the output whose hash met the row's would be)
    verdicts = reader.same_many([0, 0, 32, 32], [b'a","x', b"a", b'b", "x', b"b"])
    # Then only the row's own id is taken
    assert verdicts == [None, True, None, True]


@pytest.mark.parametrize("id_key", ['a"b', "a,", "a "])
def test_an_id_key_whose_rows_bytes_cannot_be_counted_is_never_read_from_them(
        tmp_path: Path, id_key: str) -> None:
    # Given an input whose id key JSON writes with an escape, or ends in what may stand before
    # a key's opening quote (a count of the key's places could then miss one)
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"".join(orjson.dumps({id_key: f"t{i}", "prompt": "p"}) + b"\n"
                             for i in range(5)))
    reader = IdReader(inp, id_key, InputFormat.JSONL)
    # When its ids are asked for in order and compared at a row
    # Then none is read from the bytes: each is read whole
    assert reader.plain_ids() is None
    assert reader.same_many([0], [b"t0"]) == [None]
    assert reader(0) == "t0"


def _random_row(rng: random.Random, i: int) -> tuple[bytes, str]:
    """A row of one of many shapes, and the id it shows at its start ("x<i>" where the key is
    named again)."""
    task = {"id": f"t{i}", "prompt": "p"}
    ws = ["", " ", "\t", " \t "]
    shape = rng.choices(range(9), weights=[5, 5, 5, 1, 1, 3, 3, 3, 3])[0]  # few spoil a block
    if shape == 0:
        return orjson.dumps(task), f"t{i}"
    if shape == 1:
        return json.dumps(task).encode(), f"t{i}"
    if shape == 2:
        a, b, c, d = (rng.choice(ws) for _ in range(4))
        return f'{a}{{{b}"id"{c}:{d}"t{i}", "prompt": "p"}}'.encode(), f"t{i}"
    if shape == 3:  # the key again, spaced or escaped: parsing takes the last
        again = rng.choice(['"id": ', '"id" :', '"\\u0069d":', '"i\\u0064"\t:'])
        return f'{{"id": "x{i}", "prompt": "p", {again} "t{i}"}}'.encode(), f"x{i}"
    if shape == 4:  # the key in a nested object
        return f'{{"id": "t{i}", "prompt": "p", "m": {{"id": "z"}}}}'.encode(), f"t{i}"
    if shape == 5:  # an escaped id
        return f'{{"id": "\\u0074{i}", "prompt": "p"}}'.encode(), f"t{i}"
    if shape == 6:  # the key's text in a prompt, and an escape of its letter in a value
        return (f'{{"id": "t{i}", "prompt": "say \\"id\\": \\"y\\" \\u0069d", "n": "id"}}'
                .encode(), f"t{i}")
    if shape == 7:
        return f'{{"id": "t{i}é", "prompt": "p"}}'.encode(), f"t{i}é"
    return json.dumps(task).encode() + b"\r", f"t{i}"


@pytest.mark.parametrize("seed", range(3))
def test_rows_of_every_shape_in_small_blocks_give_only_the_ids_parsing_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    # Given 400 rows of random shapes (compact, spaced every way, the key named again, nested,
    # escaped and non-ASCII ids, the key's text in values), blank lines, read in blocks of
    # about 600 bytes; and an output of some of their ids and of the ids their starts show
    monkeypatch.setattr(locate, "_BLOCK", 600)
    rng = random.Random(seed)
    rows, shown = [], []
    for i in range(400):
        row, start = _random_row(rng, i)
        rows.append(row)
        shown.append(start)
        if rng.random() < 0.03:
            rows.append(b"")
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(rows) + b"\n")
    parsed = _parsed_ids(inp)
    answered = [raw.decode() for raw in parsed if raw and rng.random() < 0.7]
    output = write_jsonl(tmp_path / "out.jsonl",
                         [result_line(rid) for rid in [*answered, *shown[::3]]])
    # When its ids are read from its bytes, compared at their rows with the ids parsing gives
    # and with those their starts show, and the output is scanned
    reader = IdReader(inp, "id", InputFormat.JSONL)
    ids = [raw for block in reader.plain_ids() or [] for raw in block]
    offsets = _offsets(inp)
    decoys = [(offset, start.encode()) for offset, start in zip(offsets, shown, strict=True)
              if start.startswith("x")]
    verdicts = reader.same_many(offsets, [raw for raw in parsed if raw])
    fooled = reader.same_many([offset for offset, _ in decoys], [raw for _, raw in decoys])
    index = check_input(inp)
    fast, slow = scan_done(output, index.ids, None), scan(output, within=index.ids)
    # Then every id told is the one parsing gives (many are told), no row is taken for the id
    # its start shows, and the scan finds what decoding finds
    assert len(ids) == len(parsed)
    assert all(raw in (b"", want) for raw, want in zip(ids, parsed, strict=True))
    assert sum(1 for raw in ids if raw) > 40
    assert set(verdicts) <= {True, None} and verdicts.count(True) > 100
    assert decoys and fooled == [None] * len(decoys)
    assert fast.done is not None and slow.done is not None
    assert sorted(fast.done) == sorted(slow.done) and fast.unknown == slow.unknown
