"""Application errors: how an exception raised in a task reaches `get`, and Ray's exception hierarchy."""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time

import pytest

import minicluster as ray
from minicluster import exceptions as rex


class MyError(Exception):
    def __init__(self, message, code=7):
        super().__init__(message)
        self.code = code


class TwoArgsOneMessage(Exception):
    """Pickles fine but cannot be re-created from its args: unpickling calls __init__('1-2')."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


class TwoArgsKept(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class NoSubclass(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("subclassing forbidden")


class _Picky(type):
    def __new__(mcs, name, bases, namespace):
        if name != "MetaForbids":
            raise TypeError("this metaclass makes no subclasses")
        return super().__new__(mcs, name, bases, namespace)


class MetaForbids(Exception, metaclass=_Picky):
    pass


class HoldsLock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


@ray.remote(max_retries=0)
def fail_value():
    raise ValueError("boom")


@ray.remote(max_retries=0)
def raise_it(kind):
    exc = {
        "my": lambda: MyError("custom failure", code=42),
        "two_one": lambda: TwoArgsOneMessage(1, 2),
        "two_kept": lambda: TwoArgsKept(1, 2),
        "no_subclass": lambda: NoSubclass("x"),
        "meta": lambda: MetaForbids("m"),
        "lock": lambda: HoldsLock("locked"),
    }[kind]()
    raise exc


@ray.remote
def passthrough(x):
    return x


def test_task_error_is_ray_task_error_and_the_users_class(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError) as info:
        ray.get(fail_value.remote())
    err = info.value
    assert isinstance(err, rex.RayTaskError)
    assert isinstance(err, rex.RayError)
    assert isinstance(err.cause, ValueError) and not isinstance(err.cause, rex.RayTaskError)
    assert str(err.cause) == "boom"
    text = str(err)
    assert text.startswith("ray::fail_value()")  # Ray's header: ray::<name>() (pid=..., ip=...)
    assert "pid=" in text
    assert "Traceback" in text or "File " in text
    assert 'raise ValueError("boom")' in text  # the remote traceback
    assert text.rstrip().endswith("ValueError: boom")


def test_except_clause_in_user_code_catches_it(cluster):
    cluster(num_nodes=1, num_cpus=1)
    try:
        ray.get(fail_value.remote())
    except ValueError as exc:
        caught = exc
    assert "boom" in str(caught)


def test_custom_exception_class(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(MyError) as info:
        ray.get(raise_it.remote("my"))
    err = info.value
    assert isinstance(err, rex.RayTaskError)
    assert type(err.cause) is MyError
    assert err.cause.code == 42
    assert "custom failure" in str(err)


def test_attributes_of_the_cause_read_through_the_error(cluster):
    """As in Ray (its dual class forwards attribute lookups to the cause): err.code is the cause's code."""
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(MyError) as info:
        ray.get(raise_it.remote("my"))
    assert info.value.code == 42


def test_exception_with_two_args_kept_is_subclassed(cluster):
    """Ray raises RayTaskError(TwoArgsKept) here: the class can be subclassed and re-created from its args."""
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(TwoArgsKept) as info:
        ray.get(raise_it.remote("two_kept"))
    assert isinstance(info.value, rex.RayTaskError)
    assert info.value.cause.args == (1, 2)


@pytest.mark.parametrize("kind, cls", [("no_subclass", NoSubclass), ("meta", MetaForbids)])
def test_class_that_cannot_be_subclassed_falls_back_to_plain_ray_task_error(cluster, kind, cls):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(raise_it.remote(kind))
    err = info.value
    assert type(err) is rex.RayTaskError
    assert not isinstance(err, cls)
    assert type(err.cause) is cls
    assert f"{cls.__name__}: " in str(err)
    assert "ray::raise_it()" in str(err)


def test_exception_that_cannot_be_recreated_still_gives_a_ray_error(cluster):
    """Ray raises UnserializableException (a RayError) quoting the original error; a plain RayTaskError is fine too."""
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(rex.RayError) as info:
        ray.get(raise_it.remote("two_one"))
    err = info.value
    assert "TwoArgsOneMessage: 1-2" in str(err)
    if isinstance(err, rex.RayTaskError):
        # The original cannot be rebuilt: the cause is a RayError quoting it (as Ray does
        # for exceptions it cannot serialize).
        assert isinstance(err.cause, (TwoArgsOneMessage, rex.RayError))
        assert "TwoArgsOneMessage: 1-2" in str(err.cause)


