"""Every message that crosses a session's sockets, defined once, with named fields.

Used by every process of a session: the head (in the driver) builds and reads
them on its side of each connection; node managers and workers (node/) on
theirs; a test's fault plan (minicluster/testing/) adds its orders to the head's
and reads the workers' reports. A frame (protocol.py) is a pickled list of
messages. Receivers dispatch on a message's class (a dict keyed by class) and
read its fields by name; records nested inside messages (a task's results, its
error, a fault order) are defined here too.

Each class's docstring says who sends it, who receives it and when:

    head -> node manager     Spawn
    node manager -> head     NodeHello, WorkerExit
    head -> worker           Exec, DefineFunction, Reply, CancelTask, Steal, Retire, StreamAck,
                             CollectGarbage
    worker -> head           WorkerHello, Done, DefineFunction, Submit, Put, Refs, Located,
                             Lost, Get, Wait, Forget, Cancel, QueryState, CreateActor,
                             LookupActor, KillActor, FaultFired, StreamItem, StreamNext,
                             StreamAbandon, ChangePlacementGroup
    nested                   Payload, Value, ErrorInfo, ActorConfig, ActorFound, FaultOrder,
                             FaultRef, FetchDelay

How they travel, and why: a record pickled as itself costs the pickler a
reduce call and the frame a global to look up (7k instructions to load one
frame, most of a Done's cost), and NamedTuple's Python `__new__` on loading.
So `to_wire` turns each message into a plain tuple (its code, its position in
RECORDS, then its fields; every process of a session runs the same files),
records in fields declared to hold them (Done.results, Exec.payloads, ...)
into plain tuples too, and `from_wire` builds them back with tuple.__new__.
The codecs are generated from the annotations and call C functions (map, zip)
for the nested ones. A record in a field of type Any (Reply.payload,
FaultOrder.argument) pickles as `_rebuild(code, *fields)` (copyreg).

Build a record with `Record.new(field=..., ...)`: a generated function taking
the same keywords as the class call, which in CPython 3.11 packs them into a
dict first (an Exec: 11k instructions that way, 4.9k through `new`, 1.8k for
the tuple it replaced).

What records still cost per tiny task, counted with callgrind (simulations of
the head's and a worker's message work, so the machine's load does not
matter): the head 230k -> 247k instructions (+7.5%), a worker 89k -> 110k
(+24%): building records, reading fields by name (~130 instructions a read;
the worker copies an Exec's fields into slots once), and the codecs' Python
calls. Measured and left out: a copyreg extension code for `_rebuild`
(cheaper loads, but slower batched dumps and a process-global registration).
"""

from __future__ import annotations

import copyreg
import functools
import typing
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from minicluster._private.common.task_spec import TaskSpec


# ==== head -> node manager ==============================================================


class Spawn(NamedTuple):
    """head -> node manager: fork `count` more workers (tasks wait there for one, or its pool is short)."""

    count: int


# ==== node manager -> head ==============================================================


class NodeHello(NamedTuple):
    """node manager -> head: its first message; binds the connection to the node."""

    node_id: bytes
    pid: int


class WorkerExit(NamedTuple):
    """node manager -> head: a worker it forked was reaped (however it ended)."""

    pid: int
    worker_id: bytes
    exitcode: int  #: < 0: killed by signal -exitcode


# ==== head -> worker ====================================================================


class ActorConfig(NamedTuple):
    """In Exec, for an actor's creation task only: the actor, and how the worker runs its calls."""

    actor_id: bytes
    max_concurrency: int  #: of its default concurrency group
    is_async: bool
    class_name: str
    concurrency_groups: Dict[str, int]  #: its other concurrency groups, each with its max concurrency


class Payload(NamedTuple):
    """Where a stored value is, as the head tells a reader: in Exec.payloads and the Reply to Get
    (the driver reads them in-process); also the head's own record of each object's value."""

    kind: str  #: "i": inline; "s": in node stores; "e": an error to raise
    data: Any  #: "i" and "e": the serialized value or error; "s": the locations that hold a copy
    size: int = 0  #: "s": the value's size in bytes


class FetchDelay(NamedTuple):
    """A FETCH order's argument: each copy from another node sleeps uniform(low_s, high_s), seeded."""

    seed: int
    low_s: float
    high_s: float


class FaultRef(NamedTuple):
    """Names the fault behind an order; the worker echoes it in its FaultFired report, unread."""

    serial: int  #: the installing injector's serial: a late report of an earlier plan is not its
    fault_id: int


class FaultOrder(NamedTuple):
    """In Exec.faults: what a test's fault plan orders the worker to do at a point (fault_hooks.py)."""

    point: str  #: fault_hooks.LOAD_ARGS, START, BEFORE_STORE, BEFORE_REPLY or FETCH
    action: str  #: fault_hooks.KILL_WORKER, KILL_NODE, STOP_NODE, RAISE or SLEEP
    argument: Any  #: SLEEP: seconds (a FetchDelay at FETCH); RAISE: the pickled exception; else None
    ref: FaultRef


class Exec(NamedTuple):
    """head -> worker: run this task attempt; sent when the task is dispatched (or pipelined) to it."""

    task_id: bytes
    attempt: int
    function_id: bytes
    name: str
    args_blob: bytes  #: the serialized (args, kwargs, ref slots) (remote_function._serialize_args)
    payloads: Optional[Dict[bytes, Payload]]  #: where each top-level ref argument's value is
    num_returns: int
    retry_exceptions: Any  #: False, True, or a pickled tuple of exception classes
    max_calls: int
    task_type: str
    func_name: str
    method: Optional[str]  #: the method of an actor call
    concurrency_group: str  #: an actor call's concurrency group ("": the default)
    actor_config: Optional[ActorConfig]
    faults: Optional[Tuple[FaultOrder, ...]]  #: a test's fault plan's orders for this attempt
    num_cpus: float  #: the CPUs the task holds: the worker sets OMP_NUM_THREADS from it, as Ray does
    runtime_env: Optional[str]  #: its environment (runtime_envs.encode); a worker serves one only
    gpu_ids: Optional[Tuple[str, ...]]  #: the node's GPUs given to it (CUDA_VISIBLE_DEVICES); None: no GPU
    #: (group id, bundle index, capture child tasks) of a task or actor creation in a placement group
    placement: Optional[Tuple[bytes, int, bool]] = None


class DefineFunction(NamedTuple):
    """Both ways, before a function's first use: head -> worker before its first task of it;
    worker -> head when code in a task submits a function (or creates an actor class) the head lacks."""

    function_id: bytes
    blob: bytes  #: the pickled function or class


class Reply(NamedTuple):
    """head -> worker: the answer to a request (Get, Wait, Cancel, QueryState, CreateActor,
    LookupActor, FaultFired), when it is ready."""

    request_id: int
    payload: Any


class CancelTask(NamedTuple):
    """head -> worker: cancel() of a task sent to it: interrupt it if running, skip it if queued."""

    task_id: bytes


class Steal(NamedTuple):
    """head -> worker: its running task blocked in get/wait; these tasks queued behind it are
    taken back (run elsewhere), so skip them."""

    task_ids: List[bytes]


class StreamAck(NamedTuple):
    """head -> worker: the consumer of a streaming generator task running there has taken
    `consumed` items; a task paused by its backpressure limit may go on (streams.py)."""

    task_id: bytes
    consumed: int
    limit: int  #: the task's _generator_backpressure_num_objects


class CollectGarbage(NamedTuple):
    """head -> worker: run gc.collect() now: a node's store is filling up, and reference cycles may
    hold ObjectRefs that keep objects in it (head/global_gc.py)."""


class Retire(NamedTuple):
    """head -> worker: exit after the current task (an idle surplus worker; a worker past max_calls
    once nothing it owns is referenced)."""


# ==== worker -> head ====================================================================


class WorkerHello(NamedTuple):
    """worker -> head: its first message; binds the connection to the worker."""

    worker_id: bytes
    node_id: bytes
    pid: int


class Value(NamedTuple):
    """A value a worker produced (a task's result, a put), as Done.results and Put carry it."""

    kind: str  #: "i": inline; "s": written to the sender's node's store
    data: Any  #: "i": the serialized bytes; "s": their size
    refs: List[bytes]  #: object ids inside the value: kept alive while it lives


