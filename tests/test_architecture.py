"""The package's shape, checked statically (ast only: no session, no imports of minicluster).

What must hold:

* layers: `_private/<layer>` imports only its own layer or lower ones (LAYERS, lowest
  first), and of the public package only the leaf modules in PRIVATE_MAY_IMPORT; every
  import counts, inside functions and under `if TYPE_CHECKING:` too;
* no import cycle among module-level imports (`if TYPE_CHECKING:` blocks excluded);
* at most MAX_TOP_MODULES modules directly in minicluster/;
* an import inside a function is listed in FUNCTION_IMPORTS with its reason, so a
  new one (often a cycle hidden from the check above) is a decision, not an accident.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

PACKAGE = "minicluster"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A module may import from its own layer and the ones before it.
LAYERS = ("common", "store", "wire", "head", "observe", "client", "node")
PUBLIC = len(LAYERS)  # rank of everything outside _private: above every layer

# Public modules with no runtime behind them, so the core may use them.
PRIVATE_MAY_IMPORT = frozenset({"minicluster.exceptions", "minicluster.util.scheduling_strategies"})

MAX_TOP_MODULES = 20

# Imports inside functions: (importing module, function, imported module) -> why it is not at the top.
# "CYCLE:" marks one that hides an import cycle (at the top it would close one); "NONE:" one
# with no reason found (a cheap or already loaded module): candidates to move to the top.
FUNCTION_IMPORTS: Dict[Tuple[str, str, str], str] = {
    # ---- _private
    ("minicluster._private.client.object_ref", "ObjectRef.__await__", "asyncio"):
        "startup time: asyncio (~30 ms) only for code that awaits refs",
    ("minicluster._private.client.object_ref", "ObjectRef.future", "concurrent.futures"):
        "startup time: only callers of ObjectRef.future() need it",
    ("minicluster._private.client.object_ref_generator", "ObjectRefGenerator._next_async", "asyncio"):
        "startup time: asyncio (~30 ms) only for code that iterates a generator with async for",
    ("minicluster._private.node.generator_tasks", "GeneratorTasks.run_async", "asyncio"):
        "startup time: asyncio is loaded only by async actors (this runs in one)",
    ("minicluster._private.common.config", "default_store_capacity", "shutil"):
        "startup time: config is read by every node and worker; only the driver sizes the store",
    ("minicluster._private.common.config", "session_root", "tempfile"):
        "startup time: config is read by every node and worker; only the driver picks the session folder",
    ("minicluster._private.node.worker", "Worker._create_actor", "minicluster._private.node.async_actor"):
        "startup time: asyncio is loaded only by async actors",
    ("minicluster._private.node.worker", "Worker._create_actor", "concurrent.futures"):
        "startup time: a thread pool only for threaded actors",
    ("minicluster._private.observe.arrow_export", "write", "pyarrow"):
        "startup time: pyarrow (~100 ms) only when the command exports a Parquet or Arrow file",
    ("minicluster._private.observe.arrow_export", "write", "pyarrow.parquet"):
        "startup time: pyarrow.parquet only for --format parquet",
    ("minicluster._private.observe.arrow_export", "write", "pyarrow.feather"):
        "startup time: pyarrow.feather only for --format arrow",
    ("minicluster._private.observe.state_journal", "_same_process_alive", "psutil"):
        "startup time: psutil only to tell whether a session's driver still runs",
    ("minicluster._private.store.serialization", "pickle_definition", "hashlib"):
        "startup time: hashlib (OpenSSL) only once a function or class is shipped",
    # ---- the public package
    ("minicluster.api", "init", "minicluster._private.client.driver"):
        "startup time: workers import minicluster.api and never need the driver, head and hub",
    ("minicluster.api", "timeline", "minicluster.util.state"):
        "startup time: the state API's readers cost every `import minicluster` ~20 ms",
    ("minicluster.testing.ray_backend", "import_ray", "ray"):
        "an optional dependency: Ray, only for the pytest plugin's --minicluster-backend=ray",
    ("minicluster.testing.ray_backend", "import_ray", "ray.cluster_utils"):
        "an optional dependency: Ray, only for the pytest plugin's --minicluster-backend=ray",
    ("minicluster.util.joblib", "register_ray", "joblib"):
        "an optional dependency: minicluster.util.joblib imports without it; register_ray() names the extra",
    ("minicluster.util.joblib", "register_ray", "minicluster.util.joblib.ray_backend"):
        "an optional dependency: ray_backend imports joblib at its top",
}


@dataclass(frozen=True)
class Import:
    """One imported module, as an edge of the import graph."""

    module: str  #: the importing module (dotted name)
    target: str  #: the imported module: a module of the package, or any other top-level name
    line: int
    function: Optional[str]  #: the enclosing function's qualified name; None at module level
    type_checking: bool  #: under `if TYPE_CHECKING:` (not run at import time)


# ---- reading the package ---------------------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> Dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = package_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: Optional[str] = None) -> List[Import]:
    """Every import statement of a module (of its file, or of `source`), wherever it is, one Import per module."""
    tree = ast.parse(MODULES[module].read_text() if source is None else source, module)
    found: List[Import] = []

    def targets(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            return
        assert isinstance(node, ast.ImportFrom)
        base = resolve(module, node)
        for alias in node.names:
            # `from minicluster import exceptions` imports the module minicluster.exceptions.
            sub = f"{base}.{alias.name}"
            yield sub if sub in MODULES else base

    def visit(node: ast.AST, function: Optional[str], scope: str, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in targets(node):
                found.append(Import(module, target, node.lineno, function, type_checking))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, function, scope, True)
            for child in node.orelse:
                visit(child, function, scope, type_checking)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{scope}{node.name}"
            for child in ast.iter_child_nodes(node):
                visit(child, name, f"{name}.", type_checking)
            return
        if isinstance(node, ast.ClassDef):  # a class body runs at import time: still module level
            for child in ast.iter_child_nodes(node):
                visit(child, function, f"{scope}{node.name}.", type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, function, scope, type_checking)

    visit(tree, None, "", False)
    return list(dict.fromkeys(found))  # `from m import a, b` is one edge, not two


IMPORTS = {module: imports_of(module) for module in MODULES}


def in_package(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def short(module: str) -> str:
    """A module as the rules name it: `_private/store/object_store.py`, `api.py`."""
    path = MODULES.get(module)
    if path is None:
        return module
    return str(path.relative_to(ROOT))


def layer_of(module: str) -> Tuple[int, str]:
    """(rank, name) of a module's layer: a `_private/<layer>` folder, or the public package."""
    parts = module.split(".")
    if parts[1:2] == ["_private"]:
        if len(parts) == 2:
            return 0, "_private"  # the empty package itself: below everything
        return LAYERS.index(parts[2]), parts[2]
    return PUBLIC, "public"


