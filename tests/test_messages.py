"""The wire messages (minicluster/_private/wire/messages.py): one definition each, pickled cheaply, used everywhere."""

from __future__ import annotations

import pathlib
import pickle
import re

import pytest

from minicluster._private.wire import messages
from minicluster._private.wire.protocol import FrameDecoder, decode, encode

PACKAGE = pathlib.Path(messages.__file__).resolve().parents[2]


def _sample(record: type) -> tuple:
    """An instance with a distinct value in each field (records where a field is declared to hold them)."""
    values = []
    for name, hint in zip(record._fields, messages._field_types(record)):
        shape, inner = messages._nested_record(hint)
        kind = shape.lstrip("?")
        if inner is None:
            values.append(f"{record.__name__}.{name}")
        elif kind == "one":
            values.append(_sample(inner))
        elif kind == "list":
            values.append([_sample(inner)])
        elif kind == "tuple":
            values.append((_sample(inner),))
        else:
            values.append({b"key": _sample(inner)})
    return record(*values)


@pytest.mark.parametrize("record", messages.RECORDS, ids=lambda r: r.__name__)
def test_every_record_survives_a_frame(record):
    sample = _sample(record)
    [frame] = FrameDecoder().feed(encode([sample, sample]))
    back = decode(frame)
    assert back == [sample, sample] and type(back[0]) is record
    assert type(pickle.loads(pickle.dumps(sample, protocol=5))) is record  # as a value in a field of type Any


def test_records_nested_in_declared_fields_travel_as_plain_tuples_and_come_back_as_records():
    ref = messages.FaultRef(serial=1, fault_id=2)
    order = messages.FaultOrder(point="start", action="sleep", ref=ref,
                                argument=messages.FetchDelay(seed=3, low_s=0.1, high_s=0.2))
    exec_ = messages.Exec(task_id=b"t", attempt=1, function_id=b"f", name="n", args_blob=b"a",
                          payloads={b"o": messages.Payload(kind="s", data=[b"node"], size=3)}, num_returns=1,
                          retry_exceptions=False, max_calls=0, task_type="NORMAL_TASK", func_name="m.f", method=None,
                          concurrency_group="", faults=(order,), num_cpus=1.0,
                          actor_config=messages.ActorConfig(actor_id=b"a", max_concurrency=1, is_async=False,
                                                            class_name="C", concurrency_groups={"io": 2}),
                          runtime_env=None, gpu_ids=("0",))
    done = messages.Done(task_id=b"t", attempt=1, results=[messages.Value(kind="i", data=b"x", refs=[b"r"])],
                         error=messages.ErrorInfo(error_type="E", retryable=True, message="m"), start=1.0, end=2.0,
                         retire=False)
    wire = messages.to_wire([exec_, done])
    assert type(wire[0][6][b"o"]) is tuple and type(wire[1][3][0]) is tuple and type(wire[1][4]) is tuple
    back_exec, back_done = decode(FrameDecoder().feed(encode([exec_, done]))[0])
    assert (back_exec, back_done) == (exec_, done)
    assert type(back_exec.payloads[b"o"]) is messages.Payload and type(back_exec.actor_config) is messages.ActorConfig
    assert type(back_exec.faults[0]) is messages.FaultOrder and type(back_exec.faults[0].ref) is messages.FaultRef
    assert type(back_exec.faults[0].argument) is messages.FetchDelay  # a field of type Any: pickled as a record
    assert type(back_done.results[0]) is messages.Value and type(back_done.error) is messages.ErrorInfo


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


@pytest.mark.timeout(30)
def test_a_connection_reads_frames_however_the_bytes_arrive():
    """One frame per read (the common case, taken whole), a frame split over reads, and
    several frames in one read all come out as the same messages, in order."""
    import socket

    from minicluster._private.wire.protocol import Connection

    payloads = [encode([messages.CollectGarbage.new()]), encode([messages.Retire.new()]),
                encode([messages.CollectGarbage.new()])]
    here, there = socket.socketpair()
    try:
        conn = Connection(here)
        there.sendall(payloads[0])  # one whole frame
        assert [type(m) for m in conn.recv()] == [messages.CollectGarbage]
        there.sendall(payloads[1][:3])  # a frame split inside its length prefix...
        there.sendall(payloads[1][3:] + payloads[2][:5])  # ...ending with the start of the next
        assert [type(m) for m in conn.recv()] == [messages.Retire]
        there.sendall(payloads[2][5:] + payloads[0] + payloads[1])  # the rest, then two whole frames
        assert [type(m) for m in conn.recv()] == [messages.CollectGarbage]
        assert [type(m) for m in conn.recv()] == [messages.CollectGarbage]
        assert [type(m) for m in conn.recv()] == [messages.Retire]
    finally:
        here.close()
        there.close()