class ErrorInfo(NamedTuple):
    """In Done, when the attempt failed: what the head needs to decide about retrying it."""

    error_type: str  #: TASK_EXECUTION_EXCEPTION, TASK_CANCELLED, or ARG_LOST (not the task's fault)
    #: (ACTOR_EXIT marks the call that ended its actor; worker.py never sends that Done)
    retryable: bool  #: retry_exceptions covers the exception (the head checks the retries left)
    message: str  #: one line; for ARG_LOST the hex id of the argument found missing
    #: the first result that is the error: a generator with num_returns=N that raised after
    #: yielding some values keeps those (Ray's rule); 0 otherwise
    first_error: int = 0


class Done(NamedTuple):
    """worker -> head: a task attempt finished, its results stored; sent before the next one starts."""

    task_id: bytes
    attempt: int
    results: List[Value]  #: one per return value; for a failure, the error as each value
    error: Optional[ErrorInfo]
    start: float  #: time.time() when the worker began the attempt
    end: float
    retire: bool  #: the worker reached max_calls: it runs nothing more and exits on Retire


class StreamItem(NamedTuple):
    """worker -> head: a generator task yielded its `index`-th item (1-based), stored like a result.
    `is_error`: the generator raised; the error is the item after the last one if no retry follows."""

    task_id: bytes
    attempt: int
    index: int
    value: Value
    is_error: bool


class StreamNext(NamedTuple):
    """worker -> head: next() on an ObjectRefGenerator in a task; replied at once with
    (status, object id): "item" (taken), "pending" (wait for that id, then ask again) or "end"."""

    request_id: int
    task_id: bytes
    advance: bool  #: False: only peek (wait() on a generator)


class StreamAbandon(NamedTuple):
    """worker -> head: ObjectRefGenerators of these tasks were dropped before their end: a
    producer paused by backpressure must not wait for a consumer that is gone; no reply."""

    task_ids: List[bytes]


class Submit(NamedTuple):
    """worker -> head: code in a task submitted a task (or an actor call)."""

    spec: "TaskSpec"


class Put(NamedTuple):
    """worker -> head: code in a task called put()."""

    object_id: bytes
    value: Value


class Refs(NamedTuple):
    """worker -> head: its reference-count changes; wrapped around every frame it sends
    (holds first, releases last), and sent alone when it goes idle."""

    added: List[bytes]
    removed: List[bytes]


class Located(NamedTuple):
    """worker -> head: it copied an object into its node's store; that node now holds a copy."""

    object_id: bytes
    node_id: bytes
    size: int


class Lost(NamedTuple):
    """worker -> head: a copy the head listed was missing when the worker read it (its node died)."""

    object_id: bytes


class Get(NamedTuple):
    """worker -> head: get() in a task; replied with a payload per object once all are ready
    (the worker enforces the timeout itself, then sends Forget)."""

    request_id: int
    object_ids: List[bytes]


class Wait(NamedTuple):
    """worker -> head: wait() in a task; replied with the ready ids (at most num_returns)
    once enough are ready or the timeout passed."""

    request_id: int
    object_ids: List[bytes]
    num_returns: int
    timeout: Optional[float]


class Forget(NamedTuple):
    """worker -> head: stop answering this request (timed out or interrupted); no reply."""

    request_id: int


class Cancel(NamedTuple):
    """worker -> head: cancel() in a task; replied with None, or the ValueError's text."""

    request_id: int
    object_id: bytes
    force: bool
    recursive: bool


class QueryState(NamedTuple):
    """worker -> head: a cluster-state query in a task (nodes(), cluster_resources(), ...,
    get_runtime_context()'s questions about the running task); replied with the answer."""

    request_id: int
    what: str
    about: Any = None  #: the id the query is about ("task_context": a task id; "node_labels": a node id)


class CreateActor(NamedTuple):
    """worker -> head: code in a task created an actor; replied with None (created), the
    ActorAlreadyExistsError's text (its name is taken), or with get_if_exists the live actor of
    that name as an ActorFound (looked up and created in one step, so racing creators agree)."""

    request_id: int
    spec: "TaskSpec"
    meta: Dict[str, Any]
    get_if_exists: bool


class ChangePlacementGroup(NamedTuple):
    """worker -> head: code in a task created ("create") or removed ("remove") a placement group;
    replied with None, or the error's text (its name is taken)."""

    request_id: int
    op: str
    args: Any


