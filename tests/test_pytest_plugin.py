"""The pytest plugin, run on small inner test files (pytester): fixtures, markers, seeds, chaos, reports."""

from __future__ import annotations

pytest_plugins = ["pytester"]

INNER_OPTIONS = ("-p", "no:cacheprovider")


def run(pytester, source, *args):
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest(*INNER_OPTIONS, *args)


def test_marker_settings_and_fixtures(pytester):
    result = run(pytester, """
        import pytest
        import minicluster as ray

        @ray.remote(max_retries=1)
        def f(x):
            return x + 1

        @pytest.mark.minicluster(num_nodes=3, num_cpus=2)
        def test_it(minicluster_cluster, fault_plan, fault_journal, minicluster_seed):
            assert len(ray.nodes()) == 3 and ray.cluster_resources()["CPU"] == 6
            assert minicluster_cluster.nodes[0] == minicluster_cluster.head_node
            assert fault_plan.seed == minicluster_seed == minicluster_cluster.seed == 77
            fault_plan.kill_worker("f")
            assert ray.get(f.remote(1)) == 2
            assert fault_journal.count("kill_worker") == 1

        @pytest.mark.parametrize("minicluster_cluster", [{"num_nodes": 1, "num_cpus": 3}], indirect=True)
        def test_param(minicluster_cluster):
            assert len(ray.nodes()) == 1 and ray.cluster_resources()["CPU"] == 3
    """, "--minicluster-seed", "77")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["minicluster: seed 77 (explicit*"])


def test_repeat_under_n_seeds(pytester):
    result = run(pytester, """
        import pytest

        def test_plain(minicluster_seed):
            pass

        @pytest.mark.minicluster(seeds=3)
        def test_marked(minicluster_seed):
            pass
    """, "--minicluster-seeds", "2", "--minicluster-seed", "10", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_plain?seed=10?*", "*test_plain?seed=11?*",
                                 "*test_marked?seed=10?*", "*test_marked?seed=11?*"])


def test_marker_seeds_and_explicit_replay(pytester, monkeypatch):
    monkeypatch.delenv("MINICLUSTER_TEST_SEED", raising=False)
    source = """
        import pytest

        @pytest.mark.minicluster(seeds=3)
        def test_marked(minicluster_seed):
            pass
    """
    run(pytester, source).assert_outcomes(passed=3)
    # An explicit seed replays one run exactly.
    result = pytester.runpytest(*INNER_OPTIONS, "--minicluster-seed", "5")
    result.assert_outcomes(passed=1)
    monkeypatch.setenv("MINICLUSTER_TEST_SEED", "6")
    result = pytester.runpytest(*INNER_OPTIONS)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["minicluster: seed 6 (explicit*"])


def test_failing_test_reports_seed_plan_and_journal(pytester):
    result = run(pytester, """
        import minicluster as ray

        @ray.remote(max_retries=1)
        def f(x):
            return x

        def test_fails(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("f", at="before_store")
            ray.get(f.remote(1))
            assert False, "the application got it wrong"
    """, "--minicluster-seed", "4321")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*minicluster seed and faults (call)*",
        "seed 4321; replay with:  pytest 'test_inner.py::test_fails' --minicluster-seed 4321",
        "FaultPlan(seed=4321)",
        "*#1 kill_worker(task='f', attempt=0, nth=1, at='before_store')  fired 1x",
        "Injected faults that fired:",
        "#1 * kill_worker * node-? pid=*  f attempt 0  at before_store  <- #1 kill_worker*",
    ])


def test_unfired_planned_fault_fails_the_test(pytester):
    result = run(pytester, """
        import minicluster as ray

        @ray.remote
        def f(x):
            return x

        def test_unfired(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("g")
            assert ray.get(f.remote(1)) == 1

        def test_optional(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("g", optional=True)
            assert ray.get(f.remote(1)) == 1
    """)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*UnfiredFaultsError: 1 planned fault(s) never fired*",
                                 "*#1 kill_worker(task='g'*"])


def test_chaos_on_and_off(pytester):
    source = """
        import pytest
        import minicluster as ray

        @ray.remote(max_retries=-1)
        def f(x):
            return x

        def test_chaos(minicluster_cluster, fault_plan, fault_journal):
            assert ray.get([f.remote(i) for i in range(100)]) == list(range(100))
            print("KILLS", fault_journal.count("kill_worker"), "ENABLED", fault_plan.chaos_enabled)

        @pytest.mark.minicluster(chaos=False)
        def test_opted_out(minicluster_cluster, fault_plan):
            assert not fault_plan.faults
    """
    result = run(pytester, source, "--minicluster-chaos", "on", "-s")
    result.assert_outcomes(passed=2)
    kills = int(result.stdout.str().split("KILLS ")[1].split()[0])
    assert kills >= 2
    result = pytester.runpytest(*INNER_OPTIONS, "--minicluster-chaos", "off", "-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*KILLS 0 ENABLED False*"])


def test_bad_settings_are_usage_errors(pytester):
    result = run(pytester, """
        import pytest

        @pytest.mark.minicluster(seeds=0)
        def test_zero(minicluster_seed):
            pass
    """)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*minicluster(seeds=0) must be an int >= 1*"])


def test_markers_merge_module_then_test(pytester):
    result = run(pytester, """
        import pytest
        import minicluster as ray

        pytestmark = pytest.mark.minicluster(num_nodes=3, chaos=False)

        @pytest.mark.minicluster(num_cpus=2)
        def test_merged(minicluster_cluster, fault_plan):
            assert len(ray.nodes()) == 3 and ray.cluster_resources()["CPU"] == 6
            assert not fault_plan.faults  # chaos=False from the module beat --minicluster-chaos=on
    """, "--minicluster-chaos", "on")
    result.assert_outcomes(passed=1)


def test_fault_plan_alone_starts_a_session_with_the_plan(pytester):
    # Asking for fault_plan without minicluster_cluster used to leave the plan uninstalled while the
    # first remote call auto-started a session that leaked into every later test.
    result = run(pytester, """
        import pytest
        import minicluster as ray

        @ray.remote(max_retries=1)
        def f(x):
            return x + 1

        @pytest.mark.minicluster(num_nodes=1)
        def test_plan_only(fault_plan, fault_journal):
            fault_plan.kill_worker("f")
            assert ray.get(f.remote(1)) == 2
            assert fault_journal.count("kill_worker") == 1 and len(ray.nodes()) == 1

        def test_later(minicluster_cluster):
            assert ray.get(f.remote(2)) == 3
    """)
    result.assert_outcomes(passed=2)


def test_fault_plan_joins_a_session_the_test_started(pytester):
    result = run(pytester, """
        import pytest
        import minicluster as ray

        @ray.remote(max_retries=1)
        def f(x):
            return x + 1

        @pytest.fixture(scope="module")
        def own_session():
            ray.init(num_nodes=1, num_cpus=1)
            yield
            ray.shutdown()

        def test_plan_in_own_session(own_session, fault_plan, fault_journal):
            fault_plan.kill_worker("f")
            assert ray.get(f.remote(1)) == 2
            assert fault_journal.count("kill_worker") == 1

        def test_plan_uninstalled_after(own_session):
            assert ray.get(f.remote(1)) == 2
    """)
    result.assert_outcomes(passed=2)


def test_leaked_session_error_names_the_fix(pytester):
    result = run(pytester, """
        import minicluster as ray

        def test_leaks():
            ray.init(num_nodes=1, num_cpus=1)

        def test_cluster(minicluster_cluster):
            pass

        def test_cleanup():
            ray.shutdown()
    """)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*a session is already running in this process*ray.shutdown()*"])


def test_unfired_fault_lists_the_names_that_ran(pytester):
    result = run(pytester, """
        import minicluster as ray

        @ray.remote
        def square(x):
            return x * x

        @ray.remote
        class Counter:
            def incr(self):
                return 1

        def test_task_typo(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("sqaure")
            assert ray.get(square.remote(3)) == 9

        def test_actor_typo(minicluster_cluster, fault_plan):
            fault_plan.kill_actor("Countr", call=1)
            assert ray.get(Counter.remote().incr.remote()) == 1

        def test_name_right_nth_wrong(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("square", nth=2)
            assert ray.get(square.remote(3)) == 9
    """)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*#1 kill_worker(task='sqaure'*",
        "*no task named 'sqaure' ran; did you mean 'square'? These ran: square",
    ])
    result.stdout.fnmatch_lines(["*no actor (name or class) named 'Countr' ran; did you mean 'Counter'?*"])
    result.stdout.fnmatch_lines(["*1 attempt(s) of tasks named 'square' ran, none matching nth/attempt*nth=2*"])


ALIASED = """
    import importlib

    import pytest
    import ray
    import ray.util.state
    from ray.exceptions import RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import minicluster

    @ray.remote
    def nested(x):
        return ray.get(ray.put(x)) + 1  # `ray` inside a worker is minicluster too

    @ray.remote
    def boom():
        raise ValueError("no")

    def test_ray_is_minicluster(minicluster_cluster):
        assert ray.get is minicluster.get and ray.util.state is minicluster.util.state
        assert ray.get(nested.remote(1)) == 2
        with pytest.raises(RayTaskError):
            ray.get(boom.remote())
        node = ray.get_runtime_context().get_node_id()
        assert ray.get(nested.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(0))

    def test_missing_names_are_named():
        with pytest.raises(AttributeError, match="minicluster does not provide ray.no_such_api"):
            ray.no_such_api
        with pytest.raises(ModuleNotFoundError, match="minicluster does not provide ray.workflow"):
            importlib.import_module("ray.workflow")
"""


def test_alias_ray_option(pytester):
    result = run(pytester, ALIASED, "--minicluster-alias-ray")
    result.assert_outcomes(passed=2)
    import sys
    assert "ray" not in sys.modules or "minicluster" not in repr(sys.modules["ray"])  # undone after the run


def test_alias_ray_ini_setting(pytester):
    pytester.makeini("[pytest]\nminicluster_alias_ray = true\n")
    result = run(pytester, ALIASED)
    result.assert_outcomes(passed=2)
