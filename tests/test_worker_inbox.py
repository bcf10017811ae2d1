"""Who reads a worker's connection (minicluster/_private/node/inbox.py): the main thread between
tasks, a waiting thread for its own reply, the SIGINT handler for a cancel. The first tests drive an
Inbox over a socket pair, the head's end written by the test; the last ones go through the runtime."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster._private.node.inbox import Inbox
from minicluster._private.wire import messages as msg
from minicluster._private.wire.protocol import Connection, encode
from minicluster.exceptions import TaskCancelledError
from minicluster.util.state import get_task

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    """(inbox, the head's end of its socket, the messages its handlers saw in order)."""
    worker_end, head_end = socket.socketpair()
    seen: list = []
    handlers = {msg.Reply: seen.append, msg.DefineFunction: seen.append, msg.StreamAck: seen.append}
    inbox = Inbox(Connection(worker_end), handlers, cancel_due=lambda: False)
    yield inbox, head_end, seen
    inbox.close()
    worker_end.close()
    head_end.close()


def _exec(task_id: bytes) -> msg.Exec:
    return msg.Exec(*[None] * len(msg.Exec._fields))._replace(task_id=task_id)


def _define(n: int) -> msg.DefineFunction:
    return msg.DefineFunction(function_id=b"f%d" % n, blob=b"")


def test_the_main_thread_reads_until_a_task_comes_and_hands_the_rest_to_handlers_in_order(pair):
    inbox, head, seen = pair
    head.sendall(encode([_define(1), _define(2)]))
    head.sendall(encode([_define(3), _exec(b"t1"), _define(4)]))
    task = inbox.next_task(lambda: None, 5.0)
    assert task.task_id == b"t1"
    assert [m.function_id for m in seen] == [b"f1", b"f2", b"f3", b"f4"]  # the whole frame, in order


def test_the_main_thread_sleeping_for_work_wakes_for_an_item_put_by_another_thread(pair):
    inbox, _head, _seen = pair
    idle: list = []
    threading.Timer(0.2, inbox.put, args=(None,)).start()
    start = time.monotonic()
    assert inbox.next_task(lambda: idle.append(True), 0.05) is None
    assert idle == [True], "it waited long enough to be called idle, then the put woke it"
    assert time.monotonic() - start < 5


def test_threads_waiting_for_replies_at_once_each_get_their_own_whatever_the_order(pair):
    inbox, head, seen = pair
    answers: dict = {}
    got: dict = {}

    def on_reply(reply: msg.Reply) -> None:
        answers[reply.request_id] = reply.payload

    inbox.handlers[msg.Reply] = on_reply

    def waiter(request_id: int) -> None:
        assert inbox.wait_for(lambda: request_id in answers, 10)
        got[request_id] = answers[request_id]

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for request_id in (3, 1, 4):
        head.sendall(encode([msg.Reply(request_id=request_id, payload=f"answer {request_id}")]))
    head.sendall(encode([_exec(b"queued meanwhile"), msg.Reply(request_id=2, payload="answer 2")]))
    for thread in threads:
        thread.join(10)
    assert got == {i: f"answer {i}" for i in range(1, 5)}
    assert inbox.tasks.get_nowait().task_id == b"queued meanwhile"  # a task that came is queued, not lost


def test_a_wait_for_a_reply_that_never_comes_times_out_and_gives_the_connection_back(pair):
    inbox, head, seen = pair
    assert inbox.wait_for(lambda: False, 0.2) is False
    head.sendall(encode([_define(1), _exec(b"t")]))
    assert inbox.next_task(lambda: None, 5.0).task_id == b"t"  # nobody kept the connection
    assert len(seen) == 1


def test_a_signal_reads_what_came_when_nobody_reads(pair):
    inbox, head, seen = pair
    head.sendall(encode([_define(1)]))
    wait_for(lambda: _readable(inbox), 5, "the bytes to arrive")
    inbox.on_signal()  # (what the worker's SIGINT handler calls)
    assert [m.function_id for m in seen] == [b"f1"]


def test_a_signal_while_another_thread_reads_leaves_the_message_to_it(pair):
    inbox, head, seen = pair
    answered: list = []
    inbox.handlers[msg.Reply] = answered.append
    reader = threading.Thread(target=inbox.wait_for, args=(lambda: bool(answered), 10))
    reader.start()
    wait_for(lambda: inbox._reading.locked(), 5, "the thread to read")
    inbox.on_signal()  # the lock is taken: the handler must neither block nor read
    head.sendall(encode([_define(1), msg.Reply(request_id=1, payload=None)]))
    reader.join(10)
    assert [m.function_id for m in seen] == [b"f1"] and len(answered) == 1
    assert not inbox._reading.locked()


def _readable(inbox: Inbox) -> bool:
    return bool(inbox._poll.poll(0))


# ---- through the runtime -------------------------------------------------------------------


def test_a_cancelled_task_queued_behind_one_busy_in_its_own_code_never_runs(cluster, tmp_path, monkeypatch):
    """The running task reads nothing (a pure-Python loop): the head's signal makes the worker read
    the CancelTask before it gets to the queued task."""
    from minicluster._private.head import task_placement

    monkeypatch.setattr(task_placement, "PIPELINE_QUICK_S", 0.1)  # "quick" even on a loaded machine
    cluster(num_cpus=1)

    @ray.remote
    def quick(path: str, spin_until: str) -> str:
        open(path, "w").close()
        while spin_until and not os.path.exists(spin_until):
            pass  # busy in its own code: no get, no sleep
        return path

    @ray.remote
    def hold(seconds: float) -> None:
        time.sleep(seconds)

    go = str(tmp_path / "go")
    assert ray.get(quick.remote(str(tmp_path / "warm"), ""), timeout=10)  # now known to be quick
    blocker = hold.remote(0.3)  # both wait for the CPU: then one runs and the other is pipelined behind it
    busy = quick.remote(str(tmp_path / "busy"), go)
    queued = quick.remote(str(tmp_path / "queued"), "")
    wait_for(lambda: os.path.exists(tmp_path / "busy"), 10, "the busy task to start")
    wait_for(lambda: (get_task(queued) or [None])[-1].state == "SUBMITTED_TO_WORKER", 10,
             "the queued task to be pipelined to the busy worker")
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=10)
    open(go, "w").close()
    assert ray.get(busy, timeout=10) == str(tmp_path / "busy")
    ray.get(blocker, timeout=10)
    assert ray.get(quick.remote(str(tmp_path / "after"), ""), timeout=10)  # the worker is still in step
    assert not os.path.exists(tmp_path / "queued"), "the cancelled task ran"


