"""TaskSpec: everything the head needs to run, retry and rebuild one task.

Made by the submitting process (driver or worker), kept by the head for the
task's life and, as lineage, for as long as its results may need rebuilding.
A spec never changes after submission; attempts are tracked in the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from minicluster.exceptions import RayTaskError

NORMAL_TASK = "NORMAL_TASK"
ACTOR_CREATION_TASK = "ACTOR_CREATION_TASK"
ACTOR_TASK = "ACTOR_TASK"
DRIVER_TASK = "DRIVER_TASK"

#: Ray's resource of a node whose accelerators are of a type: `accelerator_type:A100`.
ACCELERATOR_TYPE_PREFIX = "accelerator_type:"

# num_returns of generator tasks (as Ray encodes them). Either has one return value, the
# task's completion; a streaming task's items are objects of their own, reported one by one.
STREAMING = -2  #: num_returns="streaming": items reach the caller while the task runs
DYNAMIC = -1  #: num_returns="dynamic": the return value is a DynamicObjectRefGenerator of the items

# What the head answers a generator's next() (head/streams.py; the consumer: client/object_ref_generator.py).
ITEM = "item"  #: the item is taken (the consumer holds it now)
PENDING_ITEM = "pending"  #: wait for this object id, then ask again
END = "end"  #: no item left; the completion object says how the task ended

#: Ray's sentence for a task that fails because an argument is an error (or lost for good)
ARGUMENT_FAILED = "At least one of the input arguments for this task could not be computed:"


def argument_failed(task_name: str, error: BaseException) -> RayTaskError:
    """The error of a task whose argument is the failed object `error`, as Ray words it: the
    task's header, Ray's sentence, then the upstream error; still an instance of the upstream
    cause (or, for a lost object, of the loss). The head builds it when it sees the failed
    argument first, the worker when the argument failed after the task was sent."""
    text = f"  {ARGUMENT_FAILED}\n{RayTaskError.__module__}.{type(error).__name__}: {error}"
    cause = error.cause if isinstance(error, RayTaskError) else error
    return RayTaskError(task_name, text, cause)


#: The suffix of a task's first return id (return index 1, 4 bytes little-endian).
FIRST_RETURN = (1).to_bytes(4, "little")

# Strategy encodings: ("DEFAULT",), ("SPREAD",), ("NODE", node_id, soft), ("PG", ...) (placement.py)
DEFAULT_STRATEGY: Tuple = ("DEFAULT",)


@dataclass(slots=True)
class TaskSpec:
    task_id: bytes
    name: str  #: display name: the `name` option, else the function's qualified name
    func_name: str  #: module-qualified function or class name
    function_id: bytes  #: key of the pickled function in the head's function table
    args: bytes  #: serialized (args, kwargs)
    arg_refs: Tuple[bytes, ...]  #: top-level ObjectRef arguments: resolved to values before the task runs
    borrowed: Tuple[bytes, ...]  #: refs nested inside the arguments: kept alive while the task runs
    num_returns: int  #: >= 0, or STREAMING / DYNAMIC for generator tasks
    resources: Dict[str, float]
    max_retries: int  #: -1 means forever
    retry_exceptions: object  #: False, True, or pickled tuple of exception classes
    max_calls: int  #: 0 means unlimited
    strategy: Tuple
    parent_task_id: bytes
    owner: bytes  #: worker id of the submitting process; the owner of the results
    task_type: str = NORMAL_TASK
    actor_id: Optional[bytes] = None
    args_size: int = field(default=0)
    method: Optional[str] = None  #: for ACTOR_TASK: the method to call on the actor
    #: the environment it runs in, merged over its parent's (runtime_envs.encode); None: none
    runtime_env: Optional[str] = None
    #: the nodes it may run on: its label_selector, then its fallback_strategy's (labels.alternatives)
    label_selector: Optional[tuple] = None
    task_events: bool = True  #: False: left out of the state API and timeline (enable_task_events)
    concurrency_group: str = ""  #: for ACTOR_TASK: the actor's concurrency group it runs in ("": the default)
    backpressure: int = -1  #: streaming: items produced ahead of the consumer before the task pauses; -1: no limit

    def return_ids(self) -> Tuple[bytes, ...]:
        tid = self.task_id
        if self.num_returns == 1:  # nearly every task; asked for several times per round trip
            return (tid + FIRST_RETURN,)
        count = 1 if self.num_returns < 0 else self.num_returns
        return tuple(tid + i.to_bytes(4, "little") for i in range(1, count + 1))


def stream_item_id(task_id: bytes, index: int) -> bytes:
    """The object id of a generator task's `index`-th item (1-based); the task's completion
    (its one return value) is return index 1, so items follow it."""
    return task_id + (index + 1).to_bytes(4, "little")


def resources_of(options: dict, default_cpus: float = 1.0) -> Dict[str, float]:
    """The resource request of a task from its (validated) options."""
    res: Dict[str, float] = {}
    cpus = options.get("num_cpus", default_cpus)
    if cpus:
        res["CPU"] = float(cpus)
    gpus = options.get("num_gpus")
    if gpus:
        res["GPU"] = float(gpus)
    memory = options.get("memory")
    if memory:
        res["memory"] = float(memory)  # bytes, as Ray's memory resource
    for key, qty in (options.get("resources") or {}).items():
        if qty:
            res[key] = float(qty)
    accelerator = options.get("accelerator_type")
    if accelerator:
        # As Ray: a sliver of the resource every node with that accelerator type has.
        res[f"{ACCELERATOR_TYPE_PREFIX}{accelerator}"] = 0.001
    return res


def strategy_of(value: object) -> Tuple:
    if value is None or value == "DEFAULT":
        return DEFAULT_STRATEGY
    if value == "SPREAD":
        return ("SPREAD",)
    if not hasattr(value, "node_id"):
        return DEFAULT_STRATEGY  # a PlacementGroupSchedulingStrategy: placement.explicit_in_group's
    node_hex = value.node_id
    try:
        node_id = bytes.fromhex(node_hex)
    except ValueError:
        raise ValueError(f"NodeAffinitySchedulingStrategy: {node_hex!r} is not a node id (hex string)") from None
    return ("NODE", node_id, bool(value.soft))
