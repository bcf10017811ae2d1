"""minicluster: Ray Core's API and fault-tolerance semantics on one machine.

    import minicluster as ray

    ray.init(num_nodes=3, num_cpus=2)   # three virtual nodes, two CPUs each

    @ray.remote(max_retries=2)
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))

Where things live (one concept per module). The public modules, Ray's names:

    api.py              the public functions (init, get, put, wait, remote, timeline, ...)
    remote_function.py  @remote functions -> TaskSpec
    actor.py            @remote classes, actor handles and their method calls
    object_ref.py       ObjectRef (defined in _private/client/object_ref.py)
    runtime_context.py  get_runtime_context(): job, node, worker, task and actor ids
    job_config.py       JobConfig for init(job_config=...): namespace, default actor lifetime, runtime_env
    runtime_env.py      RuntimeEnv, RuntimeEnvConfig (Ray's ray.runtime_env)
    types.py            ray.types' ObjectRef, for annotations
    exceptions.py       Ray's exception hierarchy
    cluster_utils.py    Ray's Cluster test helper on virtual nodes
    util/               scheduling strategies; util/state: list_tasks, get_task, ... (Ray's names);
                        Ray's toolbox: ActorPool, queue, multiprocessing (Pool), joblib,
                        as_completed / map_unordered, list_named_actors, serializers;
                        util/placement_group: placement groups
    experimental/       tqdm_ray: progress bars from tasks and actors, drawn by the driver
    testing/            fault injection for tests: node/worker controls, seeded fault plans fired
                        at the runtime's own event points, the journal, snapshot(), the pytest plugin
    cli.py, demo.py     the `minicluster` command; `minicluster demo`

The core, in _private/, by layer; a layer imports only from itself and the ones above it
in this list (tests/test_architecture.py checks it):

    common/     ids.py (Ray-shaped ids), config.py (tunables, MINICLUSTER_/RAY_ variables),
                task_spec.py (what a task is), options.py (checks @remote options),
                runtime_envs.py (runtime_env: check, merge, package, apply), labels.py
                (node labels and label_selector),
                signatures.py (argument checks at .remote()), system_config.py (Ray's
                _system_config table and the reconstruction switch), placement.py (placement
                group resource names: what a bundle adds to its node, a task's request in a group)
    store/      serialization.py (pickle-5 blobs, zero-copy buffers), object_store.py (a node's
                shared-memory folder of object files; spilling), store_spares.py (pre-allocated files),
                store_recycle.py (freed files nothing maps any more, reused by large writes)
    wire/       protocol.py (framing, authentication), hub.py (the head's I/O thread: sockets,
                timers), messages.py (every message, defined once), fault_hooks.py (where a
                test's fault plan reaches into both ends: the head's hooks, the workers' orders)
    head/       the head, in the driver: head.py is its facade (lifecycle, messages in, queries;
                head_messages.py: each message's handler);
                head_state.py every record of the session with its invariant, invariants.py their
                check (validate_state), states.py task and actor states and legal transitions,
                flow_interfaces.py what each flow calls on another, messaging.py outgoing batches;
                the flows: task_flow.py (a task from submission to result; cancellation;
                task_placement.py, where a ready task is placed and which worker runs it;
                streams.py, a generator task's items from worker to consumer),
                actor_flow.py (creation, ordered calls, restart, kill), waiting.py (get, wait),
                recovery.py (where work goes when a worker, node or owner dies; rebuilding lost
                objects); the records: scheduler.py, object_directory.py, lineage.py,
                task_records.py, task_history.py, actor_records.py, gpus.py (which GPU ids a
                task gets), virtual_nodes.py (nodes, workers, starting and killing node
                processes), placement_groups.py (groups, where their bundles go, removal),
                snapshot.py (testing.snapshot), state_queries.py (answers to ray.nodes(),
                cluster_resources(), get_runtime_context() and the like),
                announcements.py (rate-limited retry/death lines, "Unhandled error" on the driver),
                global_gc.py (a store filling up: every process collects reference cycles)
    observe/    state_recorder.py (records -> state rows, journaled), state_journal.py (the
                session's state on disk), state_render.py (tables for the CLI), timeline.py
                (Chrome trace), log_files.py (workers' output files), log_dedup.py (folding
                repeated lines across workers, as Ray's RAY_DEDUP_LOGS), progress_bars.py
                (tqdm_ray's bars, drawn on the driver), sessions.py (which session folders
                there are, which one a reader means), top_view.py (`minicluster top`'s frame),
                arrow_export.py (state lists as Parquet/Arrow)
    client/     the runtime as this process's code sees it: runtime_client.py (shared part),
                driver.py (the driver's: session + embedded head), context.py (which client,
                auto-init), object_ref.py (refs and their per-process counter),
                object_ref_generator.py (what a generator task's .remote() returns), clusters.py
                (Cluster registry), session.py (session folder, key, stale cleanup),
                log_monitor.py (workers' output on the driver's terminal)
    node/       node_manager.py (a virtual node's process: forks and watches workers),
                worker.py (runs tasks), task_call.py (one call as a worker runs it), inbox.py
                (who reads a worker's socket, and when),
                worker_client.py (the runtime as a worker's code sees it),
                generator_tasks.py (a generator's items reported as yielded; backpressure),
                task_errors.py (a failed task's error as its caller gets it), call_args.py
                (a task's arguments loaded), task_environment.py (runtime_env, OMP threads and
                GPUs as a task begins), async_actor.py (an async actor's event loop),
                proc_title.py (`ray::<task>` in ps)
"""

