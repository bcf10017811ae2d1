"""runtime_env: Ray's per-job, per-actor and per-task environment, checked, merged, packaged and applied.

What runs where:
  check, merge, encode  the submitting process (driver or worker), when `init(runtime_env=...)`,
                        `@remote(runtime_env=...)` or `.options(runtime_env=...)` is given;
  package               the driver, at init(): a local `working_dir` or `py_modules` entry is copied
                        into the session folder (`runtime_resources/`), as Ray uploads it, so the
                        user's folder is never touched and later edits do not reach the workers;
  apply                 a worker, before its first task: a worker serves one environment for its
                        whole life (the head keys its worker kinds by it, virtual_nodes.worker_kind).

Honoured fields: `env_vars` (merged key by key over the parent's), `working_dir` and
`py_modules` (local paths at the job level, as in Ray; the copies are importable and the
working_dir copy is the workers' cwd), `excludes` (patterns left out of the copies) and `config`
(Ray's setup timeout and eager install: setting up here is a copy made at init, so neither
changes anything). Everything else (pip, conda, uv, container, image_uri, remote URIs, ...)
needs what one machine without a package cache cannot give: ValueError naming the field.

An environment travels as canonical JSON (`encode`): equal environments give equal strings,
which is what makes them a worker-pool key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Optional

HONOURED = frozenset({"env_vars", "working_dir", "py_modules", "excludes", "config"})
#: Fields Ray knows that this machine cannot honour, with the reason given in the error.
REFUSED = {
    "pip": "installing packages (pip) needs a package index and a virtualenv per environment",
    "conda": "conda environments are not created by minicluster",
    "uv": "installing packages (uv) needs a package index and a virtualenv per environment",
    "container": "workers do not run in containers",
    "image_uri": "workers do not run in container images",
    "py_executable": "workers are forked from the node's interpreter; another executable cannot be used",
    "java_jars": "there are no Java workers",
    "worker_process_setup_hook": "workers are forked ready-made; no setup hook runs in them",
    "_nsight": "workers are not run under a profiler",
    "_rocprof_sys": "workers are not run under a profiler",
}
#: Not a runtime_env field of Ray's: the job's JobConfig(code_search_path=...), carried with the
#: job's environment (set by the driver, never accepted from users): folders put first on the
#: workers' sys.path, as Ray does for Python workers.
CODE_SEARCH_PATH = "_code_search_path"
#: Ray's package URI scheme for uploaded folders; here, a copy in the session's runtime_resources/.
PACKAGE_PREFIX = "gcs://_ray_pkg_"
#: Ray's limit on one package (its gRPC message size).
MAX_PACKAGE_BYTES = 512 * 1024 * 1024
_LOCAL_ONLY_AT_JOB = ("{path} is not a valid URI. Passing directories or modules to be dynamically uploaded "
                      "is only supported at the job level (i.e., passed to `ray.init`).")


def _refuse(field: str, why: str) -> ValueError:
    return ValueError(f"runtime_env[{field!r}] is not supported by minicluster: {why}")


def _check_env_vars(env_vars: Any) -> Optional[Dict[str, str]]:
    if not isinstance(env_vars, dict):
        raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], got {type(env_vars)}")
    for key, value in env_vars.items():
        if not isinstance(key, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], but the key {key} is of "
                            f"type {type(key)}")
        if not isinstance(value, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], but the value {value} is "
                            f"of type {type(value)}")
    return dict(env_vars) or None


def _check_location(field: str, value: Any, at_job: bool) -> None:
    """A working_dir or py_modules entry: a local path (job level only, as Ray) or one of this
    session's package URIs (what get_runtime_context().runtime_env shows); no remote URIs."""
    if not isinstance(value, str):
        what = "`working_dir`" if field == "working_dir" else "`py_module`"
        raise TypeError(f"{what} must be a string, got {type(value)}.")
    if value.startswith(PACKAGE_PREFIX):
        return
    if "://" in value:
        raise _refuse(field, f"{value!r} is a remote URI; only local paths can be used (nothing is downloaded)")
    if not at_job:
        raise ValueError(_LOCAL_ONLY_AT_JOB.format(path=value))
    if not os.path.exists(value):
        raise ValueError(f"{field} {value!r} does not exist")
    if field == "working_dir" and not os.path.isdir(value):
        raise ValueError(f"working_dir {value!r} is not a directory")
    if field == "py_modules" and not (os.path.isdir(value) or value.endswith(".py")):
        raise ValueError(f"py_modules entry {value!r} must be a directory or a .py file (.whl files would need "
                         "installing, which minicluster does not do)")


