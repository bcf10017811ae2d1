"""`snapshot()`: what the running session's head knows, as one frozen record, for tests and benchmarks;
`validate_state()`: a check that the head's records are consistent.

Runs in the driver. Tests read the session's folders, processes and counts
here instead of reaching into the runtime's internals, so those can change
freely. The records are the head's own (minicluster/_private/head/snapshot.py);
this module is their public door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from minicluster._private.head.invariants import HeadStateError
from minicluster._private.head.snapshot import AttemptSnapshot, ClusterSnapshot, NodeSnapshot, TaskSnapshot, take
from minicluster.testing import backend
from minicluster.testing.cluster_control import _head

if TYPE_CHECKING:
    from minicluster.cluster_utils import Cluster


def snapshot(cluster: Optional[Cluster] = None, finished_tasks: bool = False) -> ClusterSnapshot:
    """The session's state at one moment: folders, nodes and their processes, task and object counts.

    `cluster`: a cluster_utils.Cluster, whether this process is connected to it or not
    (default: the session this driver runs). `finished_tasks=True` also lists the finished
    tasks the head keeps for the state API (up to 100,000), not only the unfinished ones.
    Raises RuntimeError in a worker, or when no session runs.
    """
    backend.refuse_on_ray("snapshot")
    # A Cluster's session exists from its creation, before (and after) init(address=...).
    head = _head() if cluster is None else cluster._client.head
    # Taken here, not by a Head method: the snapshot records load only where tests use them.
    with head.lock:
        return take(head, finished_tasks)


def validate_state(cluster: Optional[Cluster] = None) -> None:
    """Check every invariant of the head's records (its tasks, workers, nodes, actors, objects,
    lineage; see minicluster/_private/head/head_state.py) and raise HeadStateError listing
    each one broken. Walks everything under the head's lock: for tests, not hot loops.
    `cluster` as for snapshot(). Raises RuntimeError in a worker, or when no session runs.
    """
    backend.refuse_on_ray("validate_state")
    head = _head() if cluster is None else cluster._client.head
    head.validate_state()


__all__ = ["AttemptSnapshot", "ClusterSnapshot", "HeadStateError", "NodeSnapshot", "TaskSnapshot", "snapshot",
           "validate_state"]
