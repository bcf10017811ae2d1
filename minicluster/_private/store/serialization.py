"""Turning values into bytes and back, zero-copy for large buffers.

Runs in every process. A serialized value is one self-describing blob, the
same whether it travels inline in a message or lies in a store file:

    header   MAGIC, flags, buffer count, pickle length
    table    (offset, length) of each out-of-band buffer
    pickle   cloudpickle stream, protocol 5
    buffers  each aligned to 64 bytes

Pickle protocol 5 pulls large buffers (numpy arrays, Arrow columns, bytes-like
PickleBuffers) out of the stream, so writing a value costs one copy into the
store and reading it back costs none: `deserialize` hands the unpickler
read-only memoryviews of the blob (or of the mmapped file), and numpy/pyarrow
build their arrays on top of them. pyarrow objects pickle their buffers
out-of-band themselves, so Arrow tables get the same zero-copy path without
importing pyarrow in processes that never see one.

While a value is pickled, every ObjectRef inside it is recorded (see
`collect_refs`): the runtime needs to know which objects a value keeps alive.
"""

from __future__ import annotations

import io
import marshal
import pickle
import struct
import threading
import types
import warnings
from collections import ChainMap
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import cloudpickle

from minicluster._private.common import config

MAGIC = b"MC01"
FLAG_ERROR = 1  # the value is an exception that `get` raises
_HEADER = struct.Struct("<4sIIQ")
_ENTRY = struct.Struct("<QQ")
ALIGN = 64

_ctx = threading.local()


class SerializationError(TypeError):
    """A value could not be pickled; the message names what and why."""


def _reduce_code(code: types.CodeType) -> Tuple[Any, Tuple[bytes]]:
    # cloudpickle >= 3.1.3 rewrites co_filename to "<dynamic-code>", which strips file names and
    # source lines from remote tracebacks. Every process of a session runs the same interpreter,
    # so marshal (the .pyc format) carries code objects whole, nested ones included.
    return marshal.loads, (marshal.dumps(code),)


#: class -> reducer registered by ray.util.register_serializer in this process (util/serialization.py)
_user_reducers: dict = {}


