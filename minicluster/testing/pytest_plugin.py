"""The pytest plugin: a fresh minicluster per test, its fault plan and journal, seeds, and failure reports.

Registered through the package's entry point (`[project.entry-points.pytest11]`
in pyproject.toml), so installing minicluster is enough. Runs in the pytest
process, which is the driver of each test's session.

Fixtures
    minicluster_seed     the test's seed: --minicluster-seed, else MINICLUSTER_TEST_SEED,
                         else a random one per run (printed in the header and with failures)
    fault_plan           a FaultPlan with that seed (the chaos controller too: fault_plan.chaos(...));
                         installed into minicluster_cluster (asked for alone: into the session this
                         process runs, else into a minicluster_cluster started for it); its planned
                         faults must fire (a report of unfired ones lists the task names that ran)
    fault_journal        fault_plan.journal: the faults that fired
    minicluster_cluster  a session started with the test's settings, shut down afterwards and
                         checked for leaked processes and shared-memory folders

Settings come from the markers (a module's `pytestmark`, a class's, the test's own,
merged in that order), or from an indirect parameter of minicluster_cluster (a
dict), which wins:

    @pytest.mark.minicluster(num_nodes=3, num_cpus=2, seeds=20, chaos=False)
    def test_pipeline(minicluster_cluster, fault_plan, fault_journal): ...

`seeds=N` runs the test under N seeds (base, base+1, ...); `chaos=False` keeps
--minicluster-chaos=on away from it; other arguments go to init().

Options
    --minicluster-seed S    the seed (replays a failure exactly; runs each test once)
    --minicluster-seeds N   run every test that uses these fixtures under N seeds
    --minicluster-chaos on|off
                            on: every plan also gets chaos(kill_worker_every=25);
                            off: chaos schedules are ignored (targeted faults still fire).
                            Also MINICLUSTER_TEST_CHAOS.
    --minicluster-alias-ray `import ray` gives minicluster for the session, in workers too
                            (ray_alias.py); ini: minicluster_alias_ray = true
    --minicluster-backend=ray
                            the same tests on real Ray (ray_backend.py): the fixtures start Ray,
                            `import minicluster` gives Ray, a planned fault skips its test.
                            Also MINICLUSTER_BACKEND.

A failing test's report gets a section with its seed, the command that replays
it, the plan and the journal of the faults that fired.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import psutil
import pytest

# The plugin is loaded into every pytest run of the environment; importing minicluster
# itself costs nothing more, since minicluster.testing is part of the package anyway.
import minicluster as ray
from minicluster._private.client import context
from minicluster.testing import backend, ray_alias, ray_backend
from minicluster.testing.fault_plan import SEED_ENV, FaultPlan, UnfiredFaultsError, default_seed
from minicluster.testing.journal import FaultJournal
from minicluster.testing.session_snapshot import snapshot

CHAOS_ENV = "MINICLUSTER_TEST_CHAOS"
#: With --minicluster-chaos=on: a worker killed on average every this many dispatched tasks.
DEFAULT_CHAOS_EVERY = 25
#: Settings of minicluster_cluster unless the marker or parameter says otherwise. Two nodes,
#: so that a node can die while the driver's node lives on.
DEFAULT_SETTINGS: Dict[str, Any] = {"num_nodes": 2, "num_cpus": 1}
#: How long session processes may take to exit after shutdown (SPEC: a second or two).
EXIT_GRACE_S = 3.0

_BASE_SEED = pytest.StashKey[int]()
_SEED_EXPLICIT = pytest.StashKey[bool]()
_CHAOS = pytest.StashKey[Optional[str]]()
_SEED = pytest.StashKey[int]()
_PLAN = pytest.StashKey[FaultPlan]()
_ON_RAY = pytest.StashKey[bool]()


@dataclass
class MiniclusterCluster:
    """What the minicluster_cluster fixture gives the test: the running session's nodes and faults."""

    nodes: List[str]  #: hex node ids, in start order; nodes[0] is the driver's node
    seed: int
    plan: FaultPlan
    settings: Dict[str, Any] = field(default_factory=dict)
    backend: str = "minicluster"  #: "ray" with --minicluster-backend=ray

    @property
    def journal(self) -> FaultJournal:
        return self.plan.journal

    @property
    def head_node(self) -> str:
        """The driver's node (where its put() objects live)."""
        return self.nodes[0]

    @property
    def worker_nodes(self) -> List[str]:
        return self.nodes[1:]


