"""Ray's `ray.util.as_completed` and `ray.util.map_unordered`: results as they finish.

Runs in whichever process calls them; plain client code over `wait` and `get`.
Both wait for `chunk_size` refs at a time (wait's num_returns), so a result is
yielded once its chunk is complete; map_unordered submits lazily and keeps at
most `backpressure_size` tasks in flight (Ray's "limit pending tasks" pattern).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

from minicluster import api

DEFAULT_CHUNK_SIZE = 10  #: Ray's defaults
DEFAULT_BACKPRESSURE_SIZE = 100


def _check(chunk_size: int, wait_kwargs: dict) -> None:
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in wait_kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")


def _next_chunk(refs: List[Any], chunk_size: int, yield_obj_refs: bool,
                wait_kwargs: dict) -> Tuple[List[Any], List[Any]]:
    """(the values, or refs, of the next finished chunk; the refs still pending)."""
    done, pending = api.wait(refs, num_returns=min(chunk_size, len(refs)), **wait_kwargs)
    return (done if yield_obj_refs else api.get(done)), pending


def as_completed(refs: Sequence[Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                 **kwargs: Any) -> Iterator[Any]:
    """Yield the values of `refs` (or the refs, with yield_obj_refs=True) as they finish,
    `chunk_size` at a time. Other keyword arguments go to wait() (timeout, fetch_local)."""
    _check(chunk_size, kwargs)
    pending = list(refs)
    while pending:
        values, pending = _next_chunk(pending, chunk_size, yield_obj_refs, kwargs)
        yield from values


def map_unordered(fn: Any, items: Iterable[Any], *, backpressure_size: Optional[int] = DEFAULT_BACKPRESSURE_SIZE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False, **kwargs: Any) -> Iterator[Any]:
    """Run the remote function `fn` on each item and yield the results as they finish, with at
    most `backpressure_size` tasks in flight (None: no limit)."""
    if backpressure_size is not None and backpressure_size <= 0:
        raise ValueError("backpressure_size must be positive.")
    _check(chunk_size, kwargs)
    limit = float("inf") if backpressure_size is None else backpressure_size
    pending: List[Any] = []
    for item in items:
        pending.append(fn.remote(item))
        if len(pending) >= limit:
            values, pending = _next_chunk(pending, chunk_size, yield_obj_refs, kwargs)
            yield from values
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)
