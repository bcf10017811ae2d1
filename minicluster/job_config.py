"""`JobConfig`: settings of the job a driver starts, passed as `init(job_config=...)` (Ray's name).

Runs in the driver. minicluster honours the fields that mean something on one
machine: `default_actor_lifetime` (the lifetime of actors created without
`lifetime=`), `ray_namespace` (the job's namespace, as `init(namespace=...)`),
`runtime_env` (the job's environment, as `init(runtime_env=...)`; runtime_env.py) and
`_disable_job_level_lineage_reconstruction` (lost objects are never rebuilt) and
`code_search_path` (folders put first on the workers' sys.path, as Ray does for Python;
a file's folder is used). Ray's other fields (JVM options, metadata, ...)
raise ValueError when set, rather than being accepted and ignored.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from minicluster._private.common import runtime_envs

_LIFETIMES = ("detached", "non_detached")


def _unsupported(field: str, value: Any) -> ValueError:
    return ValueError(f"JobConfig({field}={value!r}) is not supported by minicluster; it honours only "
                      "default_actor_lifetime, ray_namespace, runtime_env, code_search_path and "
                      "_disable_job_level_lineage_reconstruction")


def _search_path(paths: Optional[List[str]]) -> List[str]:
    """Ray's code_search_path for Python: each entry a folder, or a file standing for its folder."""
    if paths is None:
        return []
    if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"code_search_path must be a list of paths, got {paths!r}")
    return [os.path.abspath(os.path.dirname(p) if os.path.isfile(p) else p) for p in paths]


class JobConfig:
    """What a job is started with; see the module docstring for the fields honoured."""

    def __init__(
        self,
        jvm_options: Optional[List[str]] = None,
        code_search_path: Optional[List[str]] = None,
        runtime_env: Optional[dict] = None,
        _client_job: bool = False,
        metadata: Optional[dict] = None,
        ray_namespace: Optional[str] = None,
        default_actor_lifetime: str = "non_detached",
        _disable_job_level_lineage_reconstruction: bool = False,
        _py_driver_sys_path: Optional[List[str]] = None,
    ) -> None:
        unsupported: Dict[str, Any] = {
            "jvm_options": jvm_options,
            "_client_job": _client_job, "metadata": metadata, "_py_driver_sys_path": _py_driver_sys_path,
        }
        for field, value in unsupported.items():
            if value:  # None, False and empty are Ray's defaults: nothing to honour
                raise _unsupported(field, value)
        self._disable_job_level_lineage_reconstruction = bool(_disable_job_level_lineage_reconstruction)
        self.code_search_path: List[str] = _search_path(code_search_path)
        self.ray_namespace: Optional[str] = None
        self.default_actor_lifetime = "non_detached"
        self.runtime_env: Dict[str, Any] = {}
        self.set_runtime_env(runtime_env)
        self.set_ray_namespace(ray_namespace)
        self.set_default_actor_lifetime(default_actor_lifetime)

    def set_default_actor_lifetime(self, default_actor_lifetime: str) -> None:
        """"detached" or "non_detached": the lifetime of actors created without `lifetime=`."""
        if default_actor_lifetime not in _LIFETIMES:
            raise ValueError(f"Default actor lifetime must be one of {list(_LIFETIMES)}, "
                             f"got {default_actor_lifetime!r}")
        self.default_actor_lifetime = default_actor_lifetime

    def set_ray_namespace(self, ray_namespace: Optional[str]) -> None:
        if ray_namespace is not None and not isinstance(ray_namespace, str):
            raise TypeError(f"ray_namespace must be a string, got {ray_namespace!r}")
        self.ray_namespace = ray_namespace

    def set_runtime_env(self, runtime_env: Optional[dict], validate: bool = False) -> None:
        """The job's environment: checked now (local working_dir / py_modules paths must exist);
        init() copies those into the session folder."""
        self.runtime_env = runtime_envs.check(runtime_env, at_job=True) or {}

    def set_metadata(self, key: str, value: str) -> None:
        raise _unsupported("metadata", {key: value})

    def __repr__(self) -> str:
        return (f"JobConfig(ray_namespace={self.ray_namespace!r}, "
                f"default_actor_lifetime={self.default_actor_lifetime!r})")
