"""Ray's `ray.util.multiprocessing.Pool`: the standard library's Pool API on actors.

    from minicluster.util.multiprocessing import Pool   # was: from multiprocessing import Pool

The pool's "processes" are `processes` actors (`_PoolActor`, num_cpus=0 unless
`ray_remote_args` say otherwise), created and pinged in the constructor, so an
`initializer` has run in each of them when Pool() returns. Work goes to them in chunks,
round robin; each chunk is one actor call returning the chunk's results, where an item
that raised is carried back as its exception (`_Failed`) so the rest of the chunk's
results survive. This module runs in the process that uses the pool (usually the driver);
the chunks run in the actors' workers.

What follows Ray rather than the standard library, on purpose:
- `imap` / `imap_unordered` hand back an item's exception as a value instead of raising it
  (Ray's tests rely on this); `map`, `apply`, `AsyncResult.get` raise the original exception.
- A chunk whose actor died (terminate(), a crash) fails as a whole: get() raises Ray's error
  (ActorDiedError, a RayError) for it.
- `context` is not supported (there is no fork/spawn choice to make); it is refused with a
  warning, as Ray does.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
import warnings
from multiprocessing import TimeoutError
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from minicluster import api
from minicluster._private.common.config import INLINE_THRESHOLD as _INLINE_BYTES
from minicluster.exceptions import RayError


class _Failed:
    """An item whose function raised: its exception, carried in the chunk's result list."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _PoolActor:
    """One of the pool's processes."""

    def __init__(self, initializer: Optional[Callable] = None, initargs: Optional[Sequence] = None) -> None:
        if initializer is not None:
            initializer(*(initargs or ()))

    def ping(self) -> None:
        """Answered once the constructor (the initializer) has run."""

    def run_chunk(self, func: Callable, mode: str, items: List[Any]) -> List[Any]:
        """Each item's result (a _Failed for one that raised). `mode`: "map" calls func(item),
        "star" func(*item), "call" func(*args, **kwargs) of an (args, kwargs) item."""
        results: List[Any] = []
        for item in items:
            try:
                if mode == "map":
                    results.append(func(item))
                elif mode == "star":
                    results.append(func(*item))
                else:
                    results.append(func(*item[0], **item[1]))
            except Exception as error:  # noqa: BLE001 - carried back to the caller, raised there
                results.append(_Failed(error))
        return results


def _chunk_values(ref: Any, size: int) -> List[Any]:
    """A finished chunk's results, a _Failed for each item that raised; a chunk whose call
    itself failed (its actor died) is that error for each of its items. (An exception an item
    returns, rather than raises, is a value like any other.)"""
    try:
        return api.get(ref)
    except RayError as error:
        return [_Failed(error)] * size


