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
    actor.py            @remote classes, actor handles and their method calls
    object_ref.py       ObjectRef and per-process ref counting
    client.py           what the driver's and the workers' runtime clients share
    context.py          which runtime client this process uses
    driver.py           the driver's runtime client: session + embedded head
    head.py             the head's facade: lifecycle, messages in, state queries; it
                        builds the state and the flows and connects them
      head_state.py       HeadState: every record of the session, each with its invariant
      invariants.py       the check of those invariants (Head.validate_state)
      states.py           task and actor states and their legal transitions
      flow_interfaces.py  what each flow calls on another (Protocols)
      messaging.py        outgoing messages batched per connection; timers under the lock
      task_flow.py        TaskFlow: a task's path from submission to result; cancellation
      actor_flow.py       ActorFlow: creation, ordered calls, death, restart, kill
      actor_records.py    the record of one actor
      waiting.py          Waiting: get and wait
      recovery.py         Recovery: dead workers, nodes, owners; rebuilding lost objects
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
    worker_client.py    the runtime as code in a worker sees it: requests, ref deltas, results
    async_actor.py      an async actor's event loop in its worker, fed and answered in batches
    object_store.py     a node's shared-memory folder of object files; spill folders
    store_spares.py     pre-allocated spare files that large writes copy into
    serialization.py    pickle-5 blobs with zero-copy buffers
    protocol.py         framing and authentication of connections
    session.py          session folder, socket, key, stale-session cleanup
    exceptions.py       Ray's exception hierarchy
    ids.py              Ray-shaped job, task, object, node, worker and actor ids
    config.py           tunables and MINICLUSTER_/RAY_ environment variables
    cluster_utils.py    Ray's Cluster test helper on virtual nodes
    demo.py             `minicluster demo`: a small DAG, a crash retried, where the time went
    cli.py              the `minicluster` command: demo, list, get, summary, status, timeline, logs
    fault_hooks.py      where a test's fault plan reaches into the head and the workers
    testing/            fault injection for tests: on-demand node/worker controls, seeded
                        fault plans fired at the runtime's own event points, the journal,
                        and the pytest plugin (fixtures, seeds, chaos)
"""

from minicluster import exceptions
from minicluster.api import (
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
    timeline,
    wait,
)
from minicluster.object_ref import ObjectRef

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
