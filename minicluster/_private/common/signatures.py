"""Argument checks at `.remote()`: a call that can never bind to the function's signature
fails where it is made, with Ray's TypeError ("missing a required argument: 'x'"), not later
in a worker.

Runs in whichever process calls `.remote()`. A signature is kept as plain data (`Params`:
name, kind and whether it has a default, per parameter), so actor handles can carry their
methods' signatures to other processes however unpicklable the defaults are. Checking
costs a length comparison for the common call (positional arguments only, within the
function's bounds); only other calls go through `inspect.Signature.bind` (~10 us).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple

#: (name, inspect.Parameter kind as int, has a default) per parameter, in order.
Params = Tuple[Tuple[str, int, bool], ...]

_DEFAULT = object()  # stands for every default value: only whether one exists matters
_UNBOUNDED = 1 << 30


def params_of(target: Callable[..., Any], drop_first: bool = False) -> Optional[Params]:
    """The parameters of `target` (without the first, `self`, if `drop_first`); None if Python
    cannot tell (some builtins): such calls are not checked."""
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if drop_first:
        parameters = parameters[1:]
    return tuple((p.name, int(p.kind), p.default is not inspect.Parameter.empty) for p in parameters)


class ArgumentCheck:
    """Checks calls against one signature."""

    __slots__ = ("signature", "min_positional", "max_positional")

    def __init__(self, params: Params) -> None:
        self.signature = inspect.Signature([
            inspect.Parameter(name, inspect._ParameterKind(kind), default=_DEFAULT if has_default else
                              inspect.Parameter.empty)
            for name, kind, has_default in params])
        positional = [p for p in params if p[1] <= inspect.Parameter.POSITIONAL_OR_KEYWORD]
        required_keyword_only = any(p[1] == inspect.Parameter.KEYWORD_ONLY and not p[2] for p in params)
        # A call with positional arguments only binds when their count is within these bounds
        # (a required keyword-only parameter: never; such calls take the slow path).
        self.min_positional = _UNBOUNDED if required_keyword_only else sum(1 for p in positional if not p[2])
        self.max_positional = (_UNBOUNDED if any(p[1] == inspect.Parameter.VAR_POSITIONAL for p in params)
                               else len(positional))

    def check(self, args: tuple, kwargs: Dict[str, Any], what: str) -> None:
        """Raise TypeError, naming `what`, if `what(*args, **kwargs)` cannot bind."""
        if not kwargs and self.min_positional <= len(args) <= self.max_positional:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{what}: {exc}") from None


_checks: Dict[Params, ArgumentCheck] = {}


def check_for(params: Optional[Params]) -> Optional[ArgumentCheck]:
    """The (shared) check for these parameters; None when they are unknown."""
    if params is None:
        return None
    found = _checks.get(params)
    if found is None:
        found = _checks[params] = ArgumentCheck(params)
    return found
