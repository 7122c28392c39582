"""The input reader: check_input fails fast with file and line; iter_tasks streams what is left."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from mpinfer.errors import InputError
from mpinfer.inputs.check import check_input
from mpinfer.inputs.readers import iter_tasks
from mpinfer.inputs.tasks import FieldKeys, Task


def write_lines(path: Path, lines: Sequence[bytes | str | dict[str, Any]]) -> Path:
    """One line per item: dicts as JSON, text and bytes as they are."""
    out = bytearray()
    for item in lines:
        if isinstance(item, dict):
            out += orjson.dumps(item)
        elif isinstance(item, str):
            out += item.encode()
        else:
            out += item
        out += b"\n"
    path.write_bytes(bytes(out))
    return path


DEFAULT_KEYS = FieldKeys()


def input_error(path: Path, keys: FieldKeys = DEFAULT_KEYS) -> InputError:
    with pytest.raises(InputError) as caught:
        check_input(path, keys)
    return caught.value


# --- check_input ----------------------------------------------------------------------------------


def test_check_input_on_good_input_returns_the_ids_and_total(tmp_path: Path) -> None:
    # Given three valid tasks, one with an integer id and one with images
    path = write_lines(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "one"},
        {"id": 7, "prompt": "two"},
        {"id": "c", "prompt": "three", "images": ["x.png", "https://example.invalid/y.jpg"]},
    ])
    # When the input is checked
    index = check_input(path)
    # Then the ids (as strings) and the count come back
    assert set(index.ids) == {"a", "7", "c"}
    assert index.total == 3
    assert index.path == path


def test_invalid_json_names_the_path_and_the_line(tmp_path: Path) -> None:
    # Given a file whose second line is not JSON
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "x"}, '{"id": "b", "prompt": ',
                        {"id": "c", "prompt": "z"}])
    # When it is checked
    error = input_error(path)
    # Then the error says where
    assert error.line == 2
    assert str(error).startswith(f"{path}:2: invalid JSON")


def test_missing_id_is_reported_with_its_line(tmp_path: Path) -> None:
    # Given a task without an id on line 3
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                        {"prompt": "no id"}])
    # When it is checked
    error = input_error(path)
    # Then the message names the line and the field
    assert str(error).startswith(f"{path}:3: missing id (field 'id'")
    assert "--id-key" in str(error)


def test_empty_string_id_counts_as_missing(tmp_path: Path) -> None:
    # Given a task whose id is an empty string
    path = write_lines(tmp_path / "in.jsonl", [{"id": "", "prompt": "x"}])
    # When it is checked
    error = input_error(path)
    # Then it is reported as missing
    assert str(error).startswith(f"{path}:1: missing id")


def test_missing_prompt_is_reported_with_its_line(tmp_path: Path) -> None:
    # Given a task without a prompt on line 2
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "x"}, {"id": "b", "text": "wrong key"}])
    # When it is checked
    error = input_error(path)
    # Then the message names the line and the field
    assert str(error).startswith(f"{path}:2: missing prompt (field 'prompt'")
    assert "--prompt-key" in str(error)


def test_custom_field_keys_are_used_for_id_prompt_and_images(tmp_path: Path) -> None:
    # Given a data set that calls its fields uid, question and picture
    path = write_lines(tmp_path / "in.jsonl", [
        {"uid": "q1", "question": "what?", "picture": "cat.png"},
        {"uid": "q2", "question": "why?"},
    ])
    keys = FieldKeys(id="uid", prompt="question", images="picture")
    # When it is checked and read with those keys
    index = check_input(path, keys)
    tasks = list(iter_tasks(path, keys))
    # Then the fields are found under their names
    assert set(index.ids) == {"q1", "q2"}
    assert tasks[0] == Task(id="q1", prompt="what?", images=("cat.png",), line=1)
    assert tasks[1] == Task(id="q2", prompt="why?", images=(), line=2)


def test_default_keys_do_not_find_custom_fields_and_say_which_key_was_looked_for(
    tmp_path: Path,
) -> None:
    # Given a data set with custom field names read with the default keys
    path = write_lines(tmp_path / "in.jsonl", [{"uid": "q1", "question": "what?"}])
    # When it is checked with a custom id key only
    error = input_error(path, FieldKeys(id="uid"))
    # Then the prompt is reported missing under the key that was looked for
    assert "missing prompt (field 'prompt'" in str(error)


def test_a_single_image_may_be_given_as_a_string(tmp_path: Path) -> None:
    # Given a task whose images field is one path rather than a list
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "look", "images": "img/one.png"}])
    # When it is read
    (task,) = list(iter_tasks(path))
    # Then it becomes a one-element tuple
    assert task.images == ("img/one.png",)


@pytest.mark.parametrize("images", [[""], [3], {"a": "b"}, 5])
def test_images_that_are_not_paths_are_refused(tmp_path: Path, images: Any) -> None:
    # Given a task whose images field holds something that is not a path
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "look", "images": images}])
    # When it is checked
    error = input_error(path)
    # Then the error names the field and the line
    assert str(error) == f"{path}:1: 'images' must be an image path or URL, or a list of them"


def test_empty_prompt_without_images_is_refused_but_with_images_it_is_fine(tmp_path: Path) -> None:
    # Given one task with only whitespace and no image, and one with an empty prompt and an image
    bad = write_lines(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "   "}])
    good = write_lines(tmp_path / "good.jsonl", [{"id": "a", "prompt": "", "images": "x.png"}])
    # When they are checked
    error = input_error(bad)
    index = check_input(good)
    # Then the first is refused and the second accepted
    assert "nothing to ask" in str(error)
    assert index.total == 1


def test_duplicate_ids_are_listed_with_both_line_numbers(tmp_path: Path) -> None:
    # Given id "a" on lines 1 and 3
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                        {"id": "a", "prompt": "z"}])
    # When it is checked
    error = input_error(path)
    # Then both lines are named
    assert str(error) == f"{path}: 1 duplicate ids: 'a' (lines 1 and 3)"


def test_an_integer_id_and_the_same_id_as_text_are_duplicates(tmp_path: Path) -> None:
    # Given ids 1 and "1" (they would be the same in the output)
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": 1, "prompt": "x"}, {"id": "1", "prompt": "y"}])
    # When it is checked
    error = input_error(path)
    # Then they are reported as a duplicate
    assert "'1' (lines 1 and 2)" in str(error)


def test_duplicate_ids_shown_are_capped_at_five(tmp_path: Path) -> None:
    # Given seven ids each appearing twice
    first = [{"id": f"d{i}", "prompt": "x"} for i in range(7)]
    path = write_lines(tmp_path / "in.jsonl", first + first)
    # When it is checked
    message = str(input_error(path))
    # Then all seven are counted, five shown, and the rest summarised
    assert message.startswith(f"{path}: 7 duplicate ids: ")
    for i in range(5):
        assert f"'d{i}' (lines {i + 1} and {i + 8})" in message
    assert "'d5'" not in message and "'d6'" not in message
    assert message.endswith(" and 2 more")


def test_several_bad_lines_are_reported_together(tmp_path: Path) -> None:
    # Given three different problems on lines 2, 4 and 5
    path = write_lines(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "ok"},
        "not json",
        {"id": "c", "prompt": "ok"},
        {"id": "d"},
        {"prompt": "no id"},
    ])
    # When it is checked
    error = input_error(path)
    # Then one error lists all three, each with its line
    lines = str(error).splitlines()
    assert lines[0] == f"{path}: 3 bad lines:"
    assert lines[1].startswith(f"  {path}:2: invalid JSON")
    assert lines[2].startswith(f"  {path}:4: missing prompt")
    assert lines[3].startswith(f"  {path}:5: missing id")
    assert len(lines) == 4


def test_the_listing_of_bad_lines_stops_at_ten(tmp_path: Path) -> None:
    # Given fifteen lines that are not JSON
    path = write_lines(tmp_path / "in.jsonl", ["nope"] * 15)
    # When it is checked
    lines = str(input_error(path)).splitlines()
    # Then ten are listed and the message says it stopped looking
    assert lines[0] == f"{path}: 10 bad lines (and maybe more: stopped looking):"
    assert len(lines) == 11
    assert lines[-1].startswith(f"  {path}:10: ")


def test_blank_lines_and_a_utf8_bom_are_tolerated(tmp_path: Path) -> None:
    # Given a BOM before the first task, blank lines between tasks and a CRLF line
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "x"}\n\n   \n'
                     b'{"id": "b", "prompt": "y"}\r\n\n')
    # When it is checked and read
    index = check_input(path)
    tasks = list(iter_tasks(path))
    # Then both tasks are found, with their real line numbers
    assert index.total == 2
    assert [(t.id, t.line) for t in tasks] == [("a", 1), ("b", 4)]


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    # Given an empty input and one holding only blank lines
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n\n")
    # When they are checked
    # Then each is refused as having no tasks
    assert str(input_error(empty)) == f"{empty}: no tasks in the input"
    assert str(input_error(blank)) == f"{blank}: no tasks in the input"


def test_a_missing_input_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    # Given a path with no file
    path = tmp_path / "absent.jsonl"
    # When it is checked
    error = input_error(path)
    # Then the error names the file and the reason
    assert str(error).startswith(f"{path}: cannot open input")
    assert "No such file" in str(error)


def test_a_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    # Given a JSON array on line 1
    path = write_lines(tmp_path / "in.jsonl", ['["id", "prompt"]'])
    # When it is checked
    error = input_error(path)
    # Then the error says what it got
    assert str(error) == f"{path}:1: expected a JSON object, got list"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("model", 5, "model must be a non-empty string"),
    ("model", "", "model must be a non-empty string"),
    ("temperature", "hot", "temperature must be a number"),
    ("temperature", True, "temperature must be a number"),
    ("max_tokens", 0, "max_tokens must be a positive integer"),
    ("max_tokens", 1.5, "max_tokens must be a positive integer"),
    ("max_tokens", "10", "max_tokens must be a positive integer"),
    ("max_tokens", True, "max_tokens must be a positive integer"),
    ("system", 3, "system must be a string"),
    ("id", 1.5, "id must be a string or an integer, got float"),
    ("id", True, "id must be a string or an integer, got bool"),
    ("prompt", ["a"], "prompt must be a string, got list"),
])
def test_per_task_settings_of_the_wrong_type_are_refused(tmp_path: Path, field: str, value: Any,
                                                         message: str) -> None:
    # Given a second task with one field of the wrong type (its model read: --model-key model)
    task = {"id": "b", "prompt": "y"} | {field: value}
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, task])
    # When it is checked
    error = input_error(path, FieldKeys(model="model"))
    # Then the error names the line and the field
    assert str(error) == f"{path}:2: {message}"


def test_per_task_settings_are_read_into_the_task(tmp_path: Path) -> None:
    # Given a task with its own model, temperature, max_tokens and system message
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": "a", "prompt": "x", "model": "gpt-4o", "temperature": 0,
                         "max_tokens": 9, "system": "be brief"}])
    # When it is read, its model field named (--model-key model)
    (task,) = list(iter_tasks(path, FieldKeys(model="model")))
    # Then each setting is on the task (an integer temperature as a float)
    assert task == Task(id="a", prompt="x", system="be brief", model="gpt-4o", temperature=0.0,
                        max_tokens=9, line=1)
    assert isinstance(task.temperature, float)


# --- iter_tasks -----------------------------------------------------------------------------------


def test_iter_tasks_streams_in_input_order(tmp_path: Path) -> None:
    # Given five tasks
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": f"t{i}", "prompt": f"p{i}"} for i in range(5)])
    # When they are read
    tasks = list(iter_tasks(path))
    # Then they come in file order with their prompts and line numbers
    assert [(t.id, t.prompt, t.line) for t in tasks] == [(f"t{i}", f"p{i}", i + 1)
                                                         for i in range(5)]


def test_iter_tasks_skips_the_given_ids(tmp_path: Path) -> None:
    # Given five tasks, of which t1 and t3 are done
    path = write_lines(tmp_path / "in.jsonl",
                       [{"id": f"t{i}", "prompt": f"p{i}"} for i in range(5)])
    # When the rest are read
    tasks = iter_tasks(path, skip={"t1", "t3"})
    # Then only the others come, in order
    assert [t.id for t in tasks] == ["t0", "t2", "t4"]


def test_iter_tasks_is_lazy(tmp_path: Path) -> None:
    # Given a file with a good first line and a broken second line
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, "broken"])
    # When only the first task is taken
    stream = iter_tasks(path)
    first = next(stream)
    # Then it arrives before the broken line is read, and the broken line raises only when reached
    assert first.id == "a"
    with pytest.raises(InputError) as caught:
        next(stream)
    assert caught.value.line == 2