class ActorFound(NamedTuple):
    """A named actor, as the head's lookup returns it (the Reply to LookupActor, and the driver's)."""

    actor_id: bytes
    meta: Dict[str, Any]


class LookupActor(NamedTuple):
    """worker -> head: get_actor() in a task; replied with an ActorFound, or None."""

    request_id: int
    name: str
    namespace: Optional[str]  #: None: the job's namespace (the head knows it)


class ActorExiting(NamedTuple):
    """worker -> head: its actor's code called exit_actor() (or __ray_terminate__): the worker
    exits on purpose once the call ends; no reply. The actor is not restarted."""

    task_id: bytes  #: the call that asked


class KillActor(NamedTuple):
    """worker -> head: kill() of an actor in a task; no reply."""

    actor_id: bytes
    no_restart: bool


class FaultFired(NamedTuple):
    """worker -> head: one of a test's fault orders fired. request_id 0: a report only;
    otherwise the worker waits for the Reply (sent once the head has acted on it)."""

    request_id: int
    task_id: bytes
    attempt: int
    ref: FaultRef
    point: str
    action: str
    seconds: Optional[float] = None  #: SLEEP: how long it sleeps
    object_hex: Optional[str] = None  #: at FETCH: the object about to be copied


#: Every record above. A record's code on the wire is its position here.
RECORDS = (
    Spawn, NodeHello, WorkerExit,
    Payload, ActorConfig, FetchDelay, FaultRef, FaultOrder, Exec, DefineFunction, Reply, CancelTask, Steal, Retire,
    WorkerHello, Value, ErrorInfo, Done, Submit, Put, Refs, Located, Lost, Get, Wait, Forget, Cancel,
    QueryState, CreateActor, ActorFound, LookupActor, KillActor, FaultFired, ActorExiting,
    StreamAck, StreamItem, StreamNext, StreamAbandon, ChangePlacementGroup, CollectGarbage,
)


# ==== the wire form ====================================================================
#
# A message travels as a plain tuple (its code, then its fields); a record in a field
# declared as a record (or a list, tuple or dict of them) travels as the plain tuple of
# its fields. The codecs below are generated once from the annotations, and do their
# work with C calls (map, zip, tuple.__new__). A record anywhere else (in a field of
# type Any, like Reply.payload) is pickled as `_rebuild(code, *fields)`.

_CODE_OF: Dict[type, int] = {record: code for code, record in enumerate(RECORDS)}
_tuple_new = tuple.__new__


def _rebuild(code: int, *fields: Any) -> tuple:
    """Unpickling a record found outside a record-typed field."""
    return _tuple_new(RECORDS[code], fields)


def _reduce(record: tuple) -> Tuple[Callable[..., tuple], tuple]:
    return _rebuild, (_CODE_OF[record.__class__], *record)


for _record in RECORDS:
    copyreg.pickle(_record, _reduce)


def _field_types(record: type) -> List[Any]:
    hints = typing.get_type_hints(record, globalns=globals(), localns={"TaskSpec": Any})
    return [hints[name] for name in record._fields]


def _nested_record(hint: Any) -> Tuple[str, Optional[type]]:
    """How a field's declared type holds records: ("one" | "list" | "tuple" | "dict", record), optional
    marked by a leading "?"; ("", None) when it holds none."""
    optional = ""
    if typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint):
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) != 1:
            return "", None
        optional, hint = "?", rest[0]
    if hint in _CODE_OF:
        return optional + "one", hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] in _CODE_OF:
        return optional + "list", args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _CODE_OF:
        return optional + "tuple", args[0]
    if origin is dict and len(args) == 2 and args[1] in _CODE_OF:
        return optional + "dict", args[1]
    return "", None


def _convert(shape: str, record: Optional[type], value: str, one: str) -> str:
    """Source that converts `value` (declared as `shape` of `record`), `one` converting a single record."""
    if record is None:
        return value
    kind = shape.lstrip("?")
    if kind == "one":
        code = f"{one}({value})"
    elif kind == "list":
        code = f"list(map({one}, {value}))"
    elif kind == "tuple":
        code = f"tuple(map({one}, {value}))"
    else:
        code = f"dict(zip({value}, map({one}, {value}.values())))"
    return f"(None if {value} is None else {code})" if shape.startswith("?") else code


