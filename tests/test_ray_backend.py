"""The pytest plugin's real-Ray backend (--minicluster-backend=ray), on small inner test files.

The inner runs need Ray installed: .ci/run runs this file in its Ray virtualenv
(ray_compatible marker); in an environment without Ray those tests skip and the
ones checking what happens without Ray run instead.
"""

from __future__ import annotations

import importlib.util
import signal

import pytest

from minicluster.testing import backend

pytest_plugins = ["pytester"]

HAVE_RAY = importlib.util.find_spec("ray") is not None and "minicluster" not in repr(importlib.util.find_spec("ray"))
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed here (.ci/run's Ray step runs these)")
OPTIONS = ("-p", "no:cacheprovider", "--minicluster-backend=ray")


def run_on_ray(pytester, source, *args):
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess(*OPTIONS, *args, timeout=240)


@needs_ray
@pytest.mark.ray_compatible
@pytest.mark.timeout(300)
def test_fixtures_start_ray_and_minicluster_is_ray(pytester):
    result = run_on_ray(pytester, """
        import os

        import pytest
        import ray as real_ray

        import minicluster as ray
        from minicluster import testing
        from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(max_retries=3)
        def plus_one(x):
            return ray.get(ray.put(x)) + 1  # `minicluster` inside a Ray worker is Ray too

        @ray.remote
        def where():
            return os.getpid(), ray.get_runtime_context().get_node_id()

        @pytest.mark.minicluster(num_nodes=1, num_cpus=2, seeds=5)
        def test_one_node(minicluster_cluster, minicluster_seed):
            assert ray.remote is real_ray.remote and minicluster_cluster.backend == "ray"
            assert NodeAffinitySchedulingStrategy is real_ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
            assert ray.cluster_resources()["CPU"] == 2
            assert ray.get(plus_one.remote(1)) == 2
            with pytest.raises(RuntimeError, match="num_nodes >= 2"):
                testing.add_node()

        @pytest.mark.minicluster(num_nodes=3, num_cpus=1)
        def test_controls(minicluster_cluster):
            nodes = minicluster_cluster.nodes
            assert testing.live_nodes() == nodes and nodes[0] == real_ray.get_runtime_context().get_node_id()
            pid, node = ray.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[2], soft=False)
                                              ).remote())
            assert node == nodes[2] and pid in testing.worker_pids(nodes[2])
            testing.kill_worker(pid)
            with pytest.raises(ValueError, match="not a live worker"):
                testing.kill_worker(os.getpid())
            testing.kill_node(nodes[2])
            assert testing.live_nodes() == nodes[:2]
            with pytest.raises(RuntimeError, match="head"):
                testing.kill_node(nodes[0])
            assert ray.get([plus_one.remote(i) for i in range(4)]) == [1, 2, 3, 4]
            added = testing.add_node(num_cpus=1)
            assert testing.live_nodes() == nodes[:2] + [added]
            ref = ray.put(b"x" * 200_000)
            assert testing.object_locations(ref) == [nodes[0]]

        def test_minicluster_only_controls(minicluster_cluster):
            for call in (lambda: testing.stop_node(minicluster_cluster.nodes[0]), testing.snapshot,
                         testing.validate_state, lambda: testing.FaultPlan(seed=1).install()):
                with pytest.raises(RuntimeError, match="is minicluster-only: .*runs on Ray"):
                    call()

        def test_planned_fault_skips(minicluster_cluster, fault_plan):
            fault_plan.kill_worker("plus_one")
            raise AssertionError("not reached: adding the fault skips the test")
    """, "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["minicluster: backend ray 2.*",
                                 "SKIPPED [[]1[]] test_inner.py:*: minicluster-only: kill_worker(...) -- "
                                 "a fault plan is fired by minicluster's runtime*Ray has no such hooks*"])


@needs_ray
@pytest.mark.ray_compatible
@pytest.mark.timeout(120)
def test_options_only_minicluster_has_are_refused_on_ray(pytester):
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(*OPTIONS, "--minicluster-chaos", "on", timeout=60)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--minicluster-chaos=on: chaos is fired by minicluster's runtime*"])
    result = pytester.runpytest_subprocess(*OPTIONS, "--minicluster-alias-ray", timeout=60)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*use one or the other*"])


@pytest.mark.skipif(HAVE_RAY, reason="checks the message given when Ray is missing")
def test_ray_backend_without_ray_says_how_to_install_it(pytester):
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(*OPTIONS, timeout=60)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--minicluster-backend=ray needs Ray in this environment (pip install 'ray==*"])


def test_unknown_backend_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("MINICLUSTER_BACKEND", "spark")
    pytester.makepyfile(test_inner="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*MINICLUSTER_BACKEND='spark': use 'minicluster' or 'ray'*"])


def test_minicluster_only_controls_name_why(monkeypatch):
    from minicluster import testing
    monkeypatch.setattr(backend, "_active", object())
    with pytest.raises(backend.MiniclusterOnlyError, match=r"stop_node\(\) is minicluster-only: Ray cannot pause"):
        testing.stop_node("00")
    with pytest.raises(backend.MiniclusterOnlyError, match="kill_worker_running"):
        testing.kill_worker_running(None, signal.SIGKILL)
