"""Bad input gets a clear error, raised where the user wrote it, and harms nothing (SPEC section 5)."""

from __future__ import annotations

import os
import re
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


def test_an_async_function_cannot_be_a_task_as_in_ray():
    async def later():
        return 1

    with pytest.raises(ValueError, match="'async def' should not be used for remote tasks"):
        ray.remote(later)


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


# ---- a ref of an ended session (issue 15) --------------------------------------------------------


def test_a_ref_kept_across_shutdown_and_init_raises_instead_of_reading_the_new_session():
    ray.init(num_nodes=1, num_cpus=1)

    @ray.remote
    def two():
        return 2

    small, large, result = ray.put(1), ray.put(b"x" * 300_000), two.remote()
    assert ray.get(result) == 2
    old_job = ray.get_runtime_context().get_job_id()
    ray.shutdown()

    ray.init(num_nodes=1, num_cpus=1)
    try:
        assert ray.get_runtime_context().get_job_id() != old_job
        fresh = [ray.put(5), ray.put(b"y" * 300_000), two.remote()]  # same counters as the old refs had
        assert all(f not in (small, large, result) for f in fresh)
        for stale in (small, large, result):
            with pytest.raises(ValueError, match="session that has ended"):
                ray.get(stale)
            with pytest.raises(ValueError, match="session that has ended"):
                ray.wait([stale])
            with pytest.raises(ValueError, match="session that has ended"):
                echo_arg.remote(stale)
            with pytest.raises(ValueError, match="session that has ended"):
                ray.put([stale])
        assert ray.get(fresh) == [5, b"y" * 300_000, 2]
    finally:
        ray.shutdown()


@ray.remote
def echo_arg(x):
    return x


# ---- a planted session root (issue 15) -----------------------------------------------------------


@pytest.fixture
def short_base(monkeypatch):
    """A fresh MINICLUSTER_TMPDIR under /tmp, short enough for the session's socket path."""
    import pathlib
    import shutil
    import tempfile

    base = pathlib.Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    monkeypatch.setenv("MINICLUSTER_TMPDIR", str(base))
    yield base
    ray.shutdown()
    shutil.rmtree(base, ignore_errors=True)


def test_a_session_root_that_is_a_symlink_is_refused_and_its_target_untouched(short_base):
    victim = short_base / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    (short_base / f"minicluster-{os.getuid()}").symlink_to(victim)
    with pytest.raises(PermissionError, match="symlink"):
        ray.init(num_nodes=1, num_cpus=1)
    assert not ray.is_initialized()
    assert os.listdir(victim) == [] and (os.stat(victim).st_mode & 0o777) == 0o755


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the folder to another user")
def test_a_session_root_owned_by_another_user_is_refused(short_base):
    root = short_base / f"minicluster-{os.getuid()}"
    root.mkdir()
    os.chown(root, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to user id 65534"):
        ray.init(num_nodes=1, num_cpus=1)
    assert os.listdir(root) == []


def test_a_loose_session_root_of_ours_is_made_private(short_base, cluster):
    root = short_base / f"minicluster-{os.getuid()}"
    root.mkdir()
    os.chmod(root, 0o777)
    cluster(num_nodes=1, num_cpus=1)
    assert (os.stat(root).st_mode & 0o777) == 0o700




# ---- environment variables and session files (issue 15) ------------------------------------


@pytest.mark.parametrize("variable", ["MINICLUSTER_STATE_JOURNAL_MAX_BYTES", "RAY_task_events_max_num_task_in_gcs",
                                      "MINICLUSTER_SESSIONS_KEPT", "MINICLUSTER_OBJECT_STORE_MEMORY"])
def test_a_bad_environment_variable_is_named_and_starts_nothing(monkeypatch, variable):
    monkeypatch.setenv(variable, "lots")
    with pytest.raises(ValueError, match=f"{variable}='lots' is not a valid value"):
        ray.init(num_nodes=1, num_cpus=1)
    assert not ray.is_initialized()


def test_garbage_in_a_dead_sessions_files_is_ignored_and_kills_nothing(cluster, short_base):
    """The reaper reads other sessions' files: whatever they say, it only kills our node managers."""
    import json
    import subprocess
    import sys

    root = short_base / f"minicluster-{os.getuid()}"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        for name, info, pids in [
            ("session_2020-01-01_00-00-00_000000_1_aaaa", "{not json", "1\n"),
            ("session_2020-01-01_00-00-00_000000_2_bbbb", json.dumps({"driver_pid": "nope"}), "x y z"),
            ("session_2020-01-01_00-00-00_000000_3_cccc",
             json.dumps({"driver_pid": int(dead), "start_time": 0, "store_root": "/etc"}),
             f"{os.getpid()}\n{bystander.pid}\n-5\n99999999\n"),
        ]:
            folder = root / name
            folder.mkdir(parents=True)
            (folder / "session.json").write_text(info)
            (folder / "node_pids").write_text(pids)
        cluster(num_nodes=1, num_cpus=1)
        assert ray.get(echo.remote(1)) == 1
        assert bystander.poll() is None  # a live process named in node_pids that is no node manager
        assert os.path.isdir("/etc")  # a store root that is not ours is never removed
    finally:
        bystander.kill()
        bystander.wait()


def test_option_errors_use_rays_words():
    """Code that matches Ray's messages (tests, wrappers) keeps working."""
    with pytest.raises(TypeError, match=re.escape(
            f"The type of keyword 'max_retries' must be {(int, type(None))}, but received type {float}")):
        echo.options(max_retries=0.5)
    with pytest.raises(ValueError, match="The keyword 'max_calls' only accepts None, 0 or a positive integer"):
        ray.remote(max_calls=-1)(lambda: None)
    with pytest.raises(ValueError, match="The keyword 'max_retries' only accepts None, 0, -1 or a positive integer, "
                                         "where -1 represents infinity."):
        echo.options(max_retries=-2)
    with pytest.raises(ValueError, match="The precision of the fractional quantity of resource num_gpus"):
        echo.options(num_gpus=0.0000001)
    with pytest.raises(ValueError, match="The precision of the fractional quantity of resource custom "):
        echo.options(resources={"custom": 0.00001})
    echo.options(num_gpus=0.25, resources={"custom": 0.0001})  # fine fractions are taken


def test_a_function_that_captured_a_huge_object_is_refused_before_it_ships(cluster, monkeypatch):
    monkeypatch.setenv("MINICLUSTER_FUNCTION_SIZE_WARN_THRESHOLD", str(2**20))
    monkeypatch.setenv("MINICLUSTER_FUNCTION_SIZE_ERROR_THRESHOLD", str(4 * 2**20))
    cluster(num_cpus=1)
    captured = bytearray(5 * 2**20)
    medium = bytearray(2 * 2**20)

    @ray.remote
    def uses_it():
        return len(captured)

    @ray.remote
    class Holder:
        def size(self):
            return len(captured)

    @ray.remote
    def uses_less():
        return len(medium)

    with pytest.raises(ValueError, match="The remote function .*uses_it is too large .*use put()"):
        uses_it.remote()
    with pytest.raises(ValueError, match="The actor Holder is too large"):
        Holder.remote()
    with pytest.warns(UserWarning, match="uses_less is very large"):
        assert ray.get(uses_less.remote(), timeout=10) == 2 * 2**20
