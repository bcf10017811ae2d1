"""Test helper: the attempts the head recorded for tasks of a name (what `list tasks` shows, one row each).

Reads the head's task records in the driver. The state API (`minicluster.util.state.list_tasks`)
shows the same rows; this helper keeps the fault tests independent of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from minicluster import context


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
        records = [t for t in head.history.tasks] + list(head.tasks.values())
        rows = []
        seen = set()
        for task in records:
            if task.spec.name != name or id(task) in seen:
                continue
            seen.add(id(task))
            for a in task.attempts:
                rows.append(Attempt(task.spec.task_id.hex(), a.attempt_number, a.state, a.error_type,
                                    a.error_message, a.node_id.hex() if a.node_id else None))
    return rows
