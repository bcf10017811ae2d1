"""The head's lock, and the bookkeeping it settles before anyone reads the head's records.

Runs in the driver process. One re-entrant lock guards every record of the head
(head.py): the driver's threads and the hub thread take it for each entry
point. What it adds to a plain RLock is a queue of deferred work.

Why: a task's round trip ends when the head stores its result and wakes the
get() waiting for it. The rest of settling the task (keeping its lineage,
closing its record into the task history, unpinning its arguments) changes
nothing the caller needs to go on, but while the hub thread did it, the woken
caller waited for the GIL. So the hub defers that rest here (task_flow.py), and
the invariant is:

    whoever takes the lock runs the deferred work first,

so every reader of the head's records sees them settled, exactly as if nothing
had been deferred. Two entry points take the lock without settling, because
they read nothing the deferred work changes: the driver's submit, which settles
once its task is sent (so that work overlaps the worker running that task), and
a get() reading the value it was woken for (head.py, driver.py).
"""

from __future__ import annotations

import _thread
import collections
import sys
import traceback
from typing import Any, Callable


class HeadLock(_thread.RLock):  # type: ignore[misc]
    """The head's RLock; `with lock:` settles the deferred work once it holds the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.deferred: collections.deque = collections.deque()
        self._settling = False
        #: `with lock.unsettled:` takes the lock and leaves the deferred work for later: only for
        #: the two entry points of the module docstring
        self.unsettled = _Unsettled(self)

    def __enter__(self) -> "HeadLock":
        self.acquire()
        if self.deferred and not self._settling:
            self.settle()
        return self

    def defer(self, work: Callable[[], Any]) -> None:
        """Run `work` (lock held) before the next reader of the head's records; the caller holds the lock."""
        self.deferred.append(work)

    def settle(self) -> None:
        """Run the deferred work, oldest first (lock held). A failure is printed, as the hub prints
        a failed message handler's, and the rest still runs: it must not reach an unrelated caller."""
        deferred = self.deferred
        self._settling = True
        try:
            while deferred:
                work = deferred.popleft()
                try:
                    work()
                except Exception:  # noqa: BLE001 - the head's own bug: reported, never raised into user code
                    print("minicluster: internal error in the head's deferred bookkeeping:", file=sys.stderr)
                    traceback.print_exc()
        finally:
            self._settling = False


class _Unsettled:
    __slots__ = ("_lock",)

    def __init__(self, lock: HeadLock) -> None:
        self._lock = lock

    def __enter__(self) -> HeadLock:
        self._lock.acquire()
        return self._lock

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()
