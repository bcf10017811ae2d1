"""Test helper: the attempts the head recorded for tasks of a name (what `list tasks` shows, one row each).

Reads the head's task records in the driver (`minicluster.testing.snapshot`). The state API
(`minicluster.util.state.list_tasks`) shows the same rows; this helper keeps the fault tests
independent of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from minicluster import testing
from minicluster.testing import AttemptSnapshot


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
    # Finished tasks first, then the unfinished (a task being rebuilt is among these).
    tasks = testing.snapshot(finished_tasks=True).tasks
    return [_row(task.task_id, a) for task in tasks if task.name == name for a in task.attempts]


def _row(task_id: str, a: AttemptSnapshot) -> Attempt:
    return Attempt(task_id, a.attempt_number, a.state, a.error_type, a.error_message, a.node_id)