def _codecs() -> Tuple[Dict[type, Callable[[tuple], tuple]], List[Callable[[tuple], tuple]]]:
    namespace: Dict[str, Any] = {"_tuple_new": _tuple_new, "partial": functools.partial}
    lines = []
    for record in RECORDS:
        name, code = record.__name__, _CODE_OF[record]
        namespace[f"_{name}"] = record
        nested = [_nested_record(hint) for hint in _field_types(record)]
        count = len(record._fields)
        if not any(inner for _, inner in nested):
            lines.append(f"_flat_{name} = tuple")  # its fields alone, in a record-typed field
            lines.append(f"_raise_{name} = partial(_tuple_new, _{name})")
            lines.append(f"def _out_{name}(m): return ({code}, *m)")
            lines.append(f"def _in_{name}(t): return _tuple_new(_{name}, t[1:])")
            continue
        flat = ", ".join(_convert(shape, inner, f"m[{i}]", f"_flat_{inner.__name__}" if inner else "")
                         for i, (shape, inner) in enumerate(nested))
        raised = ", ".join(_convert(shape, inner, f"t[{i}]", f"_raise_{inner.__name__}" if inner else "")
                           for i, (shape, inner) in enumerate(nested))
        raised_top = ", ".join(_convert(shape, inner, f"t[{i + 1}]", f"_raise_{inner.__name__}" if inner else "")
                               for i, (shape, inner) in enumerate(nested))
        comma = "," if count == 1 else ""
        lines.append(f"def _flat_{name}(m): return ({flat}{comma})")
        lines.append(f"def _raise_{name}(t): return _tuple_new(_{name}, ({raised}{comma}))")
        # Exec's nested fields are usually all None: then it travels like a flat record.
        optional = [i for i, (shape, inner) in enumerate(nested) if inner is not None]
        if all(nested[i][0].startswith("?") for i in optional):
            none_out = " and ".join(f"m[{i}] is None" for i in optional)
            none_in = " and ".join(f"t[{i + 1}] is None" for i in optional)
            lines.append(f"def _out_{name}(m): return ({code}, *m) if {none_out} else ({code}, {flat})")
            lines.append(f"def _in_{name}(t): return _tuple_new(_{name}, t[1:]) if {none_in} "
                         f"else _tuple_new(_{name}, ({raised_top}{comma}))")
        else:
            lines.append(f"def _out_{name}(m): return ({code}, {flat})")
            lines.append(f"def _in_{name}(t): return _tuple_new(_{name}, ({raised_top}{comma}))")
    # (The functions look each other up when called: the order of RECORDS does not matter here.)
    exec("\n".join(lines), namespace)
    return ({record: namespace[f"_out_{record.__name__}"] for record in RECORDS},
            [namespace[f"_in_{record.__name__}"] for record in RECORDS])


_OUT, _IN = _codecs()


def _constructor(record: type) -> Callable[..., tuple]:
    """`record.new`: a plain function taking the fields by keyword (see the module docstring)."""
    defaults = record._field_defaults
    params = ", ".join(f"{name}=_defaults[{name!r}]" if name in defaults else name for name in record._fields)
    fields = "".join(f"{name}, " for name in record._fields)
    namespace = {"_tuple_new": _tuple_new, "_record": record, "_defaults": defaults}
    exec(f"def new({params}): return _tuple_new(_record, ({fields}))", namespace)
    return namespace["new"]


for _record in RECORDS:
    _record.new = staticmethod(_constructor(_record))  # type: ignore[attr-defined]


def to_wire(messages: List[tuple]) -> List[tuple]:
    """Messages as plain tuples, for pickling into a frame (protocol.encode)."""
    if len(messages) == 1:  # a worker's Done, a Reply: most frames (a comprehension costs a call)
        message = messages[0]
        return [_OUT[message.__class__](message)]
    out = _OUT
    return [out[message.__class__](message) for message in messages]


def from_wire(items: List[tuple]) -> List[tuple]:
    """The messages of an unpickled frame (protocol.decode)."""
    if len(items) == 1:
        item = items[0]
        return [_IN[item[0]](item)]
    into = _IN
    return [into[item[0]](item) for item in items]
