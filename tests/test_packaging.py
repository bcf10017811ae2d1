"""The package as installed: every declared dependency is used, the licence file and the typing
marker ship, other platforms are refused at init with the reason, and the session root's lock."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest
from conftest import wait_for

import minicluster as ray
from minicluster._private.client import session as session_files
from minicluster._private.common import config
from minicluster._private.store import store_spares
from minicluster.cluster_utils import Cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minicluster"


def _declared_dependencies() -> list:
    """The names of pyproject.toml's [project] dependencies (not the extras)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block, "pyproject.toml has no dependencies list"
    return [re.match(r"[A-Za-z0-9_.-]+", item).group(0) for item in re.findall(r'"([^"]+)"', block.group(1))]


def _imported_top_level_names() -> set:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported_by_the_package():
    declared = _declared_dependencies()
    assert {"cloudpickle", "psutil", "pyarrow", "filelock"} <= set(declared)
    modules_of = importlib.metadata.packages_distributions()  # import name -> distributions
    imported = _imported_top_level_names()
    unused = []
    for dist in declared:
        provides = {module for module, dists in modules_of.items()
                    if any(d.lower().replace("_", "-") == dist.lower().replace("_", "-") for d in dists)}
        if not provides & imported:
            unused.append(dist)
    assert not unused, (f"declared in pyproject.toml but never imported in minicluster/: {unused}; use each where "
                        "it is the right tool, or make it an optional extra")


def test_the_licence_and_typing_marker_ship():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject
    assert "License :: OSI Approved :: Apache Software License" in pyproject
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert (PACKAGE / "py.typed").is_file()
    assert re.search(r'minicluster = \["py\.typed"\]', pyproject), "py.typed must be in package-data"
    assert "Operating System :: POSIX :: Linux" in pyproject and "Typing :: Typed" in pyproject


@pytest.mark.parametrize("platform", ["win32", "freebsd14", "cygwin"])
def test_init_on_an_unsupported_platform_says_why_it_cannot_run(monkeypatch, tmp_path, platform):
    root = tmp_path / "sessions"
    monkeypatch.setenv("MINICLUSTER_TMPDIR", str(root))
    monkeypatch.setattr(sys, "platform", platform)
    with pytest.raises(RuntimeError, match=rf"minicluster runs on Linux \(and, untested, macOS\), and this is "
                                           f"'{platform}'") as raised:
        ray.init(num_cpus=1)
    assert "fork() without exec" in str(raised.value) and "switch the import back to ray" in str(raised.value)
    assert not ray.is_initialized()
    assert not root.exists()  # refused before anything was made
    with pytest.raises(RuntimeError, match="minicluster runs on Linux"):
        Cluster(initialize_head=True)


def test_macos_is_not_refused_but_told_once_what_it_does_without(monkeypatch, cluster):
    monkeypatch.setattr(config, "_warned_platform", False)
    monkeypatch.setattr(sys, "platform", "darwin")  # (the node processes are real Linux ones)
    with pytest.warns(UserWarning, match="minicluster on macOS is untested") as caught:
        cluster(num_cpus=1)
    assert "no /dev/shm" in str(caught[0].message) and "PR_SET_PDEATHSIG" in str(caught[0].message)
    assert ray.get(ray.put(3)) == 3
    ray.shutdown()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second session says nothing more
        cluster(num_cpus=1)


def test_spare_store_files_do_without_posix_fallocate(monkeypatch, tmp_path):
    """macOS has no posix_fallocate: the spare keeper makes no spare, and a writer is not held up."""
    monkeypatch.setattr(store_spares, "_fallocate", store_spares._no_fallocate)
    keeper = store_spares.SpareKeeper()
    folder = str(tmp_path)
    keeper.ask(folder, store_spares.MIN_BYTES, 1 << 30)
    wait_for(lambda: keeper._want_dir is None and keeper._spare is None, 10, "the keeper to give up the spare")
    assert keeper.take(folder, str(tmp_path / "tmp-object"), store_spares.MIN_BYTES, 1 << 30) is None
    assert keeper._thread.is_alive()
    assert not [n for n in os.listdir(folder) if n.startswith(".spare-") and not n.startswith(".spare-slot")]


def test_drivers_take_turns_in_the_session_root(monkeypatch):
    root = tempfile.mkdtemp(prefix="mc-", dir="/tmp")  # short: the session's socket path must fit
    monkeypatch.setenv("MINICLUSTER_TMPDIR", root)
    lock_path = os.path.join(root, f"minicluster-{os.getuid()}", session_files.INIT_LOCK)
    os.makedirs(os.path.dirname(lock_path), mode=0o700)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys\nlock = filelock.FileLock(sys.argv[1])\nlock.acquire()\n"
         "print('held', flush=True)\nsys.stdin.readline()\n", lock_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # Another driver is creating its session: this one waits, then says what it waited for.
        with pytest.raises(TimeoutError, match=re.escape(lock_path)):
            session_files.Session(None, lock_timeout=0.2)
        assert not [n for n in os.listdir(os.path.dirname(lock_path)) if n.startswith("session_")]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=10) == 0
        ray.init(num_cpus=1)
        assert ray.get(ray.put(7)) == 7
        latest = os.path.join(os.path.dirname(lock_path), "session_latest")
        assert os.readlink(latest) == ray.get_runtime_context().get_session_name()
    finally:
        ray.shutdown()
        holder.kill()
        holder.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
