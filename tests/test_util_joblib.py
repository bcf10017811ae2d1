"""minicluster.util.joblib: joblib's "ray" backend runs Parallel's calls on pool actors;
joblib stays optional (a clear ImportError names the extra)."""

from __future__ import annotations

import os
import sys

import pytest

import minicluster as ray
from minicluster.util.joblib import register_ray

joblib = pytest.importorskip("joblib", reason="joblib is in the test extra: pip install -e '.[test]'")


def test_parallel_runs_on_the_session_and_raises_the_original_error(cluster):
    cluster(num_cpus=2)
    register_ray()
    with joblib.parallel_backend("ray"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(lambda x: (x * x, os.getpid()))(i) for i in range(20))
    assert [v for v, _ in out] == [i * i for i in range(20)]
    assert os.getpid() not in {pid for _, pid in out}  # ran in the pool's actors, not here

    def fails(x):
        if x == 3:
            raise KeyError(x)
        return x

    with joblib.parallel_backend("ray", n_jobs=-1):  # -1: every CPU of the session
        with pytest.raises(KeyError):
            joblib.Parallel()(joblib.delayed(fails)(i) for i in range(6))


def test_ray_remote_args_reach_the_pool_actors(cluster):
    cluster(num_cpus=2, resources={"pool_slot": 2})
    register_ray()
    with joblib.parallel_backend("ray", ray_remote_args={"resources": {"pool_slot": 1}}):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))
    assert out == [0, 1, 2, 3]


def test_register_ray_without_joblib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "joblib", None)  # import joblib now raises ImportError
    with pytest.raises(ImportError, match=r"minicluster\[joblib\]"):
        register_ray()
    assert not ray.is_initialized()
