"""The wire messages (minicluster/_private/wire/messages.py): one definition each, pickled cheaply, used everywhere."""

from __future__ import annotations

import copyreg
import pathlib
import pickle
import re

import pytest

from minicluster._private.wire import messages
from minicluster._private.wire.protocol import FrameDecoder, encode

PACKAGE = pathlib.Path(messages.__file__).resolve().parents[2]


def _sample(record: type) -> tuple:
    """An instance with a distinct value in each field."""
    return record(*(f"{record.__name__}.{name}" for name in record._fields))


@pytest.mark.parametrize("record", messages.RECORDS, ids=lambda r: r.__name__)
def test_every_record_survives_a_frame_and_pickles_through_its_reducer(record):
    sample = _sample(record)
    [frame] = FrameDecoder().feed(encode([sample, sample]))
    back = pickle.loads(frame)
    assert back == [sample, sample] and type(back[0]) is record
    assert copyreg.dispatch_table.get(record) is messages._reduce  # not NamedTuple's slower generic path


@pytest.mark.parametrize("record", messages.RECORDS, ids=lambda r: r.__name__)
def test_every_record_says_what_it_is(record):
    assert record.__doc__ and not record.__doc__.startswith(record.__name__ + "(")  # not the generated one


def test_records_lists_every_message_class():
    defined = {value for value in vars(messages).values()
               if isinstance(value, type) and issubclass(value, tuple) and value.__module__ == messages.__name__}
    assert defined == set(messages.RECORDS)


def test_no_message_is_built_as_a_kind_tagged_tuple():
    """Messages are sent as records only: a tuple literal starting with a string, sent or posted, is the old way."""
    pattern = re.compile(r"""(_post\([^()]*,\s*|\.send\(|\.send_list\(\[|\.append\()\(\s*["'][a-z_]+["']\s*,""")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []
