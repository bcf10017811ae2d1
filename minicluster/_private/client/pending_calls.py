"""`max_pending_calls`: the calls this process submitted to an actor and that are not done yet.

Runs in whichever process calls an actor created with `max_pending_calls=N` (the
driver, or a worker holding a handle). As in Ray, the limit is per calling process
and actor (every handle of that actor in this process counts together); a call
is pending from its submission until it finishes (its result or error is in).

The head is not told about the limit. This process keeps the ids of its calls
still believed pending; only when they reach the limit does it ask the head
which of them are still open (one query), forget the finished ones, and refuse
the new call with PendingCallsLimitExceeded if the limit is still reached. So an
actor that keeps up costs one query per N calls, not one per call.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List

from minicluster.exceptions import PendingCallsLimitExceeded


class PendingCalls:
    """Per process: for each limited actor, its calls from here not known to be finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # threaded actors call from several threads at once
        self._by_actor: Dict[bytes, List[bytes]] = {}

    def admit(self, actor_id: bytes, task_id: bytes, limit: int, still_open: Callable[[List[bytes]], List[bytes]],
              refusal: Callable[[], str]) -> None:
        """Count the call `task_id` as pending, or raise PendingCallsLimitExceeded (message
        `refusal()`) if `limit` calls from here are still open. `still_open(ids)` asks the
        head which of `ids` are not finished."""
        with self._lock:
            calls = self._by_actor.setdefault(actor_id, [])
            if len(calls) >= limit:
                calls[:] = still_open(list(calls))
                if len(calls) >= limit:
                    raise PendingCallsLimitExceeded(refusal())
            calls.append(task_id)
