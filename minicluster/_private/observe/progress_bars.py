"""Progress bars of tasks and actors (experimental.tqdm_ray), drawn by the driver.

Runs in the driver process. A tqdm_ray bar in a worker does not draw anything: it
writes its state as one magic line on the worker's stdout (`STATE_PREFIX` + JSON),
the log monitor (client/log_monitor.py) reads it from the worker's log file like
any output and hands it here instead of printing it; a bar made in the driver itself
calls `BarManager.update` directly. One manager then draws every bar of the session,
so bars of many workers never write over each other.

On a terminal (stderr is a tty) the open bars occupy the last lines of the screen and
are redrawn in place, each process's bars together in the order of their `position`;
other output (workers' lines, the driver's print) is written
above them by `write_lines`, which clears the bars, writes, and redraws them. A closed
bar leaves its last state as an ordinary line. Anywhere else (a file, a pipe, CI) the
bars are plain lines, without escape sequences: one when a bar appears, at most one
every PLAIN_INTERVAL_S while it moves, and one when it closes.
"""

from __future__ import annotations

import builtins
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO, Tuple

from minicluster._private.common import config

STATE_PREFIX = "__minicluster_tqdm__ "  #: starts a worker's bar-state line
PLAIN_INTERVAL_S = 5.0  #: without a terminal, at most one line per bar this often while it moves
_BAR_WIDTH = 20


@dataclass
class _Bar:
    label: str  #: where it comes from ("(task pid=.., node=..) ") + its description
    state: Dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    last_plain: float = 0.0  #: when its last plain line was written (no terminal)


def encode_state(state: Dict[str, Any]) -> str:
    """The line a worker writes for one bar state."""
    return STATE_PREFIX + json.dumps(state, separators=(",", ":"))


def decode_state(text: str) -> Optional[Dict[str, Any]]:
    """A bar state from a worker's output line, or None if the line is not one."""
    if not text.startswith(STATE_PREFIX):
        return None
    try:
        state = json.loads(text[len(STATE_PREFIX):])
    except ValueError:
        return None
    return state if isinstance(state, dict) and "uuid" in state else None


class BarManager:
    """Every open bar of the session, drawn on the driver's stderr."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self._stream = stream
        self.lock = threading.RLock()
        self.bars: Dict[Tuple[Any, str], _Bar] = {}  #: (origin, bar uuid) -> bar, in the order they appeared
        self.origins: Dict[Any, int] = {}  #: process (origin) -> its rank: its bars are drawn together
        self.drawn = 0  #: bar lines currently on the screen, below the cursor's line

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def is_terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    # ---- bar states -----------------------------------------------------------------

    def update(self, state: Dict[str, Any], origin: Any, prefix: str) -> None:
        """A bar's new state (`origin` tells processes apart; `prefix` names where it runs)."""
        with self.lock:
            key = (origin, str(state.get("uuid")))
            bar = self.bars.get(key)
            label = prefix + str(state.get("desc") or "")
            if bar is None:
                bar = self.bars[key] = _Bar(label, state)
                self.origins.setdefault(origin, len(self.origins))
            bar.label, bar.state = label, state
            closed = bool(state.get("closed"))
            if closed:
                del self.bars[key]
            if self.is_terminal():
                self._clear()
                if closed:
                    self._out(self._fit(_render(bar)) + "\n")
                self._draw()
            else:
                now = time.monotonic()
                if closed or bar.last_plain == 0.0 or now - bar.last_plain >= PLAIN_INTERVAL_S:
                    bar.last_plain = now
                    self._out(_render(bar) + "\n")

    def write_lines(self, stream: TextIO, lines: List[str]) -> None:
        """Write other output above the bars (they are cleared first and redrawn after)."""
        with self.lock:
            covering = self.drawn and self.is_terminal() and _same_terminal(stream, self.stream)
            if covering:
                self._clear()
            try:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # the terminal is gone: the log files still have everything
            if covering:
                self._draw()

    def finish(self) -> None:
        """The session ends: each bar still open is left as its last line."""
        with self.lock:
            bars = list(self.bars.values())
            self.bars.clear()
            if self.is_terminal():
                self._clear()
            for bar in bars:
                self._out(self._fit(_render(bar)) + "\n")

    # ---- drawing --------------------------------------------------------------------

    def _clear(self) -> None:
        if self.drawn:
            self._out(f"\x1b[{self.drawn}F\x1b[J")  # to the first bar line, erase to the end
            self.drawn = 0

    def _draw(self) -> None:
        # Each process's bars together, in the order of their `position` (tqdm's, within the process).
        order = sorted(self.bars.items(), key=lambda item: (self.origins.get(item[0][0], 0), _position(item[1])))
        text = "".join(self._fit(_render(bar)) + "\n" for _, bar in order)
        if text:
            self._out(text)
        self.drawn = len(self.bars)

    def _fit(self, line: str) -> str:
        """One screen line (a wrapped line would throw off the cursor moves)."""
        width = shutil.get_terminal_size((100, 24)).columns - 1
        return line if len(line) <= width else line[: max(width - 1, 1)] + "…"

    def _out(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _position(bar: _Bar) -> int:
    pos = bar.state.get("pos")
    return pos if isinstance(pos, int) else 0


def _render(bar: _Bar) -> str:
    state = bar.state
    n = state.get("x") or 0
    total = state.get("total")
    unit = state.get("unit") or "it"
    start = state.get("start")
    elapsed = time.time() - start if isinstance(start, (int, float)) else time.monotonic() - bar.started
    rate = n / elapsed if elapsed > 0 else 0.0
    head = f"{bar.label}: " if bar.label else ""
    if isinstance(total, (int, float)) and total > 0:
        share = min(max(n / total, 0.0), 1.0)
        filled = int(share * _BAR_WIDTH)
        left = (total - n) / rate if rate > 0 else None
        return (f"{head}{share * 100:3.0f}%|{'#' * filled}{' ' * (_BAR_WIDTH - filled)}| {n}/{total} "
                f"[{_clock(elapsed)}<{_clock(left)}, {rate:.2f}{unit}/s]")
    return f"{head}{n}{unit} [{_clock(elapsed)}, {rate:.2f}{unit}/s]"


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _same_terminal(a: TextIO, b: TextIO) -> bool:
    try:
        return a.isatty() and b.isatty()
    except (AttributeError, ValueError):
        return False


# ---- the driver's one manager ---------------------------------------------------------

_manager: Optional[BarManager] = None
_manager_lock = threading.Lock()
_print = builtins.print


def manager() -> BarManager:
    """The driver's bar manager, made at the first bar. As in Ray, the driver's print() is then
    made to write above the bars (RAY_TQDM_PATCH_PRINT=0 leaves print alone)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = BarManager()
            if config.tqdm_patch_print():
                builtins.print = safe_print
        return _manager


def active() -> Optional[BarManager]:
    """The manager if any bar was ever shown, else None (the log monitor's fast path)."""
    return _manager


def safe_print(*args: Any, **kwargs: Any) -> None:
    """print() that keeps the progress bars intact (Ray's tqdm_ray.safe_print)."""
    target = kwargs.get("file")
    bars = _manager
    if bars is None or target not in (None, sys.stdout, sys.stderr):
        _print(*args, **kwargs)
        return
    with bars.lock:
        covering = bars.drawn and bars.is_terminal()
        if covering:
            bars._clear()
        try:
            _print(*args, **kwargs)
        finally:
            if covering:
                _flush(target or sys.stdout)  # the text lands before the bars are drawn below it
                bars._draw()


def _flush(stream: TextIO) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
