"""The public names SPEC section 2 promises, with Ray's spelling (so `import minicluster as ray` is drop-in)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import minicluster as ray

TOP_LEVEL = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel",
    "nodes", "cluster_resources", "available_resources", "get_runtime_context", "ObjectRef", "method",
    "exceptions", "ObjectID", "ActorID", "JobID", "NodeID", "TaskID", "WorkerID",
]
TOP_LEVEL_ACTORS = ["kill", "get_actor"]

EXCEPTIONS = [
    "RayError", "RayTaskError", "TaskCancelledError", "WorkerCrashedError", "RayActorError", "ActorDiedError",
    "ActorUnavailableError", "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError", "ObjectReconstructionFailedLineageEvictedError",
    "ReferenceCountingAssertionError", "ObjectFetchTimedOutError", "GetTimeoutError", "NodeDiedError",
    "TaskUnschedulableError", "ObjectStoreFullError",
]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name(name):
    assert hasattr(ray, name), f"minicluster.{name} is missing"


@pytest.mark.parametrize("name", TOP_LEVEL_ACTORS)
def test_top_level_actor_name(name):
    assert callable(getattr(ray, name))


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_exception_class(name):
    from minicluster import exceptions

    cls = getattr(exceptions, name)
    assert inspect.isclass(cls) and issubclass(cls, BaseException)
    assert ray.exceptions is exceptions


def test_scheduling_strategies_module():
    module = importlib.import_module("minicluster.util.scheduling_strategies")
    strategy = module.NodeAffinitySchedulingStrategy("ab" * 28, soft=True)
    assert strategy.node_id == "ab" * 28 and strategy.soft is True
    with pytest.raises(TypeError):
        module.NodeAffinitySchedulingStrategy("ab" * 28)  # soft is required, as in Ray


@pytest.mark.parametrize("name, params", [
    ("init", ["num_cpus", "num_nodes", "resources", "object_store_memory", "ignore_reinit_error", "namespace"]),
    ("get", ["timeout"]),
    ("wait", ["num_returns", "timeout", "fetch_local"]),
    ("cancel", ["force", "recursive"]),
])
def test_signatures_take_rays_keywords(name, params):
    signature = inspect.signature(getattr(ray, name))
    for param in params:
        assert param in signature.parameters, f"{name}() has no {param!r}"


def test_object_ref_methods():
    for method in ("hex", "task_id", "binary", "future", "__await__"):
        assert hasattr(ray.ObjectRef, method), method


def test_runtime_context_methods():
    from minicluster.api import RuntimeContext

    for method in ("get_job_id", "get_node_id", "get_task_id", "get_worker_id", "get_actor_id", "get_task_name"):
        assert hasattr(RuntimeContext, method), method


def test_object_id_is_rays_old_name_for_object_ref():
    assert ray.ObjectID is ray.ObjectRef
