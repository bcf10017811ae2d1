"""Folding repeated lines from many workers into one, as Ray's driver does (RAY_DEDUP_LOGS).

Used by the driver's log monitor (client/log_monitor.py), one folder per stream
(stdout, stderr); pure bookkeeping, no I/O. When a hundred workers print the
same message, the terminal shows it once, then a summary:

    (load pid=4242, node=node-0) loading shard 3 of 100
    (load pid=4251, node=node-1) loading shard 97 of 100 [repeated 99x across cluster]

The rules are Ray's, so a Ray user sees the same terminal:

* Two lines are "the same" when they are equal once every word holding a digit
  (or a 0x... hex number) is left out: ids, pids, counters and timings differ
  between workers while the message does not. A line with nothing left is
  never folded.
* The first time a line is seen it is printed at once. The same line from the
  same worker again is printed too (a loop's output is not folded); once a
  second worker has printed it, further copies (from anyone) are held and
  counted instead.
* A window (RAY_DEDUP_LOGS_AGG_WINDOW_S, 5 s) after a line was first seen, the
  held copies are summed up: the latest copy with "[repeated Nx across
  cluster]", or that copy plainly if it was the only one; the line then starts
  a new window. At the end of the session whatever is held is printed.
* RAY_DEDUP_LOGS=0 turns folding off; lines matching RAY_DEDUP_LOGS_ALLOW_REGEX
  are never folded, lines matching RAY_DEDUP_LOGS_SKIP_REGEX are dropped.

The first summary line says once how to turn folding off.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Dict, List, Optional, Pattern, Set

_HAS_NUMBER = re.compile(r"\d|0x[0-9a-fA-F]")

HOW_TO_TURN_OFF = " (repeated lines are folded, as Ray does; set RAY_DEDUP_LOGS=0 to print each one)"


def fold_key(text: str) -> str:
    """What two lines must share to count as the same: their words without digits."""
    return " ".join(word for word in text.split() if not _HAS_NUMBER.search(word))


class _Held:
    """One line being watched: when its window began, who printed it, and the copies held back."""

    __slots__ = ("since", "sources", "count", "latest")

    def __init__(self, since: float, source: int) -> None:
        self.since = since
        self.sources: Set[int] = {source}
        self.count = 0  #: copies held back since the window began
        self.latest = ""  #: the newest held copy, with its prefix


class LineFolder:
    """Decides which worker lines to print now and which to fold into a summary later."""

    def __init__(self, window_s: float, allow: Optional[Pattern[str]] = None, skip: Optional[Pattern[str]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.allow = allow
        self.skip = skip
        self.clock = clock
        self.watched: Dict[str, _Held] = {}  #: fold key -> its state, oldest window first
        self.told = False  #: the hint on how to turn folding off was printed

    def add(self, source: int, prefix: str, text: str) -> List[str]:
        """A line `text` printed by worker `source`; returns what to print now (with the prefix)."""
        line = f"{prefix} {text}"
        if self.allow is not None and self.allow.search(text):
            return [line]
        if self.skip is not None and self.skip.search(text):
            return []
        key = fold_key(text)
        if not key:
            return [line]
        held = self.watched.get(key)
        if held is None:
            self.watched[key] = _Held(self.clock(), source)
            return [line]
        held.sources.add(source)
        if len(held.sources) == 1:
            return [line]  # only this worker has printed it so far: a loop's output is kept
        held.count += 1
        held.latest = line
        return []

    def expire(self) -> List[str]:
        """The summaries of lines whose window has ended."""
        now = self.clock()
        out: List[str] = []
        watched = self.watched
        while watched:
            key, held = next(iter(watched.items()))
            if now - held.since < self.window_s:
                break  # (ordered by window start: the rest are younger)
            del watched[key]
            if held.count == 0:
                continue
            out.append(self._summary(held))
            if held.count > 1:  # still busy: watch it for another window
                held.since, held.count = now, 0
                watched[key] = held
        return out

    def flush(self) -> List[str]:
        """Everything still held (the session ends)."""
        out = [self._summary(held) for held in self.watched.values() if held.count]
        self.watched.clear()
        return out

    def _summary(self, held: _Held) -> str:
        if held.count == 1:
            return held.latest
        hint = ""
        if not self.told:
            self.told = True
            hint = HOW_TO_TURN_OFF
        return f"{held.latest} [repeated {held.count}x across cluster]{hint}"
