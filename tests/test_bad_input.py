"""Bad input gets a clear error, raised where the user wrote it, and harms nothing (SPEC section 5)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conftest import wait_for

import minicluster as ray
from minicluster import testing


@ray.remote
def echo(x):
    return x


def submitted_tasks() -> int:
    """Tasks the head knows of right now (pending or running)."""
    return testing.snapshot().live_tasks


# ---- calling things wrongly ------------------------------------------------------------------


def test_calling_a_remote_function_directly():
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        echo(1)
    assert not ray.is_initialized()  # nothing was started


def test_arguments_that_do_not_fit_the_signature_fail_at_remote(cluster):
    cluster()

    @ray.remote
    def pair(x, y, *rest):
        return x, y, rest

    @ray.remote
    class Account:
        def __init__(self, owner, *, currency="EUR"):
            self.owner = owner

        def deposit(self, amount, *, note):
            return amount

        @staticmethod
        def rate(code):
            return code

        @classmethod
        def kind(cls, label):
            return label

    for bad in (lambda: pair.remote(), lambda: pair.remote(1), lambda: pair.remote(1, 2, z=3),
                lambda: pair.options(name="p").remote(1), lambda: Account.remote(),
                lambda: Account.remote("ann", "USD")):
        with pytest.raises(TypeError, match="remote"):
            bad()
    assert submitted_tasks() == 0  # nothing reached the head
    assert ray.get(pair.remote(1, 2, 3, 4)) == (1, 2, (3, 4))
    account = Account.remote("ann", currency="USD")
    with pytest.raises(TypeError, match="missing a required argument: 'note'"):
        account.deposit.remote(5)
    with pytest.raises(TypeError, match="'code'"):
        account.rate.remote()
    with pytest.raises(TypeError, match="too many positional"):
        account.kind.remote(1, 2)
    assert ray.get([account.deposit.remote(5, note="n"), account.rate.remote("x"), account.kind.remote("y")]) == [
        5, "x", "y"]


def test_get_of_a_list_with_a_non_ref(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(TypeError):
        ray.get([1])
    with pytest.raises(TypeError):
        ray.get([echo.remote(1), "not a ref"])


def test_get_of_a_non_ref_raises_value_error_like_ray(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError, match="ObjectRef"):
        ray.get(1)


def test_put_of_a_ref(cluster):
    cluster(num_nodes=1, num_cpus=1)
    ref = ray.put(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        ray.put(ref)
    assert ray.get(ray.put([ref]))[0] == ref  # wrapping it in a list is fine


def test_wait_with_duplicates_or_too_many_returns(cluster):
    cluster(num_nodes=1, num_cpus=1)
    a, b = echo.remote(1), echo.remote(2)
    with pytest.raises(ValueError):
        ray.wait([a, a])
    with pytest.raises(ValueError):
        ray.wait([a, b], num_returns=3)
    with pytest.raises(ValueError):
        ray.wait([a, b], num_returns=0)
    with pytest.raises(ValueError):
        ray.wait([a, b], timeout=-1)
    with pytest.raises(TypeError):
        ray.wait(a)


def test_wait_on_an_empty_list(cluster):
    cluster(num_nodes=1, num_cpus=1)
    assert ray.wait([]) == ([], [])


def test_get_with_negative_timeout(cluster):
    """minicluster rejects it (Ray 2.60 silently blocks as with None)."""
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(ValueError, match="timeout"):
        ray.get(echo.remote(1), timeout=-1)


# ---- options --------------------------------------------------------------------------------


def test_unknown_option_in_decorator():
    with pytest.raises(ValueError, match="'?foo'?") as info:
        @ray.remote(foo=1)
        def f():
            pass
    assert "num_cpus" in str(info.value) and "max_retries" in str(info.value)  # lists the valid ones


def test_unknown_option_in_options():
    with pytest.raises(ValueError, match="foo") as info:
        echo.options(foo=1)
    assert "num_returns" in str(info.value)


@pytest.mark.parametrize("option, value", [
    ("num_returns", -1),
    ("num_returns", "two"),
    ("max_retries", "x"),
    ("max_retries", -2),
    ("num_cpus", -1),
    ("num_cpus", "2"),
    ("retry_exceptions", 5),
    ("retry_exceptions", [5]),
    ("scheduling_strategy", "WRONG"),
    ("resources", {"x": -1}),
    ("resources", {"CPU": 1}),
    ("max_calls", -1),
    ("name", 5),
])
def test_ill_typed_option_values_name_the_option(option, value):
    with pytest.raises((TypeError, ValueError), match=option if option != "resources" else "resource"):
        echo.options(**{option: value})
    with pytest.raises((TypeError, ValueError), match=option if option != "resources" else "resource"):
        ray.remote(**{option: value})(lambda: None)


def test_node_affinity_with_a_bad_node_id(cluster):
    from minicluster.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises((TypeError, ValueError), match="node"):
        echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy("not-hex", soft=False)).remote(1)
    with pytest.raises(TypeError):
        NodeAffinitySchedulingStrategy(12345, soft=False)
    assert submitted_tasks() == 0


def test_valid_option_values_are_accepted():
    echo.options(num_returns=0, max_retries=-1, num_cpus=0.5, retry_exceptions=[ValueError],
                 scheduling_strategy="SPREAD", resources={"x": 1}, name="n")


# ---- unpicklable things ------------------------------------------------------------------------


def test_unpicklable_argument_fails_at_remote_and_submits_nothing(cluster):
    cluster(num_nodes=1, num_cpus=1)
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        echo.remote(lock)
    message = str(info.value)
    assert "lock" in message  # names what could not be pickled
    assert "echo" in message  # and whose argument it was
    assert submitted_tasks() == 0
    with pytest.raises(TypeError, match="lock"):
        echo.remote([1, {"deep": lock}])
    with pytest.raises(TypeError, match="lock"):
        echo.remote(x=lock)
    assert submitted_tasks() == 0
    assert ray.get(echo.remote("still works")) == "still works"


def test_unpicklable_put_fails_and_names_it(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(TypeError, match="lock"):
        ray.put({"a": threading.Lock()})
    assert ray.get(ray.put(1)) == 1


def test_remote_function_closing_over_a_lock_fails_at_remote(cluster):
    cluster(num_nodes=1, num_cpus=1)
    lock = threading.Lock()

    @ray.remote  # decorating is fine, as in Ray
    def uses_lock():
        with lock:
            return 1

    with pytest.raises(TypeError) as info:
        uses_lock.remote()
    assert "lock" in str(info.value)
    assert "uses_lock" in str(info.value)
    assert submitted_tasks() == 0
    assert ray.get(echo.remote(2)) == 2


def test_unpicklable_return_value_is_a_task_error(cluster):
    cluster(num_nodes=1, num_cpus=1)

    @ray.remote(max_retries=0)
    def returns_lock():
        return threading.Lock()

    with pytest.raises(ray.exceptions.RayTaskError, match="lock"):
        ray.get(returns_lock.remote())
    assert ray.get(echo.remote(3)) == 3


# ---- init ---------------------------------------------------------------------------------


def test_init_twice(cluster):
    cluster(num_nodes=1, num_cpus=1)
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ray.init(num_cpus=1)
    info = ray.init(num_cpus=1, ignore_reinit_error=True)
    assert info.address_info["session_dir"]
    assert ray.get(echo.remote(1)) == 1


def test_init_with_bad_arguments():
    with pytest.raises(TypeError):
        ray.init(not_an_argument=1)
    with pytest.raises(ValueError):
        ray.init(num_nodes=0)
    with pytest.raises(ValueError):
        ray.init(num_cpus=-1)
    with pytest.raises(ValueError):
        ray.init(address="10.0.0.1:6379")
    assert not ray.is_initialized()


@pytest.mark.parametrize("first_call", ["remote", "put"])
def test_api_before_init_starts_a_session(cluster, first_call):
    assert not ray.is_initialized()
    if first_call == "remote":
        ref = echo.remote(5)
    else:
        ref = ray.put(5)
    assert ray.is_initialized()
    assert ray.get(ref) == 5
    # torn down (and leak-checked) by the fixture


# ---- resources no node has ----------------------------------------------------------------------


def test_infeasible_task_warns_and_stays_pending(cluster, capfd):
    cluster(num_nodes=2, num_cpus=1)
    ref = echo.options(resources={"nope": 1}).remote(1)
    ready, not_ready = ray.wait([ref], timeout=0.2)
    assert (ready, not_ready) == ([], [ref])
    seen = []
    wait_for(lambda: seen.append(capfd.readouterr().err) or "nope" in "".join(seen),
             timeout=5, what="a warning naming the resource on stderr")
    err = "".join(seen)
    assert "infeasible" in err.lower() or "no node" in err.lower()
    too_wide = echo.options(num_cpus=2).remote(1)  # no node has 2 CPUs
    assert ray.wait([too_wide], timeout=0.2) == ([], [too_wide])
    assert ray.get(echo.remote(2)) == 2  # other work is not blocked by them


def test_infeasible_warning_is_printed_once(cluster, capfd):
    cluster(num_nodes=1, num_cpus=1)
    refs = [echo.options(resources={"nope": 1}).remote(i) for i in range(5)]
    assert ray.wait(refs, timeout=0.2) == ([], refs)
    assert ray.get(echo.remote(0)) == 0
    err = capfd.readouterr().err
    assert err.count("nope") == 1


# ---- the object store on disk -----------------------------------------------------------------------


def test_store_falls_back_to_disk_when_shm_dir_is_missing(cluster, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("MINICLUSTER_SHM_DIR", str(tmp_path / "no-such-dir"))
    info = cluster(num_nodes=2, num_cpus=1)
    err = capfd.readouterr().err
    assert err.count("warning") == 1, err
    assert "disk" in err
    store = testing.snapshot().store_root
    assert not store.startswith("/dev/shm")
    assert store.startswith(info.address_info["session_dir"])

    array = np.arange(10**6, dtype=np.float64)
    out = ray.get(ray.put(array))
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable

    @ray.remote
    def make():
        return np.full(10**6, 3.0)

    @ray.remote
    def total(a):
        return float(a.sum())

    ref = make.remote()
    assert ray.get(ref).sum() == 3.0 * 10**6
    assert ray.get(total.remote(ref)) == 3.0 * 10**6
    assert os.path.isdir(store)