class _Pickler(cloudpickle.Pickler):
    dispatch_table = ChainMap(_user_reducers, {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def register_reducer(cls: type, reducer: Any) -> None:
    """Pickle instances of exactly `cls` with `reducer` in this process (register_serializer)."""
    _user_reducers[cls] = reducer
    _FAST_TYPES.discard(cls)  # the C pickler's fast path would not consult the reducer


def unregister_reducer(cls: type) -> None:
    _user_reducers.pop(cls, None)


def cloudpickle_dumps(value: Any, buffer_callback: Any = None) -> bytes:
    """cloudpickle.dumps, protocol 5, keeping each function's file name for tracebacks."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=5, buffer_callback=buffer_callback).dump(value)
        return file.getvalue()


def collect_refs() -> Optional[list]:
    """The list ObjectRef.__reduce__ appends to while a value is being pickled."""
    return getattr(_ctx, "refs", None)


class Serialized:
    """A pickled value plus its out-of-band buffers, not yet laid out in memory."""

    __slots__ = ("flags", "pickled", "buffers", "refs", "size", "_layout")

    def __init__(self, flags: int, pickled: bytes, buffers: List[memoryview], refs: List[bytes]) -> None:
        self.flags = flags
        self.pickled = pickled
        self.buffers = buffers
        self.refs = refs
        self._layout = _layout(len(pickled), [b.nbytes for b in buffers])
        self.size = self._layout[-1]

    def chunks(self) -> List[memoryview | bytes]:
        """The blob as a list of pieces (header, pickle, padding, buffers) in order."""
        offsets, _ = self._layout[0], self._layout[-1]
        table = b"".join(_ENTRY.pack(off, buf.nbytes) for off, buf in zip(offsets, self.buffers))
        head = _HEADER.pack(MAGIC, self.flags, len(self.buffers), len(self.pickled)) + table
        parts: List[memoryview | bytes] = [head, self.pickled]
        pos = len(head) + len(self.pickled)
        for off, buf in zip(offsets, self.buffers):
            if off > pos:
                parts.append(b"\0" * (off - pos))
            parts.append(buf)
            pos = off + buf.nbytes
        return parts

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return _HEADER.pack(MAGIC, self.flags, 0, len(self.pickled)) + self.pickled
        return b"".join(self.chunks())


def _layout(pickle_len: int, sizes: Sequence[int]) -> Tuple[List[int], int]:
    pos = _HEADER.size + _ENTRY.size * len(sizes) + pickle_len
    offsets = []
    for size in sizes:
        pos = (pos + ALIGN - 1) // ALIGN * ALIGN
        offsets.append(pos)
        pos += size
    return offsets, pos


def serialize(value: Any, flags: int = 0, what: str = "value") -> Serialized:
    """Pickle `value` with cloudpickle, protocol 5, buffers out-of-band.

    Raises SerializationError naming `what` and the object that failed.
    """
    buffers: List[memoryview] = []
    refs: List[bytes] = []
    outer = getattr(_ctx, "refs", None)
    _ctx.refs = refs
    try:
        pickled = _dumps(value, buffers.append)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is reported the same way
        raise SerializationError(_explain(value, what, exc)) from exc
    finally:
        _ctx.refs = outer
    if outer is not None:
        outer.extend(refs)
    raw = [b.raw() for b in buffers]  # type: ignore[attr-defined]
    return Serialized(flags, pickled, raw, refs)


def _dumps(value: Any, buffer_callback: Any) -> bytes:
    # Plain builtins pickle the same with the C pickler, which is several times
    # faster than cloudpickle's Python-level reducer hook.
    if _is_plain(value, 2):
        return pickle.dumps(value, protocol=5)
    return cloudpickle_dumps(value, buffer_callback)


_FAST_TYPES = {int, float, str, bytes, bool, type(None)}


def register_plain_type(kind: type) -> None:
    """A class whose instances the C pickler handles as well as cloudpickle does (importable,
    with its own __reduce__): values holding them take the fast path too (ObjectRef)."""
    _FAST_TYPES.add(kind)


def _is_plain(value: Any, depth: int) -> bool:
    """Small values made only of builtin scalars, tuples, lists and str-keyed dicts."""
    kind = type(value)
    if kind in _FAST_TYPES:
        return kind is not bytes or len(value) < 65536
    if depth == 0:
        return False
    # Loops, not all(<generator>): this runs on every submit, and a generator costs twice as much.
    if kind is tuple or kind is list:
        if len(value) > 16:
            return False
        for item in value:
            if not _is_plain(item, depth - 1):
                return False
        return True
    if kind is dict:
        if len(value) > 16:
            return False
        for key, item in value.items():
            if type(key) is not str or not _is_plain(item, depth - 1):
                return False
        return True
    return False


def pickle_definition(obj: Any, what: str) -> Tuple[bytes, bytes]:
    """A function or class pickled by value, and its id (a hash of the bytes): how
    remote functions and actor classes are shipped, once per process."""
    import hashlib

    blob = dumps_function(obj, what)
    _check_definition_size(len(blob), what)
    # The id hashes cloudpickle's own stream, which is deterministic; ours is not (marshal
    # output depends on reference counts), and the same function must get the same id in
    # every process that ships it, or the head stores it once per process.
    stable = cloudpickle.dumps(obj, protocol=5)
    return hashlib.blake2b(stable, digest_size=16).digest(), blob


def _check_definition_size(size: int, what: str) -> None:
    warn_at, refuse_at = config.function_size_thresholds()
    if size <= warn_at:
        return
    mib = size / 2**20
    advice = ("Check that its definition is not implicitly capturing a large array or other object in scope. "
              "Tip: use put() to put large objects in the object store and pass the ref.")
    if size > refuse_at:
        raise ValueError(f"The {what} is too large ({mib:.2f} MiB > FUNCTION_SIZE_ERROR_THRESHOLD="
                         f"{refuse_at / 2**20:.2f} MiB). {advice}")
    warnings.warn(f"The {what} is very large ({mib:.2f} MiB). {advice}", UserWarning, stacklevel=4)


def dumps_function(fn: Any, what: str) -> bytes:
    """Pickle a function or class by value (cloudpickle)."""
    try:
        return cloudpickle_dumps(fn)
    except Exception as exc:  # noqa: BLE001
        raise SerializationError(_explain(fn, what, exc)) from exc


def _explain(value: Any, what: str, exc: BaseException) -> str:
    culprit = _find_culprit(value)
    where = f"; the part that cannot be pickled is {culprit}" if culprit else ""
    return f"Could not serialize {what} {short_repr(value)}: {type(exc).__name__}: {exc}{where}"


def _find_culprit(value: Any, depth: int = 0) -> Optional[str]:
    """Best-effort search for the innermost unpicklable piece of a value."""
    if depth > 4:
        return None
    children: Iterable[Tuple[str, Any]] = ()
    if isinstance(value, dict):
        children = ((f"[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = ((f"[{i}]", v) for i, v in enumerate(value))
    elif callable(value) and getattr(value, "__closure__", None):
        names = value.__code__.co_freevars
        children = ((f" (closure variable {n!r})", c.cell_contents) for n, c in zip(names, value.__closure__))
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = ((f".{k}", v) for k, v in vars(value).items())
    for label, child in children:
        try:
            cloudpickle_dumps(child)
        except Exception:  # noqa: BLE001
            inner = _find_culprit(child, depth + 1)
            return inner or f"{short_repr(child)} at {label.strip()}"
    return None


def short_repr(value: Any) -> str:
    """repr() cut to 80 characters, or the type's name if repr fails (for error messages)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def deserialize(blob: memoryview | bytes) -> Tuple[Any, int]:
    """Rebuild a value from a blob; returns (value, flags). Buffers stay views of `blob`."""
    view = memoryview(blob)
    magic, flags, nbuf, pickle_len = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("corrupt object: bad magic")
    pos = _HEADER.size
    buffers = []
    for _ in range(nbuf):
        off, length = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        buffers.append(view[off : off + length].toreadonly())
    data = view[pos : pos + pickle_len]
    return pickle.loads(data, buffers=buffers), flags


def error_blob(error: BaseException) -> bytes:
    """An error as a stored value: `get` raises it."""
    return serialize(error, flags=FLAG_ERROR).to_bytes()


def dumps_message(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def loads_message(data: bytes | memoryview) -> Any:
    return pickle.loads(data)


__all__ = ["Serialized", "SerializationError", "serialize", "deserialize", "dumps_function", "collect_refs"]
