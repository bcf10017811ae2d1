"""Ray's automatic global garbage collection: a store filling up makes every process collect garbage.

Runs in the head (driver process, under the head's lock); the object directory calls
`store_filling` when a node's store passes PRESSURE of its capacity. An ObjectRef that only a
Python reference cycle still holds (a list that contains itself and a ref, say) keeps its object
in the store until the cycle collector runs, which may be never in a process with gc disabled or
little allocation. So, as Ray does, every worker (msg.CollectGarbage) and the driver run
gc.collect(): the refs such cycles held are released, and their objects freed before the store
has to spill them. At most once per MIN_INTERVAL_S, since a full collection of a large heap
takes a while.
"""

from __future__ import annotations

import gc
import threading
import time

from minicluster._private.head.head_state import HeadState
from minicluster._private.head.messaging import Outbox
from minicluster._private.wire import messages as msg

#: the share of a node's store capacity in use that makes the session collect garbage
#: (Ray starts spilling at 80% too: the collection frees what cycles held before that)
PRESSURE = 0.8
#: the least time between two collections, Ray's global_gc_min_interval_s: a store that stays
#: full of live objects must not make every process walk its heap again and again
MIN_INTERVAL_S = 30.0


class GlobalGC:
    """When the last collection was; asks for the next. See the module docstring."""

    def __init__(self, state: HeadState, outbox: Outbox) -> None:
        self.state = state
        self.outbox = outbox
        self.last = -MIN_INTERVAL_S  #: time.monotonic() of the last collection asked for

    def store_filling(self) -> None:
        now = time.monotonic()
        if now - self.last < MIN_INTERVAL_S:
            return
        self.last = now
        for worker in self.state.workers.values():
            if worker.peer is not None and not worker.dead:
                self.outbox.post(worker.peer, msg.CollectGarbage.new())
        # The driver's own cycles: collected on a thread of its own, not under the head's lock
        # (finalizers of the refs it frees call back into the runtime).
        threading.Thread(target=gc.collect, name="minicluster-gc", daemon=True).start()
