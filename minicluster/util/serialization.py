"""Ray's `ray.util.register_serializer` / `deregister_serializer`: custom pickling of a type.

Runs in the process that calls it, and applies there only, as in Ray: a serializer
registered on the driver is used when the driver pickles (task arguments, put), and the
deserializer travels by value inside each pickled object, so workers rebuild such values
without registering anything. A worker that must itself pickle instances (to return them)
registers the serializer in that worker. Matching is on the exact type, as pickle's
dispatch table does (subclasses are not covered).
"""

from __future__ import annotations

from typing import Any, Callable

from minicluster._private.store import serialization


def register_serializer(cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]) -> None:
    """Pickle instances of `cls` as `deserializer(serializer(obj))`: `serializer` turns one into
    something picklable, `deserializer` (itself picklable) rebuilds it."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer() needs a class, got {cls!r}")

    def reduce(obj: Any) -> tuple:
        return deserializer, (serializer(obj),)

    serialization.register_reducer(cls, reduce)


def deregister_serializer(cls: type) -> None:
    """Forget the serializer of `cls` in this process (nothing happens if there is none)."""
    serialization.unregister_reducer(cls)
