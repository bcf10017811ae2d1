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
    head -> worker           Exec, DefineFunction, Reply, CancelTask, Steal, Retire
    worker -> head           WorkerHello, Done, DefineFunction, Submit, Put, Refs, Located,
                             Lost, Get, Wait, Forget, Cancel, QueryState, CreateActor,
                             LookupActor, KillActor, FaultFired
    nested                   Payload, Value, ErrorInfo, ActorConfig, ActorFound, FaultOrder,
                             FaultRef, FetchDelay

How they are pickled, and why: a NamedTuple pickles through the generic
reduce path, a Python `__getnewargs__` per message, a class reference per
distinct class in each frame, and its Python `__new__` binding every field
again when loaded. Instead one reducer, registered with copyreg for every
record, writes a message as `_rebuild(code, *fields)`, the code being its
position in RECORDS (every process of a session runs the same files): a frame
names one function however many kinds it holds, and loading calls
tuple.__new__ directly. That halves the generic path's cost; against the plain
tuples this replaced (CPython 3.11, best of 40 rounds) it is still +0.45 us
to dump and +0.3 us to load an Exec in a frame of 16, and +1.5 us each way for
a frame of one Done with its Value (looking up `_rebuild` is most of that).

What records cost the head per tiny task, counted in instructions (callgrind,
a head-only simulation: submit, Done handled, result read): about 34k more
than the tuples, +15%. Building by keyword is 13k of it (a class call packs
the keywords in a dict: Exec 9k, Payload 4k), loading the Done frame 11k,
dumping Exec 4k, reading fields by name 2k. Measured and left out: a generated
`Record.make(**fields)` per record (-8k, but type checkers cannot see its
keywords); a copyreg extension code for `_rebuild` (-4k to -7k on the head,
+5k on each worker's Done frames, and a process-global registration);
tuple subclasses rebuilt by C code (no keyword constructor without a
metaclass, and a class call with keywords builds the dict all the same).
"""

from __future__ import annotations

import copyreg
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
    max_concurrency: int
    is_async: bool
    class_name: str


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
    actor_config: Optional[ActorConfig]
    faults: Optional[Tuple[FaultOrder, ...]]  #: a test's fault plan's orders for this attempt


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


class Retire(NamedTuple):
    """head -> worker: an idle surplus worker; exit after the current task."""


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
    retryable: bool  #: retry_exceptions covers the exception (the head checks the retries left)
    message: str  #: one line; for ARG_LOST the hex id of the argument found missing


class Done(NamedTuple):
    """worker -> head: a task attempt finished, its results stored; sent before the next one starts."""

    task_id: bytes
    attempt: int
    results: List[Value]  #: one per return value; for a failure, the error as each value
    error: Optional[ErrorInfo]
    start: float  #: time.time() when the worker began the attempt
    end: float
    retire: bool  #: the worker reached max_calls and exits now


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
    """worker -> head: a cluster-state query in a task (nodes(), cluster_resources(), ...);
    replied with the answer."""

    request_id: int
    what: str


class CreateActor(NamedTuple):
    """worker -> head: code in a task created an actor; replied with None, or the ValueError's
    text (its name is taken)."""

    request_id: int
    spec: "TaskSpec"
    meta: Dict[str, Any]


class ActorFound(NamedTuple):
    """A named actor, as the head's lookup returns it (the Reply to LookupActor, and the driver's)."""

    actor_id: bytes
    meta: Dict[str, Any]


class LookupActor(NamedTuple):
    """worker -> head: get_actor() in a task; replied with an ActorFound, or None."""

    request_id: int
    name: str
    namespace: str


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


#: Every record above; each is pickled by `_reduce`.
RECORDS = (
    Spawn, NodeHello, WorkerExit,
    Payload, ActorConfig, FetchDelay, FaultRef, FaultOrder, Exec, DefineFunction, Reply, CancelTask, Steal, Retire,
    WorkerHello, Value, ErrorInfo, Done, Submit, Put, Refs, Located, Lost, Get, Wait, Forget, Cancel,
    QueryState, CreateActor, ActorFound, LookupActor, KillActor, FaultFired,
)

_CODE_OF: Dict[type, int] = {record: code for code, record in enumerate(RECORDS)}
_tuple_new = tuple.__new__


def _rebuild(code: int, *fields: Any) -> tuple:
    """Unpickling: the record RECORDS[code], built in C (see the module docstring)."""
    return _tuple_new(RECORDS[code], fields)


def _reduce(record: tuple) -> Tuple[Callable[..., tuple], tuple]:
    return _rebuild, (_CODE_OF[record.__class__], *record)


for _record in RECORDS:
    copyreg.pickle(_record, _reduce)
