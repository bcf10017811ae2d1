"""Fault injection for tests (not part of Ray's API: only tests import it).

    import minicluster as ray
    from minicluster import testing

    ray.init(num_nodes=3, num_cpus=1)
    node = testing.add_node(num_cpus=2)
    testing.kill_node(node)          # power cut: its processes and its objects are gone
    testing.stop_node(other)         # SIGSTOP: a hung machine, until resume_node(other)
"""

from .cluster_control import (
    add_node,
    kill_node,
    kill_worker,
    live_nodes,
    object_locations,
    resume_node,
    stop_node,
    worker_pids,
)

__all__ = [
    "add_node",
    "kill_node",
    "kill_worker",
    "live_nodes",
    "object_locations",
    "resume_node",
    "stop_node",
    "worker_pids",
]
