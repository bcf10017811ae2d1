"""A worker process: runs tasks the head sends it, one at a time, and reports results.

Forked by its node manager (the zygote, node_manager.py), so it starts with
the runtime already imported. It connects to the head itself and is then
reused for task after task until it is told to go, reaches `max_calls`, or
its node or the driver dies. Its main thread does the work:

    head socket ──► Exec ──► run the task ──► Done ──► head socket

and reads the socket itself whenever it has no task to run. Who reads it while a
task runs (the task's own get/wait; the SIGINT handler for cancel(); a reader
thread for async and threaded actors) is inbox.py's to decide:

    Reply ──────► wakes a get/wait blocked in the running task
    CancelTask ─► KeyboardInterrupt in the main thread (SIGINT)
    EOF ────────► the driver is gone: exit at once

(The messages are defined in wire/messages.py.) A second thread sends the refs a task
dropped when nothing else has gone out for RELEASE_FLUSH_S (_send_releases).

An actor's worker runs its calls on the main thread too, in order; a threaded
actor (max_concurrency > 1, or concurrency groups) on a thread pool per group,
an async actor on an event loop thread per group (async_actor.py) that the main
thread hands the calls to in batches.

Code running in the worker reaches the runtime through worker_client.py.

Results up to INLINE_THRESHOLD bytes travel in the Done message; larger ones
are written to this node's store folder first. An exception in a task is the
task's result: a RayTaskError carrying the traceback, marked retryable when
`retry_exceptions` covers it (the head decides whether retries are left).
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import gc
import inspect
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from minicluster._private.client import context
from minicluster._private.client.object_ref import set_counter
from minicluster._private.common.task_spec import ACTOR_CREATION_TASK, ACTOR_TASK
from minicluster._private.node.call_args import ArgumentLost, resolve_args
from minicluster._private.node.generator_tasks import GeneratorTasks
from minicluster._private.node.inbox import Inbox
from minicluster._private.node.proc_title import IDLE, ProcTitle, actor_title, task_title
from minicluster._private.node.task_call import Call, actor_callable, split_returns
from minicluster._private.node.task_environment import TaskEnvironment
from minicluster._private.node.task_errors import error_results, one_line, task_error
from minicluster._private.node.worker_client import WorkerClient, store_value
from minicluster._private.observe import log_files
from minicluster._private.store import object_store
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg
from minicluster._private.wire.protocol import Connection
from minicluster.exceptions import AsyncioActorExit, RayError

if TYPE_CHECKING:  # imported when an actor needs them: asyncio alone adds ~30 ms to each node's start
    import asyncio
    import concurrent.futures

    from minicluster._private.node.async_actor import AsyncCalls

#: An async actor's calls go to its loop once the queue is empty or this many are waiting.
ASYNC_BATCH = 64
#: Put on the main thread's queue: send the async actor's held replies.
FLUSH_REPLIES = object()
#: How long a worker is idle before its process title says so (proc_title.py).
IDLE_TITLE_AFTER_S = 0.05
#: Refs a task dropped reach the head within this long even if it sends nothing meanwhile.
RELEASE_FLUSH_S = 0.1


class Worker:
    """The worker process's main loop and the handlers of the messages it reads."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        handlers = {kind: handler.__get__(self) for kind, handler in _HANDLERS.items()}
        #: the socket's reads and the tasks they deliver: Exec, FLUSH_REPLIES, or None: exit
        self.inbox = client.inbox = Inbox(client.conn, handlers, self._cancel_due)
        self.function_blobs: Dict[bytes, bytes] = {}
        self.functions: Dict[bytes, Any] = {}
        self.calls: Dict[bytes, int] = {}
        self.current: Optional[bytes] = None
        self.cancel_target: Optional[bytes] = None
        self.in_user_code = False  #: cancel() may interrupt only while this is true
        self.cancelled_queued: set = set()
        # (reentrant: the SIGINT handler may read a CancelTask while the main thread holds it)
        self._cancel_lock = threading.RLock()
        self.stolen: set = set()  # queued tasks the head re-assigned; skipped when reached
        self.actor: Any = None  # the actor instance, once this worker is dedicated to one
        #: a threaded actor's (max_concurrency > 1, or concurrency groups): a thread pool per
        #: concurrency group, "" the default group's
        self.pools: Optional[Dict[str, concurrent.futures.ThreadPoolExecutor]] = None
        self.async_calls: Optional[AsyncCalls] = None  # async actors: their event loop
        self.main_ident = threading.get_ident()
        self.title = ProcTitle()  #: `ray::IDLE`, `ray::<task>`: what ps shows (proc_title.py)
        self.idle_title = IDLE  #: `ray::<Class>` once this worker holds an actor
        self.title.set(IDLE)
        self.env = TaskEnvironment(client)  #: what a task sees of its process: runtime_env, OMP threads, GPUs
        self.exiting = False  #: the actor called exit_actor(): take no more calls, then exit
        self.generators = GeneratorTasks(self)  #: how generator tasks run (generator_tasks.py)
        client.actor_exit_hook = self.exit_requested
        # Before the head knows this worker (WorkerHello): from then on it may signal a cancel.
        signal.signal(signal.SIGINT, self._on_sigint)

    # ---- messages, on whichever thread reads them (inbox.py) ---------------------

    def _on_reply(self, message: msg.Reply) -> None:
        self.client.on_reply(message.request_id, message.payload)

    def _on_define_function(self, message: msg.DefineFunction) -> None:
        self.function_blobs[message.function_id] = message.blob

    def _on_cancel(self, message: msg.CancelTask) -> None:
        self._cancel(message.task_id)

    def _on_steal(self, message: msg.Steal) -> None:
        # The head took these back while our task was blocked; they have not started.
        self.stolen.update(message.task_ids)

    def _on_stream_ack(self, message: msg.StreamAck) -> None:
        self.generators.on_ack(message)

    def _on_collect_garbage(self, message: msg.CollectGarbage) -> None:
        # On a thread of its own: whoever read the message (a task's get, the SIGINT handler)
        # may hold locks that finalizers take.
        threading.Thread(target=gc.collect, name="minicluster-gc", daemon=True).start()

    def _on_retire(self, message: msg.Retire) -> None:
        self.inbox.tasks.put(None)

    def _cancel(self, task_id: bytes) -> None:
        self.client.cancel_requested.add(task_id)
        if self.async_calls is not None:
            self.async_calls.cancel(task_id)  # at the call's next await, as Ray cancels the asyncio task
            return
        # Atomic with _begin's look at cancelled_queued: either the task is current here
        # (interrupt it) or _begin finds the cancel queued. Without the lock, a cancel could
        # land after _begin looked and before the task counted as current, and be lost.
        with self._cancel_lock:
            if self.current == task_id:
                self.cancel_target = task_id
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            else:
                self.cancelled_queued.add(task_id)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # The head signals after writing a CancelTask, for a task busy in its own code that
        # reads nothing; the reader that reads it signals again to interrupt.
        self.inbox.on_signal()
        if not self.inbox.main_reading and self._cancel_due():  # (never in the middle of a frame)
            raise KeyboardInterrupt

    def _cancel_due(self) -> bool:
        """(main thread) A cancel aimed at the task running right now, inside its own code: raised
        anywhere else (while its result is sent, say) it would escape the task and kill the worker."""
        if self.in_user_code and self.cancel_target is not None and self.cancel_target == self.current:
            self.cancel_target = None
            return True
        return False

    # ---- main thread -------------------------------------------------------------

    def run(self) -> None:
        client = self.client
        async_batch: List[msg.Exec] = []  # an async actor's calls, handed to its loop together
        tasks = self.inbox.tasks
        while True:
            if not tasks.empty():  # (not get_nowait: an Empty raised after every task costs more)
                request = tasks.get_nowait()
            else:
                if async_batch:
                    self.async_calls.start(async_batch)  # type: ignore[union-attr]
                    async_batch = []
                client.send()  # going idle: report refs the last task dropped, so they can be freed
                request = self._next_task()
            if request is None or self.exiting:
                break
            if request is FLUSH_REPLIES:
                client.send()  # an async actor's finished calls (async_actor.py)
                continue
            if request.task_id in self.stolen:
                self.stolen.discard(request.task_id)
                continue
            if request.task_type == ACTOR_TASK and self.async_calls is not None:
                async_batch.append(request)
                if len(async_batch) >= ASYNC_BATCH:  # a steady stream must not wait for a lull
                    self.async_calls.start(async_batch)
                    async_batch = []
                continue
            if request.task_type == ACTOR_TASK and self.pools is not None:
                self.pools[request.concurrency_group].submit(self._run_threaded, request)
                continue
            done, value = self.execute(request)
            # Sent before the next task starts, never held back: if that task kills
            # the process, the head must already know this one finished, so that
            # the crash is charged to the task that caused it.
            if not _ended_actor(done):
                client.send(done)
            del value  # only now: refs inside the value must not be released before the reply
            if done.retire:  # max_calls reached: the head says when to go (see _wait_for_release)
                self._wait_for_release()
            if done.retire or self.exiting:  # (or the actor exits)
                break
        if self.actor is not None or self.exiting:  # (exiting: its constructor called exit_actor)
            self._end_actor()
        client.send()
        log_files.flush_output()
        os._exit(0)

    def _next_task(self) -> Any:
        # The title says IDLE only once the worker stays idle a moment: a stream of
        # round trips (get(f.remote())) would otherwise rewrite it twice per task.
        return self.inbox.next_task(lambda: self.title.set(self.idle_title), IDLE_TITLE_AFTER_S)

    def _wait_for_release(self) -> None:
        """After its last call: run nothing more, and exit once the head says so (Retire). The head
        waits until no object this worker owns is still referenced: they die with their owner."""
        self.client.send()
        self.title.set(IDLE)
        while self._next_task() is not None:
            pass  # tasks the head had queued here and took back: they run elsewhere

    def exit_requested(self, task_id: bytes) -> None:
        """exit_actor() (or __ray_terminate__), from any thread, in a call or in a background
        asyncio task: the head hears it first (no restart; the calls not done fail with
        ActorDiedError), then the main loop stops taking calls and the worker exits."""
        with self._cancel_lock:
            if self.exiting:
                return
            self.exiting = True
        self.client.send(msg.ActorExiting.new(task_id=task_id))
        self.inbox.put(None)  # wakes the main loop if it waits for work

    def _end_actor(self) -> None:
        """The actor ends on purpose (its last handle is gone, or exit_actor): calls running
        on its pool finish, queued ones never start (the head fails them); then, as in Ray,
        its __ray_shutdown__ and the atexit handlers its code installed run."""
        for pool in (self.pools or {}).values():
            pool.shutdown(wait=False, cancel_futures=True)  # every group's queued calls first
        for pool in (self.pools or {}).values():
            pool.shutdown(wait=True)
        shutdown = getattr(self.actor, "__ray_shutdown__", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # noqa: BLE001 - printed, as Ray logs it; the actor ends anyway
                traceback.print_exc()
        atexit._run_exitfuncs()

    def _function(self, function_id: bytes) -> Any:
        fn = self.functions.get(function_id)
        if fn is None:
            fn = pickle.loads(self.function_blobs.pop(function_id))
            self.functions[function_id] = fn
        return fn

    def _run_threaded(self, request: msg.Exec) -> None:
        """One call of a threaded actor, on its pool."""
        done, value = self.execute(request)
        if not _ended_actor(done):
            self.client.send(done)
        del value  # as in run: refs inside it are released only once the reply is written

    def execute(self, request: msg.Exec) -> Tuple[msg.Done, Any]:
        """Run one task; returns its Done message and what the caller keeps until the message
        is sent: its return value (and its arguments)."""
        call = self._begin(request)
        if call.error is not None:
            return self._end(call, exc=call.error), None
        value, error = None, None
        if self.pools is None:  # (a threaded actor runs calls at once: its title stays its class's name)
            self.title.set(task_title(call.name))
        try:
            # cancel() interrupts the main thread's task, and only inside its own code: raised
            # anywhere else (while its result is sent, say) it would escape and kill the worker.
            # So set only inside the try: a SIGINT handled right after it lands in the except.
            self.in_user_code = call.task_type != ACTOR_TASK
            if self.in_user_code and self.cancel_target == call.task_id:
                raise KeyboardInterrupt  # the cancel came while its arguments were loaded
            value = call.fn(*call.args, **call.kwargs)
            if call.num_returns < 0:
                value = self.generators.run(call, value)
        except BaseException as exc:  # noqa: BLE001 - every failure of user code is the task's result
            error = exc
        finally:
            self.in_user_code = False
        done = self._end(call, value, error)
        # The arguments go with the value, once the reply is sent: unmapping a large argument's
        # store file takes ~5 ms per 100 MB, which the caller would otherwise wait for.
        return done, (value if call.kept is None else call.kept, call.args, call.kwargs)

    async def execute_async(self, request: msg.Exec, slots: "asyncio.Semaphore") -> Tuple[msg.Done, Any]:
        """Run one call of an async actor on its event loop (async_actor.py); awaits coroutine
        methods, at most `slots` at once. Returns the Done message and the return value."""
        call = self._begin(request)
        if call.error is not None:
            return self._end(call, exc=call.error), None
        try:
            value = call.fn(*call.args, **call.kwargs)
            if call.num_returns < 0:
                async with slots:
                    value = await self.generators.run_async(call, value)
            elif inspect.isawaitable(value):
                try:
                    async with slots:
                        value = await value
                except BaseException:
                    if inspect.iscoroutine(value):
                        value.close()  # cancelled while waiting for a slot: it never started
                    raise
        except BaseException as exc:  # noqa: BLE001
            return self._end(call, exc=exc), call.kept
        return self._end(call, value), value

    def flush_replies_soon(self) -> None:
        """From the async actor's loop: have the main thread send the held replies. It is
        idle, so they leave at once even while a coroutine blocks the loop, and the replies
        of the calls that end meanwhile go in the same frame."""
        self.inbox.put(FLUSH_REPLIES)

    def _begin(self, request: msg.Exec) -> Call:
        """Find the callable and resolve its arguments; a failure here is kept in call.error."""
        call = Call(request)
        call.token = self.client.enter_task(call.task_id, call.name, call.func_name)
        with self._cancel_lock:  # (see _cancel)
            if call.task_type != ACTOR_TASK:
                self.current = call.task_id  # cancel() interrupts the main thread's running task
            cancelled = call.task_id in self.cancelled_queued
            self.cancelled_queued.discard(call.task_id)
        env_error = None
        if request.runtime_env is not None and self.client.runtime_env is None:
            env_error = self.env.enter_runtime_env(request.runtime_env)
        if call.task_type != ACTOR_TASK:  # (an actor's calls keep the actor's log marker, group, env and GPUs)
            self.client.current_placement_group = request.placement
            self.env.set_omp_threads(request.num_cpus)
            self.env.set_gpus(request.gpu_ids)
            if call.task_type == ACTOR_CREATION_TASK:
                # From here on this worker's output is the actor's: `(Counter pid=...)`.
                log_files.mark_task(call.name.rsplit(".", 1)[0], log_files.ACTOR_MARKER)
            else:
                log_files.mark_task(call.name)
        try:
            if cancelled:
                raise KeyboardInterrupt
            if env_error is not None:
                raise env_error
            call.fn = self._callable(call)
            if call.faults:  # a test's fault plan: orders for this attempt (fault_hooks.py)
                self.client.transfer_delay = fault_hooks.transfer_delay_of(self.client, call)
            call.args, call.kwargs = resolve_args(self.client, call.args_blob, call.payloads, call)
            if call.faults:
                fault_hooks.carry_out(self.client, call, fault_hooks.START)
        except BaseException as exc:  # noqa: BLE001 - reported as the task's result
            call.error = exc
        return call

    def _callable(self, call: Call) -> Any:
        if call.task_type == ACTOR_TASK:
            if self.actor is None:
                raise RayError(f"this worker holds no actor (call {call.name})")
            return actor_callable(self.actor, call.method)
        fn = self.functions.get(call.function_id)
        if fn is None:  # its first call here
            fn = self._function(call.function_id)
        if call.task_type == ACTOR_CREATION_TASK:
            self.client.current_actor_id = call.actor_config.actor_id
            return lambda *args, **kwargs: self._create_actor(fn, call.actor_config, args, kwargs)
        return fn

    def _create_actor(self, cls: type, config: msg.ActorConfig, args: tuple, kwargs: dict) -> None:
        # Each concurrency group has its own limit and threads (event loop, for an async actor):
        # a group's blocked calls never hold back another's. "" is the default group.
        groups = {"": config.max_concurrency, **config.concurrency_groups}
        self.idle_title = actor_title(config.class_name)
        async_calls = None
        if config.is_async:
            from minicluster._private.node.async_actor import AsyncCalls  # (asyncio is loaded only by async actors)

            async_calls = AsyncCalls(self, groups)
        try:
            # As in Ray, an async actor's constructor runs on its event loop (it may create tasks).
            self.actor = cls(*args, **kwargs) if async_calls is None else async_calls.construct(cls, args, kwargs)
        except BaseException:
            # The worker goes back to the pool for plain tasks.
            self.client.current_actor_id = None
            self.idle_title = IDLE
            if async_calls is not None:
                async_calls.stop()
            raise
        if async_calls is not None:
            self.async_calls = async_calls
            self.client.in_async_actor = True
        elif len(groups) > 1 or config.max_concurrency > 1:
            import concurrent.futures

            self.pools = {group: concurrent.futures.ThreadPoolExecutor(limit, f"actor-{group or 'default'}")
                          for group, limit in groups.items()}
        if self.async_calls is not None or self.pools is not None:
            self.inbox.start_reader_thread()  # its calls run elsewhere while its messages keep coming
        return None

    def _end(self, call: Call, value: Any = None, exc: Optional[BaseException] = None) -> msg.Done:
        """Store the results (or the error) and build the Done message."""
        client = self.client
        error_info = None
        name = call.name
        return_ids = call.return_ids()
        if call.faults:
            fault_hooks.carry_out(client, call, fault_hooks.BEFORE_STORE)
            client.transfer_delay = None
        if client.actor_exit_requested and not isinstance(exc, AsyncioActorExit):
            exc = AsyncioActorExit("exit_actor() is called.")  # its code caught the exception
        try:
            if exc is not None:
                raise exc
            if call.num_returns > 0 and type(value) is GeneratorType:  # (inspect.isgenerator, without a call)
                results, error_info = self.generators.static_results(call, value, return_ids)
            elif call.num_returns == 1:  # nearly always: nothing to split, no comprehension (a call in 3.11)
                results = [store_value(client, return_ids[0], value, what=f"return value of {name}")]
            else:
                outputs = split_returns(value, call.num_returns, name)
                results = [store_value(client, oid, out, what=f"return value of {name}")
                           for oid, out in zip(return_ids, outputs)]
        except ArgumentLost as lost:
            # Not the task's fault: the head rebuilds the argument and runs the task again.
            results = [msg.Value.new(kind="i", data=b"", refs=[]) for _ in return_ids]
            error_info = msg.ErrorInfo.new(error_type="ARG_LOST", retryable=False, message=lost.object_hex)
        except AsyncioActorExit:
            self.exit_requested(call.task_id)  # (done already if exit_actor() was called)
            results = [msg.Value.new(kind="i", data=b"", refs=[]) for _ in return_ids]
            error_info = msg.ErrorInfo.new(error_type="ACTOR_EXIT", retryable=False, message="exit_actor()")
        except SystemExit as exit_:
            # As in Ray, sys.exit() in a task ends the worker: the head sees a crash and retries.
            client.send()  # but an async actor's other calls that finished are reported first
            log_files.flush_output()
            os._exit(exit_.code if isinstance(exit_.code, int) else 1)
        except BaseException as error:  # noqa: BLE001 - every failure of user code is the task's result
            # KeyboardInterrupt is how cancel() reaches a running task; Ray reports a
            # self-raised one the same way (TaskCancelledError), never retried.
            asyncio = sys.modules.get("asyncio")  # (loaded only by async actors)
            cancelled = isinstance(error, KeyboardInterrupt) or (
                asyncio is not None and isinstance(error, asyncio.CancelledError))
            wrapped, retryable = task_error(error, name, call.retry_exceptions, call.task_id if cancelled else None)
            results = error_results(client, return_ids, wrapped, name)
            if call.num_returns < 0 and not cancelled:
                results = self.generators.report_error(call, wrapped, results, return_ids)
            error_type = "TASK_CANCELLED" if cancelled else "TASK_EXECUTION_EXCEPTION"
            error_info = msg.ErrorInfo.new(error_type=error_type, retryable=retryable and not cancelled,
                                           message=one_line(error))
        finally:
            if call.num_returns < 0:
                self.generators.finish(call)
            client.cancel_requested.discard(call.task_id)
            self.cancelled_queued.discard(call.task_id)  # a cancel of a running actor call lands there
            if call.task_type != ACTOR_TASK:
                self.current = None
                self.cancel_target = None
            if call.token is not None:
                client.leave_task(call.token)
        end = time.time()
        self.calls[call.function_id] = calls = self.calls.get(call.function_id, 0) + 1
        retire = bool(call.max_calls) and calls >= call.max_calls
        log_files.restore_output()  # flushed, and mended if the task closed them
        if call.faults:
            fault_hooks.carry_out(client, call, fault_hooks.BEFORE_REPLY)
        return msg.Done.new(task_id=call.task_id, attempt=call.attempt, results=results, error=error_info,
                            start=call.start, end=end, retire=retire)


def _ended_actor(done: msg.Done) -> bool:
    """The call ended its actor (exit_actor): its Done is not sent; the head fails the call
    with ActorDiedError once the worker is gone, like the calls queued behind it."""
    return done.error is not None and done.error.error_type == "ACTOR_EXIT"


def _set_parent_death_signal() -> None:
    """Linux: die with the node manager even if nobody else notices (belt and braces)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _send_releases(client: WorkerClient) -> None:
    """(releases thread) Releases ride on the frames a worker sends anyway; a task that sends
    nothing for a while (a long computation, a loop reading the state API's files) would hold
    the objects it dropped until it ends. Safe to send alone: a ref dropped here is in no
    message still to be sent (each message's refs are held until it is out)."""
    while True:
        time.sleep(RELEASE_FLUSH_S)
        if client.refs.has_released():
            try:
                client.send()
            except OSError:
                return


def worker_main(socket_path: str, key: bytes, worker_id: bytes, node_id: bytes, layout: object_store.Layout,
                capacity: int, parent_pid: int) -> None:
    """Entry point of a freshly forked worker; never returns."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:
        os._exit(1)  # the node manager died between fork and prctl
    # A crash in C code (a segfault in an extension, say) prints the Python stack that caused
    # it to fd 2, the worker's .err file, which the log monitor shows on the driver's terminal.
    faulthandler.enable(all_threads=False)
    try:
        conn = Connection.connect(socket_path, key)
        client = WorkerClient(conn, worker_id, node_id, layout, capacity)
        client.session_dir = os.path.dirname(socket_path)  # <session>/head.sock
        client.session_name = os.path.basename(client.session_dir)
        set_counter(client.refs)
        context.set_client(client, is_worker=True)
        worker = Worker(client)
        conn.send(msg.WorkerHello.new(worker_id=worker_id, node_id=node_id, pid=os.getpid()))
        threading.Thread(target=_send_releases, args=(client,), name="minicluster-releases", daemon=True).start()
        worker.run()
    except BaseException:  # noqa: BLE001 - a worker must never fall back into the zygote's code
        traceback.print_exc()
    finally:
        os._exit(1)


_HANDLERS: Dict[type, Callable[[Worker, Any], None]] = {
    msg.Reply: Worker._on_reply,
    msg.DefineFunction: Worker._on_define_function,
    msg.CancelTask: Worker._on_cancel,
    msg.Steal: Worker._on_steal,
    msg.Retire: Worker._on_retire,
    msg.StreamAck: Worker._on_stream_ack,
    msg.CollectGarbage: Worker._on_collect_garbage,
}
