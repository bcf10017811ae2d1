"""What the head does with each message a node manager or a worker sends (part of the head).

Runs in the driver process, on the hub's I/O thread, under the head's lock: Head.on_messages
(head.py) looks each message's class up in HANDLERS and calls its handler with the peer, the
peer's record (a NodeRecord, a WorkerRecord, or None before its hello) and the message. Head is
built on this class; a handler mostly hands the message to the flow that owns it (task_flow,
actor_flow, waiting, recovery, streams) and posts the reply. The messages: wire/messages.py.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from minicluster._private.head.virtual_nodes import NodeRecord, WorkerRecord
from minicluster._private.store import object_store
from minicluster._private.store.serialization import error_blob
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg
from minicluster._private.wire.hub import Peer
from minicluster.exceptions import ObjectStoreFullError


class HeadMessages:
    """The message handlers of Head; see the module docstring. The attributes and methods they
    use are Head's (head.py)."""

    def _on_node_hello(self, peer: Peer, state: Any, message: msg.NodeHello) -> None:
        node = self.nodes.get(message.node_id)
        if node is None:
            return
        node.peer = peer
        peer.state = node
        node.hello.set()
        # Tasks placed here before it said hello (add_node schedules at once) could not ask it
        # for workers then: ask now for those its first pool will not cover (an actor needs its own).
        self.task_flow.replenish(node)

    def _on_worker_exit(self, peer: Peer, state: Any, message: msg.WorkerExit) -> None:
        worker = self.workers.get(message.worker_id)
        if worker is None:
            node = state
            if isinstance(node, NodeRecord) and node.alive and node.pending_spawn > 0:
                node.pending_spawn -= 1  # died before it could connect
                self.task_flow.replenish(node)
            return
        if worker.peer is not None:
            self._handle(worker.peer, self.hub.drain(worker.peer))
        self.recovery.worker_died(worker, message.exitcode)

    def _on_worker_hello(self, peer: Peer, state: Any, message: msg.WorkerHello) -> None:
        worker_id = message.worker_id
        node = self.nodes.get(message.node_id)
        if node is None or not node.alive:
            self.hub.close_peer(peer)
            return
        worker = WorkerRecord(worker_id, node, message.pid, peer)
        peer.state = worker
        self.workers[worker_id] = worker
        node.workers[worker_id] = worker
        node.pending_spawn = max(0, node.pending_spawn - 1)
        self.task_flow.worker_free(worker)

    def _on_fn(self, peer: Peer, worker: WorkerRecord, message: msg.DefineFunction) -> None:
        # Not marked as known to this worker: it holds the function as a RemoteFunction,
        # not in its task-function cache, so its first task of it must carry the blob.
        self.functions[message.function_id] = message.blob

    def _on_submit(self, peer: Peer, worker: WorkerRecord, message: msg.Submit) -> None:
        spec = message.spec
        for object_id in spec.return_ids():
            self.objects.create(object_id, worker.worker_id)
            self.objects.add_borrower(object_id, worker.worker_id)
            worker.borrowed.add(object_id)
            worker.owned.add(object_id)
        self.task_flow.add_task(spec, worker.node.node_id)

    def _on_put(self, peer: Peer, worker: WorkerRecord, message: msg.Put) -> None:
        object_id, value = message.object_id, message.value
        self.objects.create(object_id, worker.worker_id)
        self.objects.add_borrower(object_id, worker.worker_id)  # before storing: the put's ref holds it
        worker.borrowed.add(object_id)
        worker.owned.add(object_id)
        node_id = worker.node.node_id
        problem = self.objects.no_room_for(node_id, value.data) if value.kind == "s" else None
        if problem is not None:  # the store is full and cannot spill: getting this object raises why
            object_store.delete(self.session.layout.dir_of(node_id), object_id)
            blob = error_blob(ObjectStoreFullError(f"put() of an object of {value.data} bytes: {problem}"))
            self.task_flow.store(object_id, "e", blob, [], node_id, True)
            return
        self.task_flow.store(object_id, value.kind, value.data, value.refs, node_id, False)

    def _on_refs(self, peer: Peer, worker: WorkerRecord, message: msg.Refs) -> None:
        objects = self.objects
        for object_id in message.added:
            if objects.add_borrower(object_id, worker.worker_id):
                worker.borrowed.add(object_id)
        for object_id in message.removed:
            worker.borrowed.discard(object_id)
            objects.remove_borrower(object_id, worker.worker_id)

    def _on_located(self, peer: Peer, worker: WorkerRecord, message: msg.Located) -> None:
        self.objects.add_location(message.object_id, message.node_id, message.size)
        self.objects.make_room(message.node_id)

    def _on_lost(self, peer: Peer, worker: WorkerRecord, message: msg.Lost) -> None:
        self.recovery.check_copies(message.object_id)

    def _on_get(self, peer: Peer, worker: WorkerRecord, message: msg.Get) -> None:
        object_ids = message.object_ids  # (the worker itself enforces get()'s timeout)
        self.waiting.worker_wait(worker, message.request_id, object_ids, len(object_ids), None, reply_all=True)

    def _on_wait(self, peer: Peer, worker: WorkerRecord, message: msg.Wait) -> None:
        self.waiting.worker_wait(worker, message.request_id, message.object_ids, message.num_returns,
                                 message.timeout, reply_all=False)

    def _on_forget(self, peer: Peer, worker: WorkerRecord, message: msg.Forget) -> None:
        self.waiting.forget(worker, message.request_id)

    def _on_cancel(self, peer: Peer, worker: WorkerRecord, message: msg.Cancel) -> None:
        try:
            self.task_flow.cancel(message.object_id, message.force, message.recursive)
            problem = None
        except ValueError as exc:  # raised by the task's cancel() call
            problem = str(exc)
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=problem))

    def _on_create_actor(self, peer: Peer, worker: WorkerRecord, message: msg.CreateActor) -> None:
        try:
            answer = self.create_actor(message.spec, message.meta, worker.node.node_id, worker.worker_id,
                                       message.get_if_exists)
            if answer is None:
                # The creator's handle holds the creation result's ref from now on (worker_client.py).
                handle_ref = message.spec.return_ids()[0]
                self.objects.add_borrower(handle_ref, worker.worker_id)
                worker.borrowed.add(handle_ref)
        except ValueError as exc:
            answer = str(exc)
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=answer))

    def _on_lookup_actor(self, peer: Peer, worker: WorkerRecord, message: msg.LookupActor) -> None:
        found = self.lookup_actor(message.name, message.namespace)
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=found))

    def _on_actor_exiting(self, peer: Peer, worker: WorkerRecord, message: msg.ActorExiting) -> None:
        self.actor_flow.actor_exiting(worker, message.task_id)

    def _on_kill_actor(self, peer: Peer, worker: WorkerRecord, message: msg.KillActor) -> None:
        self.kill_actor(message.actor_id, message.no_restart)

    def _on_state(self, peer: Peer, worker: WorkerRecord, message: msg.QueryState) -> None:
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=self.state(message.what, message.about)))

    def _on_done(self, peer: Peer, worker: WorkerRecord, message: msg.Done) -> None:
        self.task_flow.task_done(worker, message)
        faults = self.head_state.faults
        if faults is not None:
            faults.after_done(worker)  # node triggers of a test's fault plan (fault_hooks.py)

    def _on_stream_item(self, peer: Peer, worker: WorkerRecord, message: msg.StreamItem) -> None:
        self.task_flow.streams.item(worker, message)

    def _on_stream_abandon(self, peer: Peer, worker: WorkerRecord, message: msg.StreamAbandon) -> None:
        for task_id in message.task_ids:
            self.task_flow.streams.abandon(task_id)

    def _on_stream_next(self, peer: Peer, worker: WorkerRecord, message: msg.StreamNext) -> None:
        answer = self.task_flow.streams.next(message.task_id, message.advance, worker)
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=answer))

    def _on_change_placement_group(self, peer: Peer, worker: WorkerRecord, message: msg.ChangePlacementGroup) -> None:
        creator = worker.actor.actor_id if worker.actor is not None else None
        answer = self.change_placement_group(message.op, message.args, creator)
        self.post(peer, msg.Reply.new(request_id=message.request_id, payload=answer))