def check(runtime_env: Any, at_job: bool) -> Optional[Dict[str, Any]]:
    """The environment as a plain dict with only meaningful fields (None if empty); raises on
    anything Ray refuses or minicluster cannot honour. `at_job`: given to init() (local paths allowed)."""
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict or a RuntimeEnv, got {type(runtime_env)}")
    env: Dict[str, Any] = {}
    for field, value in runtime_env.items():
        if value is None:
            continue
        if field in REFUSED:
            raise _refuse(field, REFUSED[field])
        if field not in HONOURED:
            raise ValueError(f"runtime_env[{field!r}]: unknown field (minicluster has no runtime_env plugins); "
                             f"it honours {', '.join(sorted(HONOURED))}")
        if field == "env_vars":
            value = _check_env_vars(value)
        elif field == "working_dir":
            _check_location(field, value, at_job)
        elif field in ("py_modules", "excludes"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"runtime_env[{field!r}] must be of type List[str], got {type(value)}")
            if field == "py_modules":
                for entry in value:
                    _check_location(field, entry, at_job)
            value = list(value) or None
        elif field == "config":
            value = _check_config(value)
        if value is not None:
            env[field] = value
    return env or None


def _check_config(config: Any) -> Optional[Dict[str, Any]]:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise TypeError(f"runtime_env['config'] must be a dict or a RuntimeEnvConfig, got {type(config)}")
    unknown = set(config) - {"setup_timeout_seconds", "eager_install", "log_files"}
    if unknown:
        raise ValueError(f"runtime_env['config']: unknown entries {sorted(unknown)}")
    return dict(config) or None