class AsyncResult:
    """The pending result of apply_async / map_async / starmap_async."""

    def __init__(self, chunks: List[Tuple[Any, int]], single: bool, callback: Optional[Callable] = None,
                 error_callback: Optional[Callable] = None) -> None:
        self._chunks = chunks  #: (ref, number of items) of each chunk, in submission order
        self._single = single
        self._values: Optional[List[Any]] = None  #: every item's value or _Failed, once all are done
        self._handled: Optional[threading.Event] = None
        if callback is not None or error_callback is not None:
            # As in the standard library, callbacks run on a thread of this process, once all
            # is done (error_callback: at the first failure, in the order they finish).
            self._handled = threading.Event()
            threading.Thread(target=self._run_callbacks, args=(callback, error_callback),
                             name="minicluster-pool-callbacks", daemon=True).start()

    def _refs(self) -> List[Any]:
        return [ref for ref, _ in self._chunks]

    def _run_callbacks(self, callback: Optional[Callable], error_callback: Optional[Callable]) -> None:
        try:
            failed = False
            pending = {ref: size for ref, size in self._chunks}
            while pending:
                try:
                    done, _ = api.wait(list(pending), num_returns=1)
                except RayError:  # the session ended first: nobody is left to call back
                    return
                values = _chunk_values(done[0], pending.pop(done[0]))
                error = next((v.error for v in values if isinstance(v, _Failed)), None)
                if error is not None and not failed:
                    failed = True
                    if error_callback is not None:
                        error_callback(error)
            if not failed and callback is not None:
                values = self._collect()
                callback(values[0] if self._single else values)
        finally:
            assert self._handled is not None
            self._handled.set()

    def _collect(self) -> List[Any]:
        if self._values is None:
            self._values = [v for ref, size in self._chunks for v in _chunk_values(ref, size)]
        return self._values

    def wait(self, timeout: Optional[float] = None) -> None:
        """Return once the result is ready (callbacks included), or after `timeout` seconds."""
        if self._handled is not None:
            self._handled.wait(timeout)
        elif self._chunks:
            api.wait(self._refs(), num_returns=len(self._chunks), timeout=timeout)

    def ready(self) -> bool:
        if self._handled is not None:
            return self._handled.is_set()
        if not self._chunks:
            return True
        done, _ = api.wait(self._refs(), num_returns=len(self._chunks), timeout=0)
        return len(done) == len(self._chunks)

    def successful(self) -> bool:
        """Whether no item raised; ValueError if the result is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not any(isinstance(v, _Failed) for v in self._collect())

    def get(self, timeout: Optional[float] = None) -> Any:
        """The result (a list, or apply's single value); raises the first item's exception in
        submission order; multiprocessing.TimeoutError if not ready within `timeout`."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        values = self._collect()
        for value in values:
            if isinstance(value, _Failed):
                raise value.error
        return values[0] if self._single else values


class _IMapIterator:
    """imap / imap_unordered: one chunk in flight per actor, the next sent as one finishes."""

    def __init__(self, pool: "Pool", func: Callable, iterable: Iterable, chunksize: int, ordered: bool) -> None:
        self._pool = pool
        self._func = func
        self._items = iter(iterable)  # TypeError "object is not iterable" here, as Ray
        self._chunksize = max(1, chunksize or 1)
        self._ordered = ordered
        self._exhausted = False
        self._chunks: List[Tuple[Any, int]] = []  #: every chunk sent, in order
        self._in_flight: Dict[Any, int] = {}  #: ref -> index in _chunks, not yet finished
        self._finished: Dict[int, List[Any]] = {}  #: index -> values, finished but not yet handed out
        self._next_chunk = 0  #: (ordered) the chunk whose values come next
        self._buffer: List[Any] = []
        for _ in range(len(pool._actors)):
            self._send_next()

    def _send_next(self) -> None:
        if self._exhausted:
            return
        chunk = list(itertools.islice(self._items, self._chunksize))
        if len(chunk) < self._chunksize:
            self._exhausted = True
        if chunk:
            ref = self._pool._send(self._func, "map", chunk)
            self._in_flight[ref] = len(self._chunks)
            self._chunks.append((ref, len(chunk)))

    def _wait_one(self, timeout: Optional[float]) -> None:
        done, _ = api.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if not done:
            raise TimeoutError
        index = self._in_flight.pop(done[0])
        # as Ray's imap: an item that raised is handed out as its exception, not raised
        self._finished[index] = [v.error if isinstance(v, _Failed) else v
                                 for v in _chunk_values(done[0], self._chunks[index][1])]
        self._send_next()

    def __iter__(self) -> "_IMapIterator":
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: Optional[float] = None) -> Any:
        """The next result (an exception object for an item that raised); TimeoutError after
        `timeout` seconds without one."""
        if self._buffer:
            return self._buffer.pop(0)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._ordered:
            while self._next_chunk not in self._finished:
                if self._next_chunk >= len(self._chunks):
                    raise StopIteration
                self._wait_one(_left(deadline))
            self._buffer = self._finished.pop(self._next_chunk)
            self._next_chunk += 1
        else:
            if not self._finished:
                if not self._in_flight:
                    raise StopIteration
                self._wait_one(_left(deadline))
            self._buffer = self._finished.pop(next(iter(self._finished)))
        return self._buffer.pop(0)


def _left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _looks_large(items: List[Any]) -> bool:
    """Whether a chunk's items are, by their shallow sizes, more than travels inside a message
    (bytes, strings and numpy arrays report their data; an argument tuple or keyword dict is
    looked into once; other containers are undercounted and just take the plain path)."""
    total = 0
    for item in items:
        total += sys.getsizeof(item)
        if type(item) is tuple:
            for part in item:
                total += sys.getsizeof(part)
                if type(part) is tuple or type(part) is dict:
                    total += sum(sys.getsizeof(x) for x in (part.values() if type(part) is dict else part))
        if total > _INLINE_BYTES:
            return True
    return False


def _consume(terminations: List[Any]) -> None:
    """Take the results of finished __ray_terminate__ calls: each is the "actor exited on purpose"
    error, expected here, which would otherwise be reported as unhandled when its ref is dropped."""
    for ref in terminations:
        try:
            api.get(ref)
        except RayError:
            pass


