"""Ray's `ray.util.ActorPool`: hand work to a fixed set of actors, one call per idle actor.

Runs in whichever process uses it (the driver, or a task or actor holding the handles);
it is plain client code over `.remote()`, `wait` and `get`, with no runtime support.

The pool keeps each actor either idle or busy with exactly one submitted call. A value
submitted while every actor is busy waits in a backlog and is sent when a result is
collected (results are only collected by get_next / get_next_unordered, so an actor is
"busy" until its result was taken, as in Ray). Results come back in submission order
(get_next, map) or as they finish (get_next_unordered, map_unordered).

Faults, as Ray: an actor whose call fails with ActorDiedError leaves the pool and the
error is raised from get_next; the rest of the work goes on with the actors left (a pool
whose last actor died keeps its backlog, and has_next() turns False).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from minicluster import api
from minicluster.exceptions import ActorDiedError
from minicluster.object_ref import ObjectRef

_TIMED_OUT = "Timed out waiting for result"


class ActorPool:
    """A fixed pool of actors: map / submit work to whichever is idle, collect the results."""

    def __init__(self, actors: list) -> None:
        self._idle_actors: List[Any] = list(actors)
        #: submission index -> (what fn returned: a ref or a list of refs, the actor working on it)
        self._busy: Dict[int, Tuple[Any, Any]] = {}
        self._backlog: List[Tuple[Callable, Any]] = []  #: (fn, value) submitted while no actor was idle
        self._next_index = 0  #: index the next submitted call gets
        self._next_ordered = 0  #: index get_next() returns next

    @property
    def _pending_submits(self) -> List[Tuple[Callable, Any]]:
        """Ray's name for the backlog (its tests read it)."""
        return self._backlog

    # ---- submitting -----------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Run `fn(actor, value)` (which returns an ObjectRef, or a list of them) on an idle actor,
        or once one is free."""
        if not self._idle_actors:
            self._backlog.append((fn, value))
            return
        actor = self._idle_actors.pop()
        self._busy[self._next_index] = (fn(actor, value), actor)
        self._next_index += 1

    def map(self, fn: Callable[[Any, Any], Any], values: Any) -> Any:
        """Submit `fn(actor, v)` for every v now; iterate over the results in order."""
        self._drop_unclaimed(ordered=True)
        for value in values:
            self.submit(fn, value)

        def results() -> Any:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Any) -> Any:
        """As map(), but results come in the order they finish."""
        self._drop_unclaimed(ordered=False)
        for value in values:
            self.submit(fn, value)

        def results() -> Any:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drop_unclaimed(self, ordered: bool) -> None:
        """Before a new map, as Ray: results of earlier submits nobody took are discarded. map()
        gives up the calls still running (their actors count as idle again); map_unordered()
        waits for them."""
        while self.has_next():
            if not ordered:
                self.get_next_unordered()
                continue
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # ---- collecting -----------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a submitted call's result has not been taken yet."""
        return bool(self._busy)

    def has_free(self) -> bool:
        """Whether an actor is idle and nothing waits in the backlog."""
        return bool(self._idle_actors) and not self._backlog

    def get_next(self, timeout: Optional[float] = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to `timeout` seconds.

        TimeoutError when it is not ready in time; with ignore_if_timedout=True that call is
        given up (its actor is counted idle again) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_ordered not in self._busy:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        index = self._next_ordered
        out, actor = self._busy[index]
        if timeout is not None and not _ready([out], timeout):
            if not ignore_if_timedout:
                raise TimeoutError(_TIMED_OUT)
            del self._busy[index]
            self._next_ordered += 1
            self._release(actor, alive=True)
            raise TimeoutError(f"{_TIMED_OUT}. The task {out} has been ignored.")
        del self._busy[index]
        self._next_ordered += 1
        return self._take(out, actor)

    def get_next_unordered(self, timeout: Optional[float] = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever result is ready first, waiting up to `timeout` seconds.

        TimeoutError when none is ready in time; with ignore_if_timedout=True the oldest call
        still running is given up first (Ray 2.60 fails with UnboundLocalError there).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        keys = {_key(out): index for index, (out, _) in self._busy.items()}
        ready = _first_ready([out for out, _ in self._busy.values()], timeout)
        if ready is None:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMED_OUT)
            index = min(self._busy)
        else:
            index = keys[_key(ready)]
        out, actor = self._busy.pop(index)
        self._next_ordered = max(self._next_ordered, index + 1)
        if ready is None:
            self._release(actor, alive=True)
            raise TimeoutError(f"{_TIMED_OUT}. The task {out} has been ignored.")
        return self._take(out, actor)

    def _take(self, out: Any, actor: Any) -> Any:
        """The value of a finished call; its actor goes back to idle unless it died."""
        alive = True
        try:
            return api.get(out)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._release(actor, alive)

    def _release(self, actor: Any, alive: bool) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._backlog and self._idle_actors:
            self.submit(*self._backlog.pop(0))

    # ---- changing the pool ----------------------------------------------------------

    def push(self, actor: Any) -> None:
        """Add an actor; it takes the oldest backlog entry at once if there is one."""
        if any(actor == a for a in self._idle_actors) or any(actor == a for _, a in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._release(actor, alive=True)

    def pop_idle(self) -> Optional[Any]:
        """Remove and return an idle actor, or None when none is free (see has_free)."""
        return self._idle_actors.pop() if self.has_free() else None


def _key(out: Any) -> Any:
    """A hashable key for what fn returned (a list of refs for a multi-return method)."""
    return tuple(out) if isinstance(out, list) else out


def _refs(out: Any) -> List[ObjectRef]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _ready(outs: List[Any], timeout: float) -> bool:
    refs = [ref for out in outs for ref in _refs(out)]
    done, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
    return len(done) == len(refs)


def _first_ready(outs: List[Any], timeout: Optional[float]) -> Optional[Any]:
    """The first of `outs` that finished within `timeout`, or None. A multi-return call is
    stood for by its first ref: a task's returns are all stored when it finishes."""
    by_first = {_refs(out)[0]: out for out in outs}
    done, _ = api.wait(list(by_first), num_returns=1, timeout=timeout)
    return by_first[done[0]] if done else None