HANDLERS: Dict[type, Callable[[Any, Peer, Any, Any], None]] = {
    msg.NodeHello: HeadMessages._on_node_hello,
    msg.WorkerExit: HeadMessages._on_worker_exit,
    msg.WorkerHello: HeadMessages._on_worker_hello,
    msg.DefineFunction: HeadMessages._on_fn,
    msg.Submit: HeadMessages._on_submit,
    msg.Put: HeadMessages._on_put,
    msg.Refs: HeadMessages._on_refs,
    msg.Located: HeadMessages._on_located,
    msg.Lost: HeadMessages._on_lost,
    msg.Get: HeadMessages._on_get,
    msg.Wait: HeadMessages._on_wait,
    msg.Forget: HeadMessages._on_forget,
    msg.Cancel: HeadMessages._on_cancel,
    msg.Done: HeadMessages._on_done,
    msg.QueryState: HeadMessages._on_state,
    msg.CreateActor: HeadMessages._on_create_actor,
    msg.LookupActor: HeadMessages._on_lookup_actor,
    msg.KillActor: HeadMessages._on_kill_actor,
    msg.ActorExiting: HeadMessages._on_actor_exiting,
    msg.ChangePlacementGroup: HeadMessages._on_change_placement_group,
    msg.FaultFired: fault_hooks.fault_message,
    msg.StreamItem: HeadMessages._on_stream_item,
    msg.StreamNext: HeadMessages._on_stream_next,
    msg.StreamAbandon: HeadMessages._on_stream_abandon,
}
