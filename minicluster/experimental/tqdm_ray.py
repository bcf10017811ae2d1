"""Ray's `ray.experimental.tqdm_ray`: progress bars from tasks and actors, drawn by the driver.

    from minicluster.experimental import tqdm_ray

    @ray.remote
    def work(n):
        for _ in tqdm_ray.tqdm(range(n), desc="work"):
            ...

Runs in any process. In a worker a bar draws nothing itself: it writes its state
(at most once per `flush_interval_s`, and when it closes) as one line on the worker's
stdout, which the driver's log monitor turns into a bar; in the driver it updates the
driver's bars directly. The driver draws every bar of the session in one place
(_private/observe/progress_bars.py), so bars of parallel tasks do not overwrite each
other; without a terminal they come out as plain lines. Supports the subset of tqdm's
arguments Ray's does: iterable, desc, total, unit, position, flush_interval_s. Unlike
Ray's, a bar over an iterable closes when the iterable is exhausted (as tqdm's does), so
its final count is shown.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Dict, Iterable, Iterator, Optional

from minicluster._private.client import context
from minicluster._private.observe import progress_bars

safe_print = progress_bars.safe_print


class tqdm:  # noqa: N801 - tqdm's (and Ray's) name
    """A progress bar shown on the driver, wherever it is updated."""

    DEFAULT_FLUSH_INTERVAL_SECONDS = 1.0

    def __init__(self, iterable: Optional[Iterable] = None, desc: Optional[str] = None, total: Optional[int] = None,
                 unit: Optional[str] = None, position: Optional[int] = None,
                 flush_interval_s: Optional[float] = None) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self._desc = desc or ""
        self._total = total
        self._unit = unit or "it"
        self._pos = position or 0
        self._uuid = uuid.uuid4().hex
        self._x = 0
        self._closed = False
        self._flush_interval_s = self.DEFAULT_FLUSH_INTERVAL_SECONDS if flush_interval_s is None else flush_interval_s
        self._last_flush = 0.0
        self._start = time.time()  #: the driver measures the rate from here

    def set_description(self, desc: str) -> None:
        self._desc = desc
        self._send()

    def update(self, n: int = 1) -> None:
        self._x += n
        self._send()

    def refresh(self) -> None:
        self._send()

    def close(self) -> None:
        self._closed = True
        self._send(force=True)

    @property
    def total(self) -> Optional[int]:
        return self._total

    @total.setter
    def total(self, total: int) -> None:
        self._total = total

    @property
    def n(self) -> int:
        return self._x

    @n.setter
    def n(self, n: int) -> None:
        self._x = n

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise ValueError("No iterable provided")
        for item in self._iterable:
            self.update(1)
            yield item
        self.close()  # as tqdm does at the end of the iterable (so the bar's last state is shown)

    def _state(self) -> Dict[str, Any]:
        return {"x": self._x, "pos": self._pos, "desc": self._desc, "total": self._total, "unit": self._unit,
                "pid": os.getpid(), "uuid": self._uuid, "closed": self._closed, "start": self._start}

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self._flush_interval_s:
            return
        self._last_flush = now
        if context.in_worker():
            # One write of one line: threads of an actor printing at the same time cannot split it.
            try:
                os.write(1, (progress_bars.encode_state(self._state()) + "\n").encode("utf-8", "replace"))
            except OSError:
                pass
        else:
            progress_bars.manager().update(self._state(), "driver", "")


__all__ = ["safe_print", "tqdm"]
