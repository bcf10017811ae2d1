"""docs/support.md, the table of Ray's API with what minicluster does with each name, stays true.

Every row is checked against the package (no session is started): a "yes" or "differs" name
resolves (an option or init() argument is taken; a "yes" option is not one of those taken with
no effect), and a "no" row fails with the error its note starts with. The other way round,
every public name, option and init() argument minicluster has must have a row, so a new one
cannot be forgotten. The row formats are described at the top of docs/support.md.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
from typing import Any, Dict, List, NamedTuple, Set

import pytest

import minicluster
from minicluster import api, exceptions
from minicluster._private.common import options
from minicluster.actor import ActorClass
from minicluster.remote_function import RemoteFunction
from minicluster.runtime_context import RuntimeContext
from minicluster.util import scheduling_strategies
from minicluster.util import state as state_api

TABLE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "support.md"
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<status>yes|differs|no) \| (?P<notes>.*?) ?\|$")
ERROR = re.compile(r"^`(?P<type>[A-Za-z_]\w*): (?P<text>[^`]+)`")
STATUSES = ("yes", "differs", "no")


class Row(NamedTuple):
    line: int
    name: str
    status: str
    notes: str


def rows() -> List[Row]:
    found = []
    for number, line in enumerate(TABLE.read_text().splitlines(), 1):
        if line.startswith("| `"):
            match = ROW.match(line)
            assert match, f"support.md:{number}: a row must be | `name` | yes, differs or no | notes |: {line!r}"
            found.append(Row(number, match["name"], match["status"], match["notes"]))
    return found


ROWS = rows()


def _ids(row: Row) -> str:
    return f"{row.line}:{row.name}"


# ---- what a row's name means ---------------------------------------------------------------------


def _plain() -> None:
    pass


def _generator() -> Any:
    yield 1


class _Demo:
    def method(self) -> None:
        pass


def _call(name: str) -> ast.Call:
    tree = ast.parse(name.lstrip("@"), mode="eval").body
    assert isinstance(tree, ast.Call), name
    return tree


def _dotted(node: ast.AST) -> str:
    return ast.unparse(node)


def _constants(call: ast.Call) -> tuple:
    return (tuple(ast.literal_eval(a) for a in call.args),
            {k.arg: ast.literal_eval(k.value) for k in call.keywords})


def kind(name: str) -> str:
    """'task', 'actor', 'method', 'init' (an option or argument), 'call' or 'name'."""
    if "(" not in name:
        return "name"
    func = _dotted(_call(name).func)
    return {"ray.remote": "task", "Actor.options": "actor", "ray.method": "method", "ray.init": "init"}.get(
        func, "call")


def resolve(dotted: str) -> Any:
    """`ray.a.b.c` as minicluster has it: attributes, importing submodules on the way."""
    parts = dotted.split(".")
    assert parts[0] == "ray", f"{dotted}: a name starts with ray."
    value: Any = minicluster
    for i, part in enumerate(parts[1:], 1):
        try:
            value = getattr(value, part)
        except AttributeError as no_attribute:
            if not inspect.ismodule(value):
                raise
            module = f"{value.__name__}.{part}"
            try:
                value = importlib.import_module(module)
            except ModuleNotFoundError as missing:
                # The last name is an attribute (AttributeError); one with names after it, a module.
                if missing.name != module or i == len(parts) - 1:
                    raise no_attribute from None
                raise
    return value


def exercise(row: Row) -> None:
    """Do what the row names: resolve it, take the option or argument, or make the call."""
    name = row.name
    what = kind(name)
    if what == "name":
        resolve(name)
        return
    args, kwargs = _constants(_call(name))
    if what == "task":
        generator = kwargs.get("num_returns") in ("streaming", "dynamic")  # (Ray takes these for generators only)
        minicluster.remote(**kwargs)(_generator if generator else _plain)
    elif what == "actor":
        minicluster.remote(**kwargs)(_Demo)  # (the class's decorator takes every actor option; .options() some)
    elif what == "method":
        minicluster.method(**kwargs)
    elif what == "init" and row.status != "no":
        # A good argument would start a session: check that init() takes it, and that its value is not refused.
        arg, value = next(iter(kwargs.items()))
        assert arg in inspect.signature(api.init).parameters or arg in api._HARMLESS_ARGS, f"init() lacks {arg}"
        api._refuse_harmful({arg: value} if arg in api._HARMLESS_ARGS else {}, False)
    elif what == "init":
        try:
            minicluster.init(**kwargs)  # refused before anything starts
        finally:
            if minicluster.is_initialized():
                minicluster.shutdown()
    else:
        resolve(_dotted(_call(name).func))(*args, **kwargs)


def option_name(name: str) -> str:
    """The option or argument a row is about: its first (others may follow where Ray needs them)."""
    _, kwargs = _constants(_call(name))
    assert kwargs, f"{name}: a row names an option or argument"
    return next(iter(kwargs))


# ---- the rows are true ---------------------------------------------------------------------------


def test_the_table_is_there_and_well_formed():
    assert len(ROWS) > 150
    names = [r.name for r in ROWS]
    assert len(names) == len(set(names)), "a name has two rows"
    for row in ROWS:
        if row.status == "no":
            assert ERROR.match(row.notes), f"support.md:{row.line}: a 'no' row's note starts with `Type: message`"
        if row.status == "differs":
            assert row.notes, f"support.md:{row.line}: a 'differs' row says how"
    readme = (TABLE.parents[1] / "README.md").read_text()
    assert "docs/support.md" in readme


@pytest.mark.filterwarnings("ignore:num_returns='dynamic' is deprecated")  # (Ray's warning, on purpose)
@pytest.mark.parametrize("row", [r for r in ROWS if r.status != "no"], ids=_ids)
def test_a_supported_row_works(row):
    exercise(row)
    if kind(row.name) in ("task", "actor", "method"):
        option = option_name(row.name)
        ignored = option in options._ACCEPTED_NO_EFFECT
        if row.status == "yes":
            assert not ignored, f"{row.name}: taken with no effect, so it is 'differs', not 'yes'"
        elif ignored:
            assert "no effect" in row.notes, f"{row.name}: the note must say it has no effect"
        else:
            assert "no effect" not in row.notes, f"{row.name}: it has an effect now; say what (or 'yes')"


@pytest.mark.parametrize("row", [r for r in ROWS if r.status == "no"], ids=_ids)
def test_an_unsupported_row_fails_with_the_error_it_documents(row):
    expected = ERROR.match(row.notes)
    with pytest.raises(BaseException) as raised:
        exercise(row)
    got = raised.value
    assert expected["type"] in [c.__name__ for c in type(got).__mro__], \
        f"{row.name}: raised {type(got).__name__}: {got}, the table says {expected['type']}"
    assert expected["text"] in str(got), f"{row.name}: the message is {str(got)!r}"


# ---- everything minicluster has is in the table ----------------------------------------------------


def _rows_of(what: str) -> Dict[str, List[Row]]:
    """The rows of one kind by name (options and init() arguments: by the option's name)."""
    by_name: Dict[str, List[Row]] = {}
    for row in ROWS:
        if kind(row.name) == what:
            by_name.setdefault(row.name if what == "name" else option_name(row.name), []).append(row)
    return by_name


# Ray's public modules below ray.util and ray.experimental that minicluster has, whose names must
# all have rows (ray.util, ray.util.state and scheduling_strategies are read above). Add one here
# when minicluster gains another.
RAY_MODULES = {
    "ray.util.queue": "minicluster.util.queue",
    "ray.util.multiprocessing": "minicluster.util.multiprocessing",
    "ray.util.joblib": "minicluster.util.joblib",
    "ray.experimental.tqdm_ray": "minicluster.experimental.tqdm_ray",
}


def _defined_here(module: Any) -> Set[str]:
    """The public names of one of our modules that are its own (not modules, not imported helpers)."""
    return {n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)
            and (getattr(v, "__module__", None) or "").startswith("minicluster")}