def test_threads_of_one_task_each_get_their_own_values(cluster):
    cluster(num_cpus=3)

    @ray.remote
    def slow(value: int, seconds: float) -> int:
        time.sleep(seconds)
        return value

    @ray.remote
    def fan_out() -> list:
        refs = [slow.remote(i, 0.05 * (5 - i)) for i in range(5)]
        results = [None] * 5

        def get(i: int) -> None:
            results[i] = ray.get(refs[i])

        threads = [threading.Thread(target=get, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        get(4)  # the task's own thread too
        for thread in threads:
            thread.join()
        return results

    assert ray.get(fan_out.remote(), timeout=30) == [0, 1, 2, 3, 4]


def test_a_thread_an_actor_call_left_behind_gets_its_value_while_the_actor_takes_more_calls(cluster, tmp_path):
    cluster(num_cpus=2)

    @ray.remote
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "late value"

    @ray.remote
    class Keeper:
        def start(self, ref_holder: list, path: str) -> str:
            def wait() -> None:
                value = ray.get(ref_holder[0])
                with open(path, "w") as file:
                    file.write(value)

            threading.Thread(target=wait, daemon=True).start()
            return "started"

        def ping(self, i: int) -> int:
            return i

    keeper = Keeper.remote()
    path = str(tmp_path / "value")
    assert ray.get(keeper.start.remote([slow.remote(0.5)], path), timeout=10) == "started"
    assert [ray.get(keeper.ping.remote(i), timeout=10) for i in range(50)] == list(range(50))
    wait_for(lambda: os.path.exists(path) and open(path).read() == "late value", 10, "the thread's value")
    assert ray.get(keeper.ping.remote(99), timeout=10) == 99


def test_cancel_reaches_a_task_busy_in_pure_python_that_reads_nothing(cluster, tmp_path):
    """No get, no sleep: only the head's signal makes the worker read the CancelTask."""
    cluster(num_cpus=1)
    started = str(tmp_path / "started")

    @ray.remote(max_retries=0)
    def spins(path: str) -> str:
        with open(path, "w") as file:
            file.write(str(os.getpid()))
        while True:
            pass

    ref = spins.remote(started)
    wait_for(lambda: os.path.exists(started), 10, "the task to start")
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=10)
    # The worker survived the interrupt and runs the next task.
    assert ray.get(ray.remote(os.getpid).remote(), timeout=10) == int(open(started).read())
