"""The exception tree: one root, and every error survives the trip across a process boundary."""

from __future__ import annotations

import inspect
import pickle

import mpinfer
from mpinfer import errors
from mpinfer.api.answer import MalformedResponse
from mpinfer.limits import NoKeysLeft

SAMPLES: dict[type[Exception], tuple[object, ...]] = {
    errors.SettingsChanged: (["temperature: 0.0 -> 0.7"],),
    errors.InputError: ("not JSON", "tasks.jsonl", 3),
}


def test_every_error_in_the_tree_survives_pickling_with_its_message() -> None:
    # Given every exception class errors.py defines
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception)]
    assert len(classes) >= 9
    for cls in classes:
        error = cls(*SAMPLES.get(cls, ("something went wrong",)))
        # When it is pickled and unpickled
        copy = pickle.loads(pickle.dumps(error))
        # Then it is the same class, under MpinferError, with the same message and exit code
        assert type(copy) is cls and isinstance(copy, errors.MpinferError), cls
        assert (str(copy), copy.exit_code) == (str(error), error.exit_code), cls


def test_the_limiter_and_client_errors_are_part_of_the_tree() -> None:
    # Given the errors the limiter and the client raise
    # Then they are the tree's own classes, and the public API exports no error that is never raised
    assert NoKeysLeft is errors.NoKeysLeft and MalformedResponse is errors.MalformedResponse
    assert issubclass(NoKeysLeft, mpinfer.MpinferError)
    assert issubclass(MalformedResponse, mpinfer.MpinferError)
    assert "RunAborted" not in mpinfer.__all__