def merge(parent: Optional[Dict[str, Any]], child: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Ray's inheritance: the child's fields replace the parent's, except env_vars, merged key by key
    (the child's value wins)."""
    if not child:
        return parent
    if not parent:
        return child
    merged = {**parent, **child}
    if "env_vars" in parent and "env_vars" in child:
        merged["env_vars"] = {**parent["env_vars"], **child["env_vars"]}
    return merged


def encode(env: Optional[Dict[str, Any]]) -> Optional[str]:
    """Canonical JSON: equal environments, equal strings (a worker-pool key); None when empty."""
    return json.dumps(env, sort_keys=True, separators=(",", ":")) if env else None


def user_visible(encoded: Optional[str]) -> str:
    """The environment as the runtime context shows it (Ray's fields only), as JSON."""
    env = {k: v for k, v in decode(encoded).items() if k != CODE_SEARCH_PATH}
    return encode(env) or "{}"


_decoded: Dict[str, Dict[str, Any]] = {}


def decode(encoded: Optional[str]) -> Dict[str, Any]:
    if not encoded:
        return {}
    env = _decoded.get(encoded)
    if env is None:
        env = _decoded[encoded] = json.loads(encoded)
    return env


# ---- packaging (driver, at init) -----------------------------------------------------------


def _resources_dir(session_dir: str) -> str:
    return os.path.join(session_dir, "runtime_resources")


def _package_dir(session_dir: str, uri: str) -> str:
    kind = "working_dir_files" if uri.startswith(PACKAGE_PREFIX + "wd_") else "py_modules_files"
    return os.path.join(_resources_dir(session_dir), kind, uri[len("gcs://"):-len(".zip")])


def _files_of(path: str, excludes: List[str]) -> List[str]:
    """The files of a folder to copy (relative paths), without those `excludes` matches (Ray's
    patterns, matched against the relative path and each of its parts)."""
    found = []
    for root, dirs, files in os.walk(path):
        rel_root = os.path.relpath(root, path)
        dirs[:] = [d for d in dirs if not _excluded(os.path.normpath(os.path.join(rel_root, d)), excludes)]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if not _excluded(rel, excludes):
                found.append(rel)
    return sorted(found)


def _excluded(rel: str, excludes: List[str]) -> bool:
    parts = rel.split(os.sep)
    for pattern in excludes:
        pattern = pattern.strip("/")
        if fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def _copy_package(source: str, session_dir: str, kind: str, excludes: List[str]) -> str:
    """Copy a folder (or one .py file) into the session's runtime_resources; its package URI.
    The name is a hash of the content, as Ray's, so the same content is one package."""
    source = os.path.abspath(source)
    if os.path.isdir(source):
        base, files = source, _files_of(source, excludes)
    else:
        base, files = os.path.dirname(source), [os.path.basename(source)]
    digest = hashlib.sha1()
    total = 0
    for rel in files:
        full = os.path.join(base, rel)
        total += os.path.getsize(full)
        if total >= MAX_PACKAGE_BYTES:
            raise ValueError(f"Package size of {source!r} exceeds the maximum size of "
                             f"{MAX_PACKAGE_BYTES / 2**20:.2f}MiB. To exclude large files, use the 'excludes' "
                             "option in the runtime_env.")
        digest.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            digest.update(f.read())
    uri = f"{PACKAGE_PREFIX}{kind}_{digest.hexdigest()[:16]}.zip"
    target = _package_dir(session_dir, uri)
    if kind == "mod" and os.path.isdir(source):
        inside = os.path.join(target, os.path.basename(source))  # importable by the folder's name
    else:
        inside = target
    if not os.path.exists(target):
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(inside, rel)) or inside, exist_ok=True)
            shutil.copy2(os.path.join(base, rel), os.path.join(inside, rel))
        os.makedirs(target, exist_ok=True)
    return uri


def package(env: Optional[Dict[str, Any]], session_dir: str) -> Optional[Dict[str, Any]]:
    """The job's environment with each local working_dir / py_modules path replaced by the URI of
    its copy in the session folder (what Ray's get_runtime_context().runtime_env shows)."""
    if not env:
        return env
    env = dict(env)
    excludes = env.get("excludes") or []
    if "working_dir" in env and not env["working_dir"].startswith(PACKAGE_PREFIX):
        env["working_dir"] = _copy_package(env["working_dir"], session_dir, "wd", excludes)
    if "py_modules" in env:
        env["py_modules"] = [m if m.startswith(PACKAGE_PREFIX) else _copy_package(m, session_dir, "mod", [])
                             for m in env["py_modules"]]
    return env


def remove_packages(session_dir: str) -> None:
    shutil.rmtree(_resources_dir(session_dir), ignore_errors=True)


# ---- applying (a worker, before its first task) -------------------------------------------


def apply(env: Dict[str, Any], session_dir: str) -> None:
    """Make this process run in `env`: its variables set, its packages first on sys.path,
    the working_dir copy as cwd. Never undone: the worker serves this environment only."""
    paths = [_package_dir(session_dir, uri) for uri in env.get("py_modules") or ()]
    working_dir = env.get("working_dir")
    if working_dir:
        paths.append(_package_dir(session_dir, working_dir))
    for path in paths:  # checked before anything changes: a task naming another session's package fails
        if not os.path.isdir(path):
            raise ValueError(f"runtime_env package {os.path.basename(path)!r} does not exist in this session "
                             "(packages are made from the local paths given to init(runtime_env=...))")
    os.environ.update(env.get("env_vars") or {})
    paths = list(env.get(CODE_SEARCH_PATH) or ()) + paths  # (the job's own folders, used in place)
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    if working_dir:
        os.chdir(_package_dir(session_dir, working_dir))