# ==== options and configuration =========================================================


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minicluster", "minicluster fault injection")
    group.addoption("--minicluster-seed", type=int, default=None, metavar="S",
                    help=f"seed of every fault plan (replays a failure); default ${SEED_ENV}, else random")
    group.addoption("--minicluster-seeds", type=int, default=None, metavar="N",
                    help="run each test that uses minicluster's fixtures under N seeds (S, S+1, ...)")
    group.addoption("--minicluster-chaos", choices=("on", "off"), default=None,
                    help=f"on: add chaos(kill_worker_every={DEFAULT_CHAOS_EVERY}) to every plan; off: ignore "
                         f"chaos schedules; default ${CHAOS_ENV}, else as each test says")
    group.addoption("--minicluster-alias-ray", action="store_true", default=None,
                    help="`import ray` gives minicluster for the session (application code keeps Ray's import); "
                         "ini: minicluster_alias_ray = true")
    group.addoption("--minicluster-backend", choices=("minicluster", "ray"), default=None,
                    help=f"ray: the fixtures start real Ray (installed separately) and `import minicluster` gives "
                         f"Ray; faults only minicluster can fire skip their tests; default ${ray_backend.BACKEND_ENV}, "
                         f"else minicluster")
    parser.addini("minicluster_alias_ray", type="bool", default=False,
                  help="`import ray` gives minicluster for the test session (as --minicluster-alias-ray)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "minicluster(num_nodes=2, num_cpus=1, seeds=None, chaos=None, **init_kwargs): settings of the "
        "minicluster_cluster fixture; seeds=N runs the test under N seeds; chaos=False opts out of "
        "--minicluster-chaos=on",
    )
    config.addinivalue_line(
        "markers",
        "ray_compatible: the test also runs on real Ray (.ci/run runs these with --minicluster-backend=ray)",
    )
    seed = config.getoption("minicluster_seed", None)
    explicit = seed is not None or bool(os.environ.get(SEED_ENV, "").strip())
    config.stash[_BASE_SEED] = seed if seed is not None else default_seed()
    config.stash[_SEED_EXPLICIT] = explicit
    chaos = config.getoption("minicluster_chaos", None) or os.environ.get(CHAOS_ENV, "").strip().lower() or None
    if chaos not in (None, "on", "off"):
        raise pytest.UsageError(f"{CHAOS_ENV}={chaos!r}: use 'on' or 'off'")
    config.stash[_CHAOS] = chaos
    seeds = config.getoption("minicluster_seeds", None)
    if seeds is not None and seeds < 1:
        raise pytest.UsageError(f"--minicluster-seeds={seeds}: must be >= 1")
    alias_ray = config.getoption("minicluster_alias_ray", None) or config.getini("minicluster_alias_ray")
    config.stash[_ON_RAY] = on_ray = _backend_setting(config) == "ray"
    if on_ray:
        if alias_ray:
            raise pytest.UsageError("--minicluster-alias-ray makes `import ray` give minicluster; with "
                                    "--minicluster-backend=ray, `import ray` is Ray: use one or the other")
        if chaos == "on":
            raise pytest.UsageError("--minicluster-chaos=on: chaos is fired by minicluster's runtime; "
                                    "Ray (--minicluster-backend=ray) cannot fire it")
        ray_backend.alias_minicluster_to_ray()  # before collection imports the test modules
        config.add_cleanup(ray_backend.unalias)
    elif alias_ray:
        ray_alias.install(shim_folder=True)  # before collection imports the test modules
        config.add_cleanup(ray_alias.uninstall)


def _backend_setting(config: pytest.Config) -> str:
    value = config.getoption("minicluster_backend", None) or os.environ.get(ray_backend.BACKEND_ENV, "").strip()
    if value not in ("", "minicluster", "ray"):
        raise pytest.UsageError(f"{ray_backend.BACKEND_ENV}={value!r}: use 'minicluster' or 'ray'")
    return value or "minicluster"


