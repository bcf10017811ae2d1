"""Who reads a worker's connection to the head, and when; the queue of tasks it delivers.

Runs in every worker process. No thread is set aside for reading: a thread
that reads wakes up on its own vCPU, and on a virtual machine a wake-up that
crosses to an idle vCPU costs more than the rest of a round trip (measured:
a task round trip took ~155 us with every process on one vCPU, ~235 us
spread over two). So the threads that need a message read it themselves:

    main thread, no task to run     reads until a task is queued (`next_task`): first what
                                    has come, then it spins a moment (SPIN_S) so that the
                                    next Exec of a run of round trips finds it awake, then
                                    it sleeps in poll()
    a thread waiting for a reply    reads until its reply is in (`wait_for`): get, wait, the
    (get, wait, a generator's       other requests of worker_client.py, a generator waiting
    consumer)                       for its consumer
    the SIGINT handler              cancel() of a task that runs its own code and reads
                                    nothing: the head writes the CancelTask, then signals
                                    the worker; the handler reads it (`on_signal`)
    the reader thread               an async or threaded actor's calls run on other threads
                                    while its messages keep coming: from its creation on, a
                                    thread reads for good (`start_reader_thread`) and the
                                    main thread takes its work from the queue

Invariants:

* one reader at a time: whoever holds `_reading` reads, and dispatches each frame
  whole, in order, before anyone else reads (others wait on `_changed`, which the
  reader notifies after every frame and when it lets go);
* a message the head signalled about is read: the SIGINT handler sets `_unread`, and
  whoever lets go of `_reading` reads what has come while it is set;
* a KeyboardInterrupt (how cancel() reaches a task) never cuts a frame: while the main
  thread reads (`main_reading`) the SIGINT handler does not raise; the reading loop
  raises it between frames, once it has let go (`cancel_due`);
* the connection closing means the driver is gone: the worker exits at once.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

from minicluster._private.wire import messages as msg
from minicluster._private.wire.protocol import Connection, decode

#: After its last task the main thread reads without sleeping this long: in a run of round trips
#: (get(f.remote(i)) in a loop) the next Exec comes within it, to a vCPU that is awake. It spins
#: again only once a wait turned out this short (a worker idle for longer does not spin each time).
SPIN_S = 0.0003

_POLL_IN = select.POLLIN | select.POLLERR | select.POLLHUP


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS)
        return os.cpu_count() or 1


class Inbox:
    """The worker's reads of its connection, and the tasks (Exec messages) they deliver."""

    def __init__(self, conn: Connection, handlers: Dict[type, Callable[[Any], None]],
                 cancel_due: Callable[[], bool]) -> None:
        self.conn = conn
        self.handlers = handlers  #: message type -> handler; Exec messages go to `tasks`
        self.cancel_due = cancel_due  #: (main thread) a cancel of its task waits to be raised; consumes it
        #: Exec messages to run, or None: exit; (a reader-thread worker) FLUSH items of async_actor.py
        self.tasks: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.main_ident = threading.get_ident()
        self.main_reading = False  #: the main thread holds `_reading` (see the invariants)
        self._reading = threading.Lock()
        self._changed = threading.Condition(threading.RLock())  # (RLock: the SIGINT handler may take it again)
        self._waiters = 0
        self._unread = False  #: a SIGINT came: a message waits that nobody may be reading
        self._reader: Optional[threading.Thread] = None
        self._spin_s = SPIN_S if _cpus() > 1 else 0.0  # on one CPU a spin only delays the sender
        self._spin_next = True
        self._poll = select.poll()
        self._poll.register(conn.sock.fileno(), _POLL_IN)
        self._wake_r, self._wake_w = os.pipe()  # wakes the main thread sleeping in poll (`put`)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._idle_poll = select.poll()
        self._idle_poll.register(conn.sock.fileno(), _POLL_IN)
        self._idle_poll.register(self._wake_r, select.POLLIN)

    def close(self) -> None:
        """(tests) The worker process keeps its inbox to the end."""
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # ---- tasks --------------------------------------------------------------------

    def put(self, item: Any) -> None:
        """Queue an item for the main thread from any thread, waking it wherever it waits."""
        self.tasks.put(item)
        if self._reader is None:  # (else the main thread waits on the queue itself)
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # (a full pipe wakes it all the same)

    def next_task(self, on_long_idle: Callable[[], None], long_idle_s: float) -> Any:
        """(main thread) The next item of `tasks`, reading the connection while there is none;
        `on_long_idle` is called once if none comes within `long_idle_s`."""
        tasks = self.tasks
        if not tasks.empty():
            return tasks.get_nowait()
        if self._reader is not None:
            try:
                return tasks.get(timeout=long_idle_s)
            except queue.Empty:
                on_long_idle()
                return tasks.get()
        while tasks.empty():
            # (another thread may be reading: one that a task left behind, in a get)
            if self._lead_or_wait(True, lambda: not tasks.empty(), None):
                try:
                    self._read_until_task(on_long_idle, long_idle_s)
                finally:
                    self._let_go()
        return tasks.get_nowait()

    def _read_until_task(self, on_long_idle: Callable[[], None], long_idle_s: float) -> None:
        tasks = self.tasks
        poll_frame = self._poll_frame
        started = time.monotonic()
        if self._spin_next and self._spin_s:
            ready = self._poll.poll
            end = time.perf_counter() + self._spin_s
            while time.perf_counter() < end:
                if ready(0):
                    while (frame := poll_frame()) is not None:
                        self._dispatch(frame)
                    if not tasks.empty():
                        return
        timeout_ms: Optional[int] = max(1, int(long_idle_s * 1000))
        while tasks.empty():
            if not self._idle_poll.poll(timeout_ms):
                on_long_idle()
                timeout_ms = None
                continue
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            while (frame := poll_frame()) is not None:
                self._dispatch(frame)
        self._spin_next = time.monotonic() - started <= self._spin_s

    # ---- waiting for a reply ---------------------------------------------------------

    def wait_for(self, done: Callable[[], bool], timeout: Optional[float]) -> bool:
        """(any thread) Read, or wait for the reading thread, until `done()`; False if `timeout`
        seconds passed first. On the main thread a cancel of its task raises KeyboardInterrupt."""
        deadline = None if timeout is None else time.monotonic() + timeout
        main = threading.get_ident() == self.main_ident
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if not self._lead_or_wait(main, done, remaining):
                continue
            interrupted = False
            try:
                while not done():
                    if main and self.cancel_due():
                        interrupted = True
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and not self.conn.pending() and (
                            remaining <= 0 or not self._poll.poll(remaining * 1000)):
                        break
                    self._dispatch(self._recv())
            finally:
                self._let_go()
            # (or a SIGINT came while this thread held the connection and left the interrupt to it)
            if interrupted or (main and self.cancel_due()):
                raise KeyboardInterrupt
        return True

    # ---- the SIGINT handler and the reader thread ------------------------------------

    def on_signal(self) -> None:
        """(SIGINT handler, main thread) The head wrote a message to read now (a CancelTask):
        read what has come, unless a reader is at it (it reads it, or reads it as it lets go)."""
        self._unread = True
        if not self.main_reading and self._take_reading(True):
            self._let_go()

    def start_reader_thread(self) -> None:
        """From now on a thread of its own reads (an async or threaded actor's worker)."""
        if self._reader is None:
            self._reader = threading.Thread(target=self.wait_for, args=(lambda: False, None),
                                            name="minicluster-reader", daemon=True)
            self._reader.start()

    # ---- reading ---------------------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            return self.conn.recv_frame()
        except (ConnectionError, OSError, EOFError):
            os._exit(0)  # the head is gone: nothing left to do and nobody to tell

    def _poll_frame(self) -> Optional[bytes]:
        """A frame that has come, without waiting; None if none has."""
        try:
            return self.conn.poll_frame()
        except (ConnectionError, OSError, EOFError):
            os._exit(0)

    def _dispatch(self, frame: bytes) -> None:
        handlers = self.handlers
        for message in decode(frame):
            if type(message) is msg.Exec:  # nearly every message: queued without a handler call
                self.tasks.put(message)
                continue
            handler = handlers.get(type(message))
            if handler is None:
                print(f"minicluster worker: unknown message {type(message).__name__}", file=sys.stderr)
                continue
            handler(message)
        with self._changed:
            if self._waiters:
                self._changed.notify_all()

    def _lead_or_wait(self, main: bool, done: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Become the reader (True), or wait until the reader has dispatched a frame or let go,
        or `timeout` (False)."""
        if self._take_reading(main):
            return True
        with self._changed:  # (the reader notifies and lets go only under this lock: no wake-up is missed)
            if self._take_reading(main):
                return True
            if not done():
                self._waiters += 1
                try:
                    self._changed.wait(timeout)
                finally:
                    self._waiters -= 1
        return False

    def _take_reading(self, main: bool) -> bool:
        """Try to become the reader. On the main thread `main_reading` is set first and cleared
        only after `_reading` is released (`_let_go`): a SIGINT handler that raised in between
        would leave the connection held for good."""
        if not main:
            return self._reading.acquire(False)
        self.main_reading = True
        if self._reading.acquire(False):
            return True
        self.main_reading = False
        return False

    def _let_go(self) -> None:
        """Release `_reading`; before, and again after, read what a SIGINT announced meanwhile
        (its handler leaves that to whoever holds the connection: see the invariants)."""
        main = threading.get_ident() == self.main_ident
        while True:
            if self._unread:
                self._unread = False
                while (frame := self._poll_frame()) is not None:
                    self._dispatch(frame)
            with self._changed:
                self._reading.release()
                if self._waiters:
                    self._changed.notify_all()
            if self._unread and self._reading.acquire(False):
                continue
            if not main:
                return
            self.main_reading = False
            # A SIGINT after the check above, while main_reading was still set, deferred to us.
            if not (self._unread and self._take_reading(True)):
                return