def _public_names() -> Set[str]:
    names = {f"ray.{n}" for n in set(minicluster.__all__) | _defined_here(minicluster) if n != "exceptions"}
    names |= {f"ray.exceptions.{n}" for n, v in vars(exceptions).items()
              if isinstance(v, type) and issubclass(v, BaseException) and v.__module__ == exceptions.__name__
              and not n.startswith("_")}
    names |= {f"ray.util.{n}" for n in set(getattr(minicluster.util, "__all__", ())) | _defined_here(minicluster.util)}
    names |= {f"ray.util.state.{n}" for n in state_api.__all__ if callable(getattr(state_api, n))
              and not isinstance(getattr(state_api, n), type)}
    names |= {f"ray.util.scheduling_strategies.{n}" for n in vars(scheduling_strategies)
              if n.endswith("SchedulingStrategy")}
    names |= {f"ray.runtime_context.RuntimeContext.{n}" for n in vars(RuntimeContext) if not n.startswith("_")}
    for ray_name, module_name in RAY_MODULES.items():
        module = importlib.import_module(module_name)
        names |= {f"{ray_name}.{n}" for n in getattr(module, "__all__", None) or _defined_here(module)}
    classes = {"ray.ObjectRef": minicluster.ObjectRef, "ray.remote_function.RemoteFunction": RemoteFunction,
               "ray.actor.ActorClass": ActorClass}
    for dotted, cls in classes.items():
        names |= {f"{dotted}.{n}" for n in dir(cls) if not n.startswith("_")}
    return names


def test_every_public_name_of_minicluster_has_a_row():
    listed = set(_rows_of("name")) | {_dotted(_call(r.name).func) for r in ROWS if kind(r.name) == "call"}
    missing = sorted(_public_names() - listed)
    assert not missing, ("add a row to docs/support.md for each (| `name` | yes, differs or no | notes |): "
                         + ", ".join(missing))


@pytest.mark.parametrize("what, taken", [
    ("task", set(options.TASK_OPTIONS)),
    ("actor", set(options.ACTOR_OPTIONS)),
    ("method", set(options.METHOD_OPTIONS)),
    ("init", (set(inspect.signature(api.init).parameters) - {"kwargs"}) | set(api._HARMLESS_ARGS)),
])
def test_every_option_and_init_argument_has_a_row(what, taken):
    listed = _rows_of(what)
    missing = sorted(taken - set(listed))
    assert not missing, f"add a row to the {what} section of docs/support.md for each: {', '.join(missing)}"
    # (A "no" row of a taken name is fine: some options and init() arguments are taken only to be
    # refused with the reason, and test_an_unsupported_row_fails_with_the_error_it_documents
    # fails as soon as one of them stops refusing.)


def test_every_option_taken_with_no_effect_has_a_row_saying_so():
    rows_by_option = {**_rows_of("task"), **_rows_of("actor")}
    for option in sorted(options._ACCEPTED_NO_EFFECT):
        assert option in rows_by_option, f"add a row for the option {option} to docs/support.md"
