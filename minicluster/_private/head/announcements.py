"""What the head tells the user on the driver's terminal while a job runs, as Ray's driver does.

Runs in the driver process, under the head's lock: the task flow announces
retries, recovery the deaths of workers that were running something, and the
object directory a failed task's result freed without anyone reading it:

    minicluster: Task flaky failed. There are 2 retries remaining, so the task will be retried. Error: ...
    minicluster: A worker died or was killed while executing task crunch (pid=4242, node=node-1): exit code 3
    Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): ray::boom() ...

The last is Ray's wording, word for word: it fires when the last reference to
a failed task's result goes and the error was never read (not by get, not by
wait, not as another task's argument, whose own error then carries it on).
Ray prints it in the process that owned the result; here the head prints
every one in the driver.

One line each, and at most LIMIT lines per WINDOW_S: a thousand failing tasks
must not bury the program's own output. What is held back is counted and
summed up in one line when the window ends (`minicluster list tasks` has
every attempt).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

from minicluster._private.head.flow_interfaces import Timers
from minicluster._private.store.serialization import deserialize

LIMIT = 10
WINDOW_S = 10.0
UNHANDLED = "Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): "


class Announcer:
    def __init__(self, timers: Timers, error_blob_of: Callable[[bytes, Any], bytes]) -> None:
        self.timers = timers
        self.error_blob_of = error_blob_of  #: HeadState.error_blob_of
        self.closed = False  #: the session is shutting down: what it frees then is not news
        self._window_start = 0.0
        self._said = 0  #: lines printed in this window
        self._held = 0  #: lines held back in this window
        self._summary_timer: Any = None

    def retry(self, name: str, retries_left: int, error: str) -> None:
        left = "infinite" if retries_left < 0 else str(retries_left)
        self._say(f"minicluster: Task {name} failed. There are {left} retries remaining, so the task will be "
                  f"retried. Error: {error}")

    def worker_died(self, what: str, pid: int, node: str, reason: str) -> None:
        self._say(f"minicluster: A worker died or was killed while executing {what} (pid={pid}, node={node}): "
                  f"{reason}")

    def unhandled_error(self, object_id: bytes, entry: Any) -> None:
        """The object directory frees a failed result nobody read (ObjectEntry.unhandled)."""
        if self.closed or "RAY_IGNORE_UNHANDLED_ERRORS" in os.environ \
                or "MINICLUSTER_IGNORE_UNHANDLED_ERRORS" in os.environ:
            return
        try:
            error, _ = deserialize(self.error_blob_of(object_id, entry))
        except Exception as exc:  # noqa: BLE001 - the error itself cannot be loaded: say that instead
            error = f"(the error of object {object_id.hex()} could not be loaded: {type(exc).__name__}: {exc})"
        self._say(f"{UNHANDLED}{error}")

    def _say(self, line: str) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if now - self._window_start >= WINDOW_S:
            self._window_start, self._said = now, 0
        if self._said >= LIMIT:
            self._held += 1
            if self._summary_timer is None:
                self._summary_timer = self.timers.call_later(self._window_start + WINDOW_S - now, self._sum_up)
            return
        self._said += 1
        _print(line)

    def _sum_up(self) -> None:
        self._summary_timer = None
        held, self._held = self._held, 0
        if held and not self.closed:
            _print(f"minicluster: {held} more task retries, worker deaths or unhandled errors in the last "
                   f"{WINDOW_S:g} s were not shown (`minicluster list tasks` lists every attempt)")


def _print(line: str, stream: Optional[Any] = None) -> None:
    stream = stream or sys.stderr
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # the driver's terminal is gone or closed