# ---- the rules ------------------------------------------------------------------------------------


def layer_violations(imports_by_module: Optional[Dict[str, List[Import]]] = None) -> List[str]:
    problems = []
    for module, imports in (IMPORTS if imports_by_module is None else imports_by_module).items():
        rank, name = layer_of(module)
        if rank == PUBLIC:
            continue  # the public package may use every layer
        for imp in imports:
            if not in_package(imp.target):
                continue
            target_rank, target_name = layer_of(imp.target)
            where = f"{short(module)}:{imp.line} imports {short(imp.target)}"
            if target_rank == PUBLIC and imp.target not in PRIVATE_MAY_IMPORT:
                allowed = ", ".join(sorted(short(m) for m in PRIVATE_MAY_IMPORT))
                problems.append(f"{where} ({name} may not import the public package, except {allowed})")
            elif target_rank != PUBLIC and target_rank > rank:
                problems.append(f"{where} ({name} may not import {target_name})")
    return list(dict.fromkeys(problems))


def import_graph() -> Dict[str, Dict[str, int]]:
    """Module -> {imported module of the package: line}, for imports run at import time.

    Importing a submodule also runs its packages' __init__, but that is not an edge: else
    every module would cycle through minicluster/__init__.py.
    """
    graph: Dict[str, Dict[str, int]] = {module: {} for module in MODULES}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.function is None and not imp.type_checking and imp.target in MODULES and imp.target != module:
                graph[module].setdefault(imp.target, imp.line)
    return graph


def strongly_connected(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative): the components of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def a_cycle(graph: Dict[str, Dict[str, int]], component: Sequence[str]) -> List[str]:
    """One cycle through the component's first module, as `a.py:3 -> b.py:7 -> a.py`."""
    members = set(component)
    start = component[0]
    parent: Dict[str, Tuple[str, int]] = {}
    queue = [start]
    while queue:  # breadth first, so the cycle shown is a shortest one
        node = queue.pop(0)
        for child, line in graph[node].items():
            if child not in members:
                continue
            if child == start:
                path = [f"{short(node)}:{line}"]
                while node != start:
                    node, line = parent[node]
                    path.append(f"{short(node)}:{line}")
                return list(reversed(path)) + [short(start)]
            if child not in parent:
                parent[child] = (node, line)
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")


def path_between(graph: Dict[str, Dict[str, int]], start: str, end: str) -> Optional[List[str]]:
    """A shortest chain of module-level imports from `start` to `end`, or None."""
    parent: Dict[str, Optional[str]] = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if node == end:
            path = []
            while node is not None:
                path.append(short(node))
                node = parent[node]
            return list(reversed(path))
        for child in graph[node]:
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return None


def hidden_cycle(graph: Dict[str, Dict[str, int]], module: str, target: str) -> Optional[List[str]]:
    """The cycle that importing `target` at the top of `module` would close, or None."""
    if target not in MODULES:
        return None
    back = path_between(graph, target, module)
    return None if back is None else [short(module)] + back


