"""A call's arguments, loaded in the worker process that runs the call.

The head sends each top-level ref argument's payload with the call (inline bytes, store
locations, or the error the object holds). Loading them can fail in two ways that are
not the task's own fault:
- an argument's stored copy vanished (its node died) before it was read: ArgumentLost;
  the head rebuilds the argument and sends the call again;
- an argument is a failed object (its task raised, or it was lost for good after the
  call was sent): ArgumentFailed; the task fails with Ray's "At least one of the input
  arguments ..." error, as when the head sees the failed argument first.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from minicluster._private.client.runtime_client import RuntimeClient
from minicluster._private.store.serialization import deserialize
from minicluster._private.wire import fault_hooks
from minicluster._private.wire import messages as msg
from minicluster.exceptions import RayError


class ArgumentLost(Exception):
    """An argument's stored copy vanished (its node died) before this worker read it."""

    def __init__(self, object_hex: str) -> None:
        super().__init__(object_hex)
        self.object_hex = object_hex


class ArgumentFailed(Exception):
    """An argument is a failed object: `error` is what it holds."""

    def __init__(self, error: RayError) -> None:
        super().__init__(str(error))
        self.error = error


def resolve_args(client: RuntimeClient, args_blob: bytes, payloads: Optional[Dict[bytes, msg.Payload]],
                 call: Any) -> Tuple[list, dict]:
    """The call's arguments, with the value of each top-level ref put in its slot
    (remote_function._serialize_args). Raises ArgumentLost or ArgumentFailed (see above)."""
    try:
        return _load(client, args_blob, payloads, call)
    except FileNotFoundError as exc:
        raise ArgumentLost(str(exc.args[0])) from None


def _load(client: RuntimeClient, args_blob: bytes, payloads: Optional[Dict[bytes, msg.Payload]],
          call: Any) -> Tuple[list, dict]:
    (args, kwargs, slots), _ = deserialize(args_blob)
    if call.faults:
        fault_hooks.carry_out(client, call, fault_hooks.LOAD_ARGS)
    if slots:
        args = list(args)
        for i in range(0, len(slots), 2):
            position, object_id = slots[i], slots[i + 1]
            try:
                value = client.load(object_id, payloads[object_id])  # type: ignore[index]
            except RayError as exc:
                raise ArgumentFailed(exc) from None
            if type(position) is int:
                args[position] = value
            else:
                kwargs[position] = value
    return args, kwargs
