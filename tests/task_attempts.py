"""Test helper: the attempts the head recorded for tasks of a name (what `list tasks` shows, one row each).

Reads the head's task records in the driver. The state API (`minicluster.util.state.list_tasks`)
shows the same rows; this helper keeps the fault tests independent of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from minicluster._private.client import context


@dataclass(frozen=True)
class Attempt:
    task_id: str
    attempt_number: int
    state: str
    error_type: Optional[str]
    error_message: Optional[str]
    node_id: Optional[str]


def attempts(name: str) -> List[Attempt]:
    """Every recorded attempt of every task named `name`, finished or not, oldest task first."""
    head = context.current().head
    with head.lock:
        # Finished tasks are compact entries in the history (a task being rebuilt is live instead).
        rows = [_row(entry.task_id, a) for entry in head.history.entries(skip=head.tasks)
                if entry.kind.name == name for a in entry.attempts]
        for task in head.tasks.values():
            if task.spec.name == name:
                rows += [_row(task.spec.task_id, a) for a in task.attempts]
    return rows


def _row(task_id: bytes, a: Any) -> Attempt:
    """An attempt (a live AttemptRecord or a history Attempt: the same fields) as a test row."""
    return Attempt(task_id.hex(), a.attempt_number, a.state, a.error_type, a.error_message,
                   a.node_id.hex() if a.node_id else None)