def pytest_report_header(config: pytest.Config) -> str:
    source = "explicit" if config.stash[_SEED_EXPLICIT] else "random"
    chaos = config.stash[_CHAOS] or "per test"
    if config.stash[_ON_RAY]:
        return f"minicluster: backend ray {ray_backend.import_ray().__version__} (faults only minicluster fires skip)"
    return (f"minicluster: seed {config.stash[_BASE_SEED]} ({source}; replay with --minicluster-seed), "
            f"chaos {chaos}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Repeat-under-N-seeds mode: parametrize minicluster_seed with base, base+1, ..."""
    if "minicluster_seed" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if config.stash[_ON_RAY]:
        return  # seeds choose faults, which Ray cannot fire: one run is all there is to see
    count = config.getoption("minicluster_seeds", None)
    if count is None:
        wanted = _marker_settings(metafunc.definition).get("seeds")
        if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: minicluster(seeds={wanted!r}) must be an int >= 1")
        # An explicit seed replays one run exactly, whatever the marker asks for.
        count = 1 if config.stash[_SEED_EXPLICIT] or wanted is None else wanted
    if count <= 1:
        return
    base = config.stash[_BASE_SEED]
    seeds = [base + i for i in range(count)]
    metafunc.parametrize("minicluster_seed", seeds, indirect=True, ids=[f"seed={s}" for s in seeds])


# ==== fixtures ===========================================================================


@pytest.fixture
def minicluster_seed(request: pytest.FixtureRequest) -> int:
    """This test's seed (see the module docstring)."""
    seed = getattr(request, "param", None)
    if seed is None:
        seed = request.config.stash[_BASE_SEED]
    request.node.stash[_SEED] = seed
    return seed


@pytest.fixture
def _minicluster_plan(request: pytest.FixtureRequest, minicluster_seed: int) -> Iterator[FaultPlan]:
    """The test's FaultPlan, before anything installs it (fault_plan and minicluster_cluster share it)."""
    plan = (ray_backend.RayFaultPlan if request.config.stash[_ON_RAY] else FaultPlan)(seed=minicluster_seed)
    chaos = request.config.stash[_CHAOS]
    opted_out = _marker_settings(request.node).get("chaos") is False
    if chaos == "on" and not opted_out:
        plan.chaos(kill_worker_every=DEFAULT_CHAOS_EVERY)
    elif chaos == "off":
        plan.chaos_enabled = False
    request.node.stash[_PLAN] = plan
    yield plan
    plan.uninstall()


@pytest.fixture
def fault_plan(request: pytest.FixtureRequest, _minicluster_plan: FaultPlan) -> FaultPlan:
    """A FaultPlan seeded with the test's seed; every planned fault must fire by the end of the test.

    Installed into minicluster_cluster. A test that asks for fault_plan alone gets the plan installed
    into the session this process already runs (one its own fixture started), else into a
    minicluster_cluster started for it: a plan that no session fires would prove nothing.
    """
    if "minicluster_cluster" not in request.fixturenames:
        running = ray_backend.import_ray() if request.config.stash[_ON_RAY] else ray
        if running.is_initialized():
            _minicluster_plan.install()  # uninstalled by _minicluster_plan's teardown
        else:
            request.getfixturevalue("minicluster_cluster")
    return _minicluster_plan


@pytest.fixture
def fault_journal(fault_plan: FaultPlan) -> FaultJournal:
    """The journal of the faults fault_plan fired."""
    return fault_plan.journal


@pytest.fixture
def minicluster_cluster(request: pytest.FixtureRequest, _minicluster_plan: FaultPlan,
                        minicluster_seed: int) -> Iterator[MiniclusterCluster]:
    """A fresh session with the test's fault plan installed; afterwards shut down and checked for leaks."""
    fault_plan = _minicluster_plan
    settings = dict(DEFAULT_SETTINGS)
    settings.update(_marker_settings(request.node))
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise pytest.UsageError(f"{request.node.nodeid}: an indirect parameter of minicluster_cluster must be "
                                    f"a dict of init() arguments, not {param!r}")
        settings.update(param)
    init_kwargs = {k: v for k, v in settings.items() if k not in ("seeds", "chaos")}
    if request.config.stash[_ON_RAY]:
        yield from _ray_cluster(init_kwargs, fault_plan, minicluster_seed)
        return
    if ray.is_initialized():
        raise pytest.UsageError(
            "minicluster_cluster: a session is already running in this process, and the fixture starts its own. "
            "It was started outside the plugin's fixtures (a module-scoped fixture, or an earlier test whose "
            "init() -- or whose first remote call, which starts one -- was never shut down): shut it down "
            "(ray.shutdown()) where it was started, or use the plugin's fixtures in that test too")
    ray.init(**init_kwargs)
    client = context.current()
    started = snapshot()
    store_root = started.store_root
    pids: List[int] = []
    try:
        nodes = [n.node_id for n in started.nodes]  # in start order
        fault_plan.install()
        yield MiniclusterCluster(nodes=nodes, seed=minicluster_seed, plan=fault_plan, settings=init_kwargs)
    finally:
        fault_plan.uninstall()
        if context.current() is client:
            pids = list(snapshot().pids())
            ray.shutdown()
    _check_no_leaks(pids, store_root)


def _ray_cluster(init_kwargs: Dict[str, Any], plan: FaultPlan, seed: int) -> Iterator[MiniclusterCluster]:
    """minicluster_cluster on real Ray: a one-node ray.init or a Cluster, shut down and checked for leaks."""
    if ray_backend.import_ray().is_initialized():
        raise pytest.UsageError("minicluster_cluster: Ray is already initialized in this process, and the "
                                "fixture starts its own cluster: shut it down (ray.shutdown()) where it was started")
    cluster = ray_backend.RayCluster(init_kwargs)
    backend.set_active(cluster)
    try:
        yield MiniclusterCluster(nodes=list(cluster.nodes), seed=seed, plan=plan, settings=init_kwargs,
                                 backend="ray")
    finally:
        backend.set_active(None)
        pids = cluster.pids()
        cluster.shutdown()
    _check_no_leaks(pids, None, ray_backend.EXIT_GRACE_S, kill_leftovers=True)


def _marker_settings(node: Any) -> Dict[str, Any]:
    """The minicluster markers of a test merged: module's, then class's, then the test's own."""
    settings: Dict[str, Any] = {}
    for marker in reversed(list(node.iter_markers("minicluster"))):
        if marker.args:
            raise pytest.UsageError(f"{node.nodeid}: minicluster(...) takes keyword arguments only")
        settings.update(marker.kwargs)
    return settings


# ==== hooks: unfired faults fail the test; failures show the seed and the journal ==========


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    plan = item.stash.get(_PLAN, None)
    if plan is None or outcome.excinfo is not None:
        return
    try:
        plan.assert_all_fired()
    except UnfiredFaultsError as exc:
        if not hasattr(outcome, "force_exception"):  # pluggy < 1.1
            raise
        outcome.force_exception(exc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED, None)
    if report.failed and seed is not None and not item.config.stash[_ON_RAY]:  # on Ray no seed is at work
        base_id = item.nodeid.split("[", 1)[0]
        text = [f"seed {seed}; replay with:  pytest '{base_id}' --minicluster-seed {seed}"]
        plan = item.stash.get(_PLAN, None)
        if plan is not None:
            text += ["", plan.describe(), "", "Injected faults that fired:", plan.journal.format()]
        report.sections.append((f"minicluster seed and faults ({report.when})", "\n".join(text)))


# ==== leak checks ========================================================================


def _check_no_leaks(pids: List[int], store_root: Optional[str], grace_s: float = EXIT_GRACE_S,
                    kill_leftovers: bool = False) -> None:
    """Fail if a process of the session outlived its shutdown (killed first with kill_leftovers: Ray's
    processes are no process group of ours that a later test's check would clean up) or its store did."""

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + grace_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    if left:
        for pid in left if kill_leftovers else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"minicluster: session processes still running {grace_s} s after shutdown: {left}"
                             + (" (killed now)" if kill_leftovers else ""))
    if store_root is not None and os.path.exists(store_root):
        raise AssertionError(f"minicluster: object store folder left behind after shutdown: {store_root} "
                             f"(contains {glob.glob(os.path.join(store_root, '*'))[:5]})")