from minicluster import exceptions
from minicluster._private.common.ids import ActorID, JobID, NodeID, TaskID, WorkerID
from minicluster.api import (
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
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
from minicluster.object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator

ObjectID = ObjectRef  # Ray's old name, still exported by Ray

# Ray's top-level names that minicluster lacks -> why: asking for one says so, instead of
# Python's bare "has no attribute" (docs/support.md lists Ray's whole API with what we do).
_NOT_IN_MINICLUSTER = {
    "get_gpu_ids": "GPUs are a counted resource here; no GPU ids are assigned to workers",
    "LoggingConfig": "minicluster sets up no loggers (its few messages go to stderr)",
    "client": "Ray Client (ray://) joins a remote cluster; minicluster runs on this machine only",
    "ClientBuilder": "Ray Client (ray://) joins a remote cluster; minicluster runs on this machine only",
    "java_function": "there are no cross-language (Java, C++) tasks",
    "java_actor_class": "there are no cross-language (Java, C++) actors",
    "cross_language": "there are no cross-language (Java, C++) tasks",
    "Language": "there are no cross-language (Java, C++) tasks",
    "UniqueID": "only the ids a Ray program sees are exported (ObjectRef, TaskID, ActorID, JobID, NodeID, WorkerID)",
    "FunctionID": "only the ids a Ray program sees are exported (ObjectRef, TaskID, ActorID, JobID, NodeID, WorkerID)",
    "ActorClassID": "only the ids a Ray program sees are exported (ObjectRef, TaskID, ActorID, JobID, NodeID, "
                    "WorkerID)",
    "ClusterID": "only the ids a Ray program sees are exported (ObjectRef, TaskID, ActorID, JobID, NodeID, WorkerID)",
    **{library: "minicluster is Ray Core only; Ray's libraries (Data, Train, Tune, Serve, RLlib, Workflows, "
                "compiled graphs) need Ray itself" for library in
       ("data", "train", "tune", "serve", "rllib", "workflow", "dag", "air")},
}


def __getattr__(name: str) -> object:
    why = _NOT_IN_MINICLUSTER.get(name)
    if why is None:
        raise AttributeError(f"module 'minicluster' has no attribute {name!r}")
    raise AttributeError(f"minicluster does not support ray.{name}: {why} (docs/support.md lists Ray's API "
                         "and what minicluster does with each)")


__version__ = "0.1.0"

__all__ = [
    "ActorID",
    "JobID",
    "NodeID",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "TaskID",
    "WorkerID",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
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
