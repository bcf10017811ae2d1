"""Fault injection for tests (not part of Ray's API: only tests import it).

Runs in the driver. Application code stays `import minicluster as ray`; a test
adds faults around it:

    import minicluster as ray
    from minicluster.testing import FaultPlan

    ray.init(num_nodes=3, num_cpus=1)
    plan = (FaultPlan(seed=7)
            .kill_worker("step", attempt=0, at="before_store")
            .kill_node("random", after_tasks=5)
            .chaos(kill_worker_every=20))
    with plan:                                # fired by the runtime at its own event points
        assert ray.get(job.remote()) == expected
    print(plan.journal.format())              # what fired, where, when, in which task attempt

On-demand controls act at once: `add_node`, `kill_node` (power cut: its
processes and its objects are gone), `stop_node`/`resume_node` (SIGSTOP: a hung
machine), `kill_worker(pid)`, `kill_worker_running(ref)`.

`snapshot()` is what the head knows at one moment, frozen: the session's
folders, each node's pid, workers and store folder, counts of tasks, objects,
waiters and actors. Tests read it instead of the runtime's internals.
`validate_state()` checks the head's invariants (HeadStateError lists what broke).

With pytest, the plugin (pytest_plugin.py, registered by the package) gives
fixtures `minicluster_cluster`, `fault_plan` and `fault_journal`, a seed per
test and options `--minicluster-seed`, `--minicluster-seeds`, `--minicluster-chaos`,
`--minicluster-alias-ray` (`import ray` gives minicluster) and
`--minicluster-backend=ray` (the same tests on real Ray).

    backend.py          which runtime the controls drive (minicluster, or the Ray backend's cluster)
    cluster_control.py  on-demand node and worker controls
    fault_plan.py       FaultPlan: planned faults, seed, checks that they fired
    injector.py         the plan at work inside the head (decides at its event points)
    journal.py          FaultJournal: the faults that fired
    pytest_plugin.py    fixtures, options, seeds, reports
    ray_alias.py        `import ray` -> minicluster, for the plugin's --minicluster-alias-ray
    ray_backend.py      the plugin's --minicluster-backend=ray: Ray clusters, controls, alias
    session_snapshot.py snapshot(): the head's state, frozen; validate_state()
"""

from minicluster.testing.cluster_control import (
    add_node,
    kill_node,
    kill_worker,
    kill_worker_running,
    live_nodes,
    object_locations,
    resume_node,
    stop_node,
    worker_pids,
)
from minicluster.testing.fault_plan import SEED_ENV, Fault, FaultPlan, UnfiredFaultsError, default_seed
from minicluster.testing.journal import FaultEvent, FaultJournal
from minicluster.testing.session_snapshot import (
    AttemptSnapshot,
    ClusterSnapshot,
    HeadStateError,
    NodeSnapshot,
    TaskSnapshot,
    snapshot,
    validate_state,
)

__all__ = [
    "SEED_ENV",
    "AttemptSnapshot",
    "ClusterSnapshot",
    "Fault",
    "FaultEvent",
    "FaultJournal",
    "FaultPlan",
    "HeadStateError",
    "NodeSnapshot",
    "TaskSnapshot",
    "UnfiredFaultsError",
    "add_node",
    "default_seed",
    "kill_node",
    "kill_worker",
    "kill_worker_running",
    "live_nodes",
    "object_locations",
    "resume_node",
    "snapshot",
    "stop_node",
    "validate_state",
    "worker_pids",
]
