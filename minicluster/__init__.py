"""minicluster: Ray Core's API and fault-tolerance semantics on one machine.

    import minicluster as ray

    ray.init(num_nodes=3, num_cpus=2)   # three virtual nodes, two CPUs each

    @ray.remote(max_retries=2)
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))

Where things live (one concept per module):

    api.py              the public functions (init, get, put, wait, remote, ...)
    remote_function.py  @remote functions -> TaskSpec (task_spec.py), options.py validates
    object_ref.py       ObjectRef and per-process ref counting
    driver.py           the driver's runtime client: session + embedded head
    head.py             the head: lifecycle, messages, state queries; it is also
      task_flow.py        a task's path from submission to result; cancellation
      waiting.py          get and wait
      recovery.py         dead workers, nodes, owners; rebuilding lost objects
    scheduler.py        placement by resources and strategy
    objects.py          object directory: values, locations, holders, freeing, spilling
    lineage.py          finished tasks kept to rebuild lost objects
    task_records.py     task and attempt records of live tasks (state API, timeline)
    task_history.py     finished tasks, kept compactly and bounded, for the state API
    state_recorder.py   the head's records -> state rows, journaled in batches (driver)
    state_journal.py    the session's state on disk: journal, status, objects (any process)
    util/state/         the state API: list_tasks, get_task, summarize_tasks, ... (Ray's names)
    state_render.py     Ray-style tables, YAML and reports for the command line
    timeline.py         task attempts as a Chrome trace (timeline())
    log_files.py        workers' stdout/stderr files and task-name markers
    log_monitor.py      prints workers' output on the driver's terminal, prefixed
    virtual_nodes.py    node and worker records; starting and killing node processes
    hub.py              the head's I/O thread (sockets, timers)
    node_manager.py     a virtual node's process: forks and watches its workers
    worker.py           a worker process: runs tasks, reports results
    object_store.py     a node's shared-memory folder of object files; spill folders
    store_spares.py     pre-allocated spare files that large writes copy into
    serialization.py    pickle-5 blobs with zero-copy buffers
    protocol.py         framing and authentication of connections
    session.py          session folder, socket, key, stale-session cleanup
    exceptions.py       Ray's exception hierarchy
    cluster_utils.py    Ray's Cluster test helper on virtual nodes
    cli.py              the `minicluster` command: demo, list, get, summary, status, timeline, logs
    fault_hooks.py      where a test's fault plan reaches into the head and the workers
    testing/            fault injection for tests: on-demand node/worker controls, seeded
                        fault plans fired at the runtime's own event points, the journal,
                        and the pytest plugin (fixtures, seeds, chaos)
"""

from . import exceptions
from .api import (
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from .object_ref import ObjectRef
from .timeline import timeline

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "wait",
]