class Pool:
    """A pool of actor processes with multiprocessing.Pool's methods.

    `processes` defaults to the cluster's CPUs (a session is started with that many if none
    runs; `ray_address` joins a Cluster instead). `ray_remote_args` are the actors' options.
    """

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable] = None,
                 initargs: Optional[Iterable] = None, maxtasksperchild: Optional[int] = None,
                 context: Any = None, ray_address: Optional[str] = None,
                 ray_remote_args: Optional[Dict[str, Any]] = None) -> None:
        if context is not None:
            warnings.warn("Pool(context=...) is not supported: the pool's processes are actors "
                          "(there is no fork/spawn choice); the argument is not used", stacklevel=2)
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._closed = False
        self._initializer = initializer
        self._initargs = tuple(initargs) if initargs is not None else ()
        self._maxtasksperchild = maxtasksperchild
        self._actor_class = api.remote(num_cpus=0)(_PoolActor).options(**(ray_remote_args or {}))
        self._stopping: List[Any] = []  #: refs of __ray_terminate__ calls of retired actors
        self._round_robin = 0
        processes = self._start_session(processes, ray_address)
        #: [actor, chunks sent to it] per process
        self._actors: List[List[Any]] = [[self._new_actor(), 0] for _ in range(processes)]
        api.get([actor.ping.remote() for actor, _ in self._actors])

    @staticmethod
    def _start_session(processes: Optional[int], ray_address: Optional[str]) -> int:
        if not api.is_initialized():
            if ray_address not in (None, "local"):
                api.init(address=ray_address)
            else:
                api.init(num_cpus=processes)
        cpus = int(api.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = cpus
        if processes <= 0:
            raise ValueError("Processes in the pool must be >0.")
        if cpus < processes:
            raise ValueError(f"Tried to start a pool with {processes} processes on an existing ray cluster, "
                             f"but there are only {cpus} CPUs in the ray cluster.")
        return processes

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._initializer, self._initargs)

    # ---- sending work ---------------------------------------------------------------

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _send(self, func: Callable, mode: str, items: List[Any]) -> Any:
        """One chunk to the next actor in turn (see _PoolActor.run_chunk); an actor that reached
        maxtasksperchild chunks is retired after it (it exits once its calls are done) and replaced."""
        entry = self._actors[self._round_robin]
        self._round_robin = (self._round_robin + 1) % len(self._actors)
        payload: Any = items
        if _looks_large(items):
            # put() pickles the chunk once; as a plain argument of .remote() a large chunk is
            # pickled three times (to size the arguments, to size it alone, to store it)
            payload = api.put(items)
        ref = entry[0].run_chunk.remote(func, mode, payload)
        entry[1] += 1
        if self._maxtasksperchild is not None and entry[1] >= self._maxtasksperchild:
            self._retire(entry[0])
            entry[0], entry[1] = self._new_actor(), 0
        return ref

    def _retire(self, actor: Any) -> None:
        if self._stopping:  # forget the retired actors that have exited by now
            done, self._stopping = api.wait(self._stopping, num_returns=len(self._stopping), timeout=0)
            _consume(done)
        self._stopping.append(actor.__ray_terminate__.remote())

    def _chunked(self, func: Callable, iterable: Iterable, chunksize: Optional[int],
                 star: bool) -> List[Tuple[Any, int]]:
        items = list(iterable)
        if chunksize is None:
            chunksize = -(-len(items) // (len(self._actors) * 4))  # the standard library's choice
        chunksize = max(1, chunksize)
        chunks = []
        for start in range(0, len(items), chunksize):
            part = items[start:start + chunksize]
            chunks.append((self._send(func, "star" if star else "map", part), len(part)))
        return chunks

    # ---- the standard library's methods ---------------------------------------------

    def apply(self, func: Callable, args: Sequence = (), kwds: Optional[Dict[str, Any]] = None, *,
              kwargs: Optional[Dict[str, Any]] = None) -> Any:
        """func(*args, **kwds) in one of the processes; its result (or its exception, raised).
        `kwargs` is Ray's name for `kwds`."""
        return self.apply_async(func, args, kwds, kwargs=kwargs).get()

    def apply_async(self, func: Callable, args: Sequence = (), kwds: Optional[Dict[str, Any]] = None,
                    callback: Optional[Callable] = None, error_callback: Optional[Callable] = None, *,
                    kwargs: Optional[Dict[str, Any]] = None) -> AsyncResult:
        self._check_running()
        call = (tuple(args or ()), dict(kwds or kwargs or {}))
        return AsyncResult([(self._send(func, "call", [call]), 1)], True, callback, error_callback)

    def map(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> List[Any]:
        """[func(x) for x in iterable], in chunks spread over the processes; raises the first
        item's exception."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                  callback: Optional[Callable] = None, error_callback: Optional[Callable] = None) -> AsyncResult:
        self._check_running()
        return AsyncResult(self._chunked(func, iterable, chunksize, star=False), False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None) -> List[Any]:
        """[func(*args) for args in iterable]."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: Optional[int] = None,
                      callback: Optional[Callable] = None, error_callback: Optional[Callable] = None) -> AsyncResult:
        self._check_running()
        return AsyncResult(self._chunked(func, iterable, chunksize, star=True), False, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator[Any]:
        """Results in order, lazily: one chunk in flight per process."""
        self._check_running()
        return _IMapIterator(self, func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator[Any]:
        """Results as they finish, lazily: one chunk in flight per process."""
        self._check_running()
        return _IMapIterator(self, func, iterable, chunksize, ordered=False)

    # ---- ending ---------------------------------------------------------------------

    def close(self) -> None:
        """No more work; the processes exit once the work already sent is done (see join)."""
        if self._closed:
            return
        self._closed = True
        for actor, _ in self._actors:
            self._stopping.append(actor.__ray_terminate__.remote())

    def terminate(self) -> None:
        """Stop now: the processes are killed, and work still running fails."""
        self._closed = True
        for actor, _ in self._actors:
            api.kill(actor)
        if self._stopping:  # close() came first: its __ray_terminate__ calls end now, with the kill
            self.join()

    def join(self) -> None:
        """Wait for the processes of a closed pool to exit."""
        if not self._closed:
            raise ValueError("Pool is still running")
        if self._stopping:
            api.wait(self._stopping, num_returns=len(self._stopping))
            _consume(self._stopping)
        self._stopping = []

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()
