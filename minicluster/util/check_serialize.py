"""Ray's `ray.util.inspect_serializability`: find what keeps an object from being pickled.

Runs in whichever process calls it. It pickles the object as the runtime would
(cloudpickle); when that fails it looks inside, `depth` levels deep: a function's
globals and closure variables, an object's attributes, a container's items. A part
that fails while none of its own parts do is reported as a FailureTuple (the object,
the path of names leading to it, and the object holding it). A report is printed to
`print_file` (stdout by default) as it goes.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterator, List, Optional, Set, TextIO, Tuple

from minicluster._private.store.serialization import cloudpickle_dumps, short_repr


class FailureTuple:
    """One part that cannot be pickled: `obj`, the `path` of names to it, its `parent`."""

    def __init__(self, obj: Any, path: Tuple[str, ...], parent: Any) -> None:
        self.obj = obj
        self.path = path
        self.parent = parent

    def __repr__(self) -> str:
        names = [str(p) if p is not None else "unknown" for p in self.path]
        name = names[-1] if names else "unknown"
        return f"FailTuple({name} [path={' -> '.join(names)}, obj={self.obj}, parent={self.parent}])"


def inspect_serializability(base_obj: Any, name: Optional[str] = None, depth: int = 3,
                            print_file: Optional[TextIO] = None) -> Tuple[bool, Set[FailureTuple]]:
    """(True, empty set) if `base_obj` pickles; else (False, the innermost parts found that do not)."""
    out = _Report(print_file)
    title = f"Checking Serializability of {base_obj}"
    rule = "=" * min(len(title), 80)
    out.line(rule)
    out.line(title)
    out.line(rule)
    error = _pickle_error(base_obj)
    if error is None:
        return True, set()
    out.line(f"!!! FAIL serialization: {error}")
    failures: Set[FailureTuple] = set()
    path = (name,) if name is not None else ()
    _search(base_obj, path, None, depth, failures, out)
    out.line(rule)
    out.line("Variable: \n\n\t" + "\n".join(str(f) for f in failures) + "\n\nwas found to be non-serializable. "
             "There may be multiple other undetected variables that were non-serializable.")
    out.line("Consider either removing the instantiation/imports of these variables or moving the "
             "instantiation into the scope of the function/class.")
    out.line(rule)
    return False, failures


def _search(obj: Any, path: Tuple[str, ...], parent: Any, depth: int, failures: Set[FailureTuple],
            out: "_Report") -> None:
    """`obj` fails to pickle: record its failing parts, or itself when none of them fails."""
    found = False
    if depth > 0:
        with out.indented():
            for child_name, child in _parts(obj, out):
                out.line(f"Serializing '{child_name}' {short_repr(child)}...")
                error = _pickle_error(child)
                if error is None:
                    continue
                out.line(f"!!! FAIL serialization: {error}")
                found = True
                with out.indented():
                    _search(child, path + (child_name,), obj, depth - 1, failures, out)
    if not found:
        failures.add(FailureTuple(obj, path, parent))


def _parts(obj: Any, out: "_Report") -> Iterator[Tuple[str, Any]]:
    """What `obj` holds that pickling it pickles too."""
    if inspect.isfunction(obj):
        out.line(f"Inspecting closure of '{obj.__qualname__}':")
        closure = inspect.getclosurevars(obj)
        yield from closure.globals.items()
        yield from closure.nonlocals.items()
    elif isinstance(obj, dict):
        yield from ((repr(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))
    elif hasattr(obj, "__dict__") and not inspect.isclass(obj) and not inspect.ismodule(obj):
        yield from vars(obj).items()  # an instance: its attributes (its bound methods would only repeat it)
    else:
        members: List[Tuple[str, Any]] = []
        try:
            members = inspect.getmembers(obj)
        except Exception:  # noqa: BLE001 - a broken __getattr__ just has no parts to show
            pass
        for member_name, member in members:
            if (member_name.startswith("__") and member_name.endswith("__")) or inspect.isbuiltin(member):
                continue
            yield member_name, member


def _pickle_error(obj: Any) -> Optional[BaseException]:
    try:
        cloudpickle_dumps(obj)
    except Exception as exc:  # noqa: BLE001 - whatever pickling raises is the answer
        return exc
    return None


class _Report:
    def __init__(self, file: Optional[TextIO]) -> None:
        self.file = file
        self.level = 0

    def line(self, text: str) -> None:
        print("    " * self.level + text, file=self.file)

    def indented(self) -> "_Indent":
        return _Indent(self)


class _Indent:
    def __init__(self, report: _Report) -> None:
        self.report = report

    def __enter__(self) -> None:
        self.report.level += 1

    def __exit__(self, *exc: Any) -> None:
        self.report.level -= 1