def test_exception_that_cannot_be_pickled_gives_plain_ray_task_error(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(raise_it.remote("lock"))
    err = info.value
    assert not isinstance(err, HoldsLock)
    assert "HoldsLock: locked" in str(err)
    # Ray's words: the cause is a RayError saying the exception "isn't serializable"
    assert isinstance(err.cause, rex.RayError)
    assert f"Exception {__name__}.HoldsLock isn't serializable" in str(err.cause)


def test_cause_that_cannot_be_subclassed_is_raised_as_ray_task_error_with_a_warning(cluster, caplog):
    cluster(num_nodes=1, num_cpus=1)
    with caplog.at_level(logging.WARNING, logger="minicluster.exceptions"):
        with pytest.raises(rex.RayTaskError):
            ray.get(raise_it.remote("no_subclass"))
    assert "This exception is raised as RayTaskError only. You can use `ray_task_error.cause` to access " \
        "the user exception." in caplog.text


def test_dual_exception_instance_survives_pickling():
    """Ray's make_dual_exception_instance(): both a RayTaskError and the cause's class, also
    once pickled and loaded again (its class is made anew from the cause's)."""
    dual = rex.RayTaskError("f", "Traceback ...", MyError("kept", code=3)).make_dual_exception_instance()
    loaded = pickle.loads(pickle.dumps(dual))
    for err in (dual, loaded):
        assert isinstance(err, rex.RayTaskError) and isinstance(err, MyError)
        assert err.code == 3 and err.cause.code == 3
    with pytest.raises(TypeError):
        rex.RayTaskError("f", "tb", NoSubclass("x")).make_dual_exception_instance()


def test_error_with_a_large_message(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def big_error():
        raise ValueError("x" * 200_000)

    with pytest.raises(ValueError) as info:
        ray.get(big_error.remote())
    assert isinstance(info.value, rex.RayTaskError)
    assert str(info.value.cause) == "x" * 200_000
    # Stored like a large value, once per return: each ref raises it on its own.
    first, second = big_error.options(num_returns=2).remote()
    for ref in (second, first):
        with pytest.raises(ValueError) as info:
            ray.get(ref)
        assert str(info.value.cause) == "x" * 200_000


def test_task_depending_on_a_failed_task_fails_with_that_error(cluster):
    cluster(num_nodes=1, num_cpus=1)
    failed = fail_value.remote()
    dependent = passthrough.remote(failed)
    chain = passthrough.remote(passthrough.remote(failed))
    for ref in (dependent, chain, failed):
        with pytest.raises(ValueError) as info:
            ray.get(ref)
        assert isinstance(info.value, rex.RayTaskError)
        assert isinstance(info.value.cause, ValueError)
        assert str(info.value.cause) == "boom"
        assert "ray::fail_value()" in str(info.value)


def test_get_of_a_failed_ref_inside_a_task_raises_there(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def reads(refs):
        try:
            ray.get(refs[0])
        except ValueError as exc:
            return f"caught {type(exc.cause).__name__}: {exc.cause}"
        return "no error"

    assert ray.get(reads.remote([fail_value.remote()])) == "caught ValueError: boom"


def test_error_raised_again_in_a_task_reaches_the_driver(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def reraises(refs):
        return ray.get(refs[0])

    with pytest.raises(ValueError) as info:
        ray.get(reraises.remote([fail_value.remote()]))
    assert isinstance(info.value, rex.RayTaskError)
    assert "boom" in str(info.value)


def test_returned_exception_is_a_value_not_an_error(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote
    def returns_error():
        return ValueError("just a value")

    value = ray.get(returns_error.remote())
    assert type(value) is ValueError and str(value) == "just a value"


def test_wait_counts_a_failed_task_as_ready(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ref = fail_value.remote()
    assert ray.wait([ref], timeout=10) == ([ref], [])


def test_keyboard_interrupt_raised_by_the_task_does_not_interrupt_the_driver(cluster):
    """Ray reports it as RayTaskError(TaskCancelledError); it must never arrive as a KeyboardInterrupt."""
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def interrupts():
        raise KeyboardInterrupt()

    try:
        ray.get(interrupts.remote())
    except KeyboardInterrupt as exc:  # pragma: no cover - the failure being tested
        pytest.fail(f"get raised a KeyboardInterrupt: {type(exc).__mro__}")
    except rex.RayError as exc:
        assert isinstance(exc, rex.TaskCancelledError)
    else:
        pytest.fail("get returned a value")


# ---- the exception hierarchy (SPEC section 2) -------------------------------------------------


def test_every_error_is_a_ray_error():
    for name in rex.__all__:
        assert issubclass(getattr(rex, name), rex.RayError), name


@pytest.mark.parametrize("name", [
    "OwnerDiedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
    "ReferenceCountingAssertionError", "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError"])
def test_object_errors_are_object_lost_errors(name):
    assert issubclass(getattr(rex, name), rex.ObjectLostError)


def test_special_bases():
    assert issubclass(rex.ReferenceCountingAssertionError, AssertionError)
    assert issubclass(rex.GetTimeoutError, TimeoutError)
    assert issubclass(rex.ActorDiedError, rex.RayActorError)
    assert issubclass(rex.ActorUnavailableError, rex.RayActorError)
    assert issubclass(rex.ObjectReconstructionFailedMaxAttemptsExceededError, rex.ObjectReconstructionFailedError)
    assert issubclass(rex.ObjectReconstructionFailedLineageEvictedError, rex.ObjectReconstructionFailedError)
    for name in ["TaskCancelledError", "WorkerCrashedError", "NodeDiedError", "TaskUnschedulableError",
                 "ObjectStoreFullError", "RayTaskError"]:
        assert issubclass(getattr(rex, name), rex.RayError)
        assert not issubclass(getattr(rex, name), rex.ObjectLostError)


def test_object_reconstruction_failed_error_carries_its_reason():
    oid = "ab" * 28
    plain = rex.ObjectReconstructionFailedError(oid)
    assert plain.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED"
    assert "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" in str(plain)
    assert oid in str(plain)
    put = rex.ObjectReconstructionFailedError(oid, reason="OBJECT_UNRECONSTRUCTABLE_PUT")
    assert put.reason == "OBJECT_UNRECONSTRUCTABLE_PUT" and "OBJECT_UNRECONSTRUCTABLE_PUT" in str(put)
    assert rex.ObjectReconstructionFailedMaxAttemptsExceededError(oid).reason == \
        "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED"
    assert rex.ObjectReconstructionFailedLineageEvictedError(oid).reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"


def test_errors_survive_pickling():
    """Errors cross process boundaries pickled; their class and fields must come back."""
    import pickle

    oid = "cd" * 28
    samples = [
        rex.OwnerDiedError(oid, "worker w"),
        rex.ReferenceCountingAssertionError(oid),
        rex.ObjectReconstructionFailedLineageEvictedError(oid),
        rex.WorkerCrashedError("worker died"),
        rex.NodeDiedError("node died"),
        rex.TaskUnschedulableError("dead node"),
        rex.TaskCancelledError("ff" * 24),
        rex.ActorDiedError("aa" * 16, "gone", actor_init_failed=True),
        rex.GetTimeoutError("late"),
    ]
    for err in samples:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
    assert pickle.loads(pickle.dumps(samples[2])).reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED"
    assert pickle.loads(pickle.dumps(samples[7])).actor_init_failed is True


def test_ray_task_error_as_instanceof_cause():
    err = rex.RayTaskError("f", "Traceback ...\nValueError: x", ValueError("x"))
    dual = err.as_instanceof_cause()
    assert isinstance(dual, ValueError) and isinstance(dual, rex.RayTaskError)
    assert dual.cause is err.cause
    assert str(dual).startswith("ray::f() (pid=")


def test_get_of_a_list_raises_a_failure_at_once_without_waiting_for_the_rest(cluster, tmp_path):
    # Ray's get raises as soon as one of the objects is an error, even if others never finish.
    cluster(num_cpus=2)
    release = str(tmp_path / "release")

    @ray.remote
    def fails() -> None:
        raise ValueError("early failure")

    @ray.remote
    def waits_for_release(path: str) -> str:
        while not os.path.exists(path):
            time.sleep(0.01)
        return "released"

    @ray.remote
    def gets_both(refs: list) -> str:
        try:
            ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            return f"raised {type(exc.cause).__name__}"
        return "no error"

    slow = waits_for_release.remote(release)
    bad = fails.remote()
    with pytest.raises(ValueError, match="early failure"):
        ray.get([slow, bad], timeout=20)  # the failure is not ready yet when the get starts
    with pytest.raises(ValueError, match="early failure"):
        ray.get([slow, bad], timeout=20)  # and when it is ready already
    assert ray.get(gets_both.remote([slow, bad]), timeout=20) == "raised ValueError"  # inside a task too
    open(release, "w").close()
    assert ray.get(slow, timeout=20) == "released"
def test_a_dependent_of_a_failed_task_names_both_tasks(cluster):
    cluster()

    @ray.remote(max_retries=0)
    def potentially_fail(x):
        raise MyError(f"failed on {x}")

    @ray.remote
    def consume(value):
        return value

    with pytest.raises(MyError) as info:
        ray.get(consume.remote(potentially_fail.remote(1)))
    text = str(info.value)
    assert text.startswith("ray::consume()")
    assert "At least one of the input arguments for this task could not be computed:" in text
    assert "ray::potentially_fail()" in text and "failed on 1" in text
    assert isinstance(info.value, rex.RayTaskError) and isinstance(info.value.cause, MyError)


def test_a_task_that_gets_a_failed_child_shows_both_frames(cluster):
    cluster(num_cpus=2)

    @ray.remote(max_retries=0)
    def inner_fails():
        raise MyError("deep down")

    @ray.remote(max_retries=0)
    def outer_waits():
        return ray.get(inner_fails.remote())

    with pytest.raises(MyError) as info:
        ray.get(outer_waits.remote())
    text = str(info.value)
    outer, inner = text.index("in outer_waits"), text.index("in inner_fails")
    assert text.startswith("ray::outer_waits()") and outer < text.index("ray::inner_fails()") < inner
    assert "Traceback (most recent call last)" not in text  # as Ray prints it
    assert "minicluster/" not in text.replace("minicluster/tests", "")  # the runtime's own frames are left out
    assert isinstance(info.value.cause, MyError) and info.value.cause.code == 7


@pytest.mark.parametrize("name, bases", [
    ("ObjectFreedError", (rex.ObjectLostError,)),
    ("ActorAlreadyExistsError", (ValueError, rex.RayError)),
    ("RaySystemError", (rex.RayError,)),
    ("LocalRayletDiedError", (rex.RayError,)),
    ("OutOfMemoryError", (rex.RayError,)),
    ("OutOfDiskError", (rex.RayError,)),
    ("RuntimeEnvSetupError", (rex.RayError,)),
    ("TaskPlacementGroupRemoved", (rex.RayError,)),
    ("ActorPlacementGroupRemoved", (rex.RayError,)),
    ("ActorUnschedulableError", (rex.RayError,)),
    ("PendingCallsLimitExceeded", (rex.RayError,)),
    ("AsyncioActorExit", (rex.RayError,)),
    ("CrossLanguageError", (rex.RayError,)),
])
def test_rays_other_exception_classes_exist_for_user_code_that_catches_them(name, bases):
    cls = getattr(rex, name)
    assert all(issubclass(cls, base) for base in bases)
    try:  # the point: an except clause naming it runs instead of failing with AttributeError
        raise rex.RayError("something else")
    except cls:
        pytest.fail(f"{name} caught an unrelated error")
    except rex.RayError:
        pass


def test_a_taken_actor_name_is_actor_already_exists_error(cluster):
    cluster()

    @ray.remote
    class Named:
        def ping(self):
            return 1

    first = Named.options(name="only").remote()
    assert ray.get(first.ping.remote()) == 1
    with pytest.raises(rex.ActorAlreadyExistsError, match="already taken"):
        Named.options(name="only").remote()

    @ray.remote
    def create_in_a_task():
        try:
            Named.options(name="only").remote()
        except ValueError as exc:  # Ray's class is also a ValueError
            return type(exc).__name__
        return "created"

    assert ray.get(create_in_a_task.remote()) == "ActorAlreadyExistsError"


def test_a_task_whose_argument_was_lost_for_good_says_so_in_rays_words(cluster):
    # As for an upstream task error: the dependent's error carries Ray's sentence, then the loss;
    # and it is both a RayTaskError and the loss (ObjectReconstructionFailedError).
    import numpy as np

    from minicluster import testing
    from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster(num_nodes=2, num_cpus=1)
    _, victim = testing.live_nodes()

    @ray.remote(max_retries=0)
    def make():
        return np.zeros(2**18)

    @ray.remote
    def use(array) -> int:
        return len(array)

    ref = make.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim, soft=False)).remote()
    ray.wait([ref], timeout=10, fetch_local=False)
    testing.kill_node(victim)
    with pytest.raises(rex.RayTaskError) as info:
        ray.get(use.remote(ref), timeout=10)
    assert isinstance(info.value, rex.ObjectReconstructionFailedError)
    text = str(info.value)
    assert "At least one of the input arguments for this task could not be computed" in text
    assert "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" in text