def function_imports() -> Dict[Tuple[str, str, str], int]:
    """Imports inside functions: (module, function, imported module) -> first line."""
    found: Dict[Tuple[str, str, str], int] = {}
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.function is not None:
                found.setdefault((module, imp.function, imp.target), imp.line)
    return found


# ---- the tests ------------------------------------------------------------------------------------


def test_the_layers_are_known():
    folders = {p.name for p in (ROOT / "_private").iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS), f"_private/ has layers {sorted(folders)}; LAYERS lists {list(LAYERS)}"


def test_each_layer_imports_only_its_own_and_lower_ones():
    problems = layer_violations()
    assert not problems, "layer rule broken:\n  " + "\n  ".join(problems)


def test_no_import_cycles_at_module_level():
    graph = import_graph()
    cycles = [" -> ".join(a_cycle(graph, c)) + f"   (cycle of {len(c)}: {', '.join(map(short, c))})"
              for c in strongly_connected(graph)]
    assert not cycles, "module-level import cycles:\n  " + "\n  ".join(cycles)


def test_few_modules_at_the_top():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, (f"{len(top)} modules directly in minicluster/ (at most {MAX_TOP_MODULES}): "
                                         f"put new internals in _private/<layer>/: {top}")


def test_imports_inside_functions_are_listed_with_a_reason():
    found = function_imports()
    graph = import_graph()
    new = []
    for (m, f, t), line in sorted(found.items()):
        if (m, f, t) not in FUNCTION_IMPORTS:
            cycle = hidden_cycle(graph, m, t)
            new.append(f"{short(m)}:{line} {f}() imports {t}" + (f"  (hides a cycle: {' -> '.join(cycle)})"
                                                                  if cycle else ""))
    gone = [f"{m} {f}() {t}" for (m, f, t) in FUNCTION_IMPORTS if (m, f, t) not in found]
    assert not new, ("imports inside functions not in FUNCTION_IMPORTS (move them to the top, or list them "
                     "with the reason: startup time, an optional dependency):\n  " + "\n  ".join(new))
    assert not gone, "FUNCTION_IMPORTS lists imports that are gone (remove them):\n  " + "\n  ".join(gone)
    assert all(reason.strip() for reason in FUNCTION_IMPORTS.values())


def test_the_imports_marked_cycle_are_the_ones_that_hide_one():
    """So the marks stay true as the code changes: a CYCLE entry whose cycle is gone can move up."""
    graph = import_graph()
    wrong = []
    for (m, f, t), reason in sorted(FUNCTION_IMPORTS.items()):
        cycle = hidden_cycle(graph, m, t)
        if bool(cycle) != reason.startswith("CYCLE:"):
            wrong.append(f"{short(m)} {f}() imports {t}: " + (f"hides the cycle {' -> '.join(cycle)}" if cycle
                                                                 else "closes no cycle at the top now"))
    assert not wrong, "FUNCTION_IMPORTS marks to update:\n  " + "\n  ".join(wrong)


# ---- the checker itself, on small made-up modules ------------------------------------------------------


def test_the_reader_finds_every_import_and_where_it_is():
    source = """
from typing import TYPE_CHECKING
from minicluster import exceptions
from minicluster._private.common import config, ids
from ..head import head
if TYPE_CHECKING:
    from minicluster.api import init
class Thing:
    import json
    def method(self):
        from minicluster.util import scheduling_strategies
        def inner():
            import minicluster.actor
"""
    found = {(i.target, i.function, i.type_checking) for i in imports_of("minicluster._private.store.object_store",
                                                                          source)}
    assert found == {
        ("typing", None, False),
        ("minicluster.exceptions", None, False),  # a module imported from its package
        ("minicluster._private.common.config", None, False),
        ("minicluster._private.common.ids", None, False),
        ("minicluster._private.head.head", None, False),  # relative, resolved
        ("minicluster.api", None, True),
        ("json", None, False),  # a class body runs at import time
        ("minicluster.util.scheduling_strategies", "Thing.method", False),
        ("minicluster.actor", "Thing.method.inner", False),
    }
    problems = layer_violations({"minicluster._private.store.object_store":
                                 imports_of("minicluster._private.store.object_store", source)})
    assert problems == [
        "_private/store/object_store.py:5 imports _private/head/head.py (store may not import head)",
        "_private/store/object_store.py:7 imports api.py (store may not import the public package, "
        "except exceptions.py, util/scheduling_strategies.py)",
        "_private/store/object_store.py:13 imports actor.py (store may not import the public package, "
        "except exceptions.py, util/scheduling_strategies.py)",
    ]


def test_the_cycle_finder_finds_a_cycle_and_only_it():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a:1", "b:2", "c:3", "a"]
