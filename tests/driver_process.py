"""Test helper: a driver script in its own process, and the `minicluster` command run against it.

The driver prints marker lines ("KEY value") that the test waits for, and
waits for a line on its stdin before it goes on (for example to shut down, or
to kill itself with SIGKILL as a crashing driver would).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from typing import Dict, List, Optional, Tuple


class DriverProcess:
    def __init__(self, script: str, path: str, args: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        with open(path, "w") as f:
            f.write(textwrap.dedent(script))
        self.proc = subprocess.Popen(
            [sys.executable, "-u", path, *(args or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, cwd=os.path.dirname(path),
        )
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into: List[str], notify: bool) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append(line)
            if notify:
                self._lines.put(line)
        if notify:
            self._lines.put(None)

    def expect(self, key: str, timeout: float = 30.0) -> str:
        """Wait for the line "KEY value" on the driver's stdout; return the value."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the driver did not print {key!r} within {timeout} s; "
                                     f"stdout={''.join(self.stdout)!r} stderr={''.join(self.stderr)!r}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the driver exited (rc={self.proc.wait()}) before printing {key!r}; "
                                     f"stdout={''.join(self.stdout)!r} stderr={''.join(self.stderr)!r}")
            if line.startswith(key + " ") or line.strip() == key:
                return line[len(key):].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the driver to exit; returns its exit code, with all its output collected."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the driver did not exit within {timeout} s") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def minicluster_cmd(*args: str, env: Optional[Dict[str, str]] = None,
                    timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run `python -m minicluster ARGS` in another process, as a user would from another shell."""
    return subprocess.run([sys.executable, "-m", "minicluster", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def run_driver(script: str, path: str, args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None,
               timeout: float = 30.0) -> Tuple[str, str]:
    """Run a driver script to its end, which must be exit code 0; returns its (stdout, stderr)."""
    driver = DriverProcess(script, path, args, env)
    try:
        code = driver.finish(timeout)
    finally:
        driver.kill()
    out, err = "".join(driver.stdout), "".join(driver.stderr)
    assert code == 0, f"the driver exited with {code}; stdout={out!r} stderr={err!r}"
    return out, err
