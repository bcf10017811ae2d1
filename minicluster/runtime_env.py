"""`RuntimeEnv` and `RuntimeEnvConfig` (Ray's `ray.runtime_env`): a job's, actor's or task's environment.

Runs wherever user code builds one. A RuntimeEnv is a dict of Ray's fields, checked when made;
what minicluster honours and refuses is in _private/common/runtime_envs.py (env_vars,
working_dir, py_modules, excludes, config are honoured; pip, conda, uv, container, image_uri
and the rest raise ValueError naming the field). Plain dicts are taken everywhere a
RuntimeEnv is.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from minicluster._private.common import runtime_envs


class RuntimeEnvConfig(dict):
    """Ray's setup options of an environment: `setup_timeout_seconds`, `eager_install`, `log_files`.
    Setting up here is a copy made at init(), so they change nothing; they are checked and kept."""

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True,
                 log_files: Optional[List[str]] = None) -> None:
        super().__init__()
        if not isinstance(setup_timeout_seconds, int) or isinstance(setup_timeout_seconds, bool):
            raise TypeError(f"setup_timeout_seconds must be of type int, got: {type(setup_timeout_seconds)}")
        if setup_timeout_seconds <= 0 and setup_timeout_seconds != -1:
            raise ValueError(f"setup_timeout_seconds must be greater than zero or equals to -1, "
                             f"got: {setup_timeout_seconds}")
        if not isinstance(eager_install, bool):
            raise TypeError(f"eager_install must be a boolean. got {type(eager_install)}")
        self["setup_timeout_seconds"] = setup_timeout_seconds
        self["eager_install"] = eager_install
        if log_files is not None:
            self["log_files"] = list(log_files)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self)


class RuntimeEnv(dict):
    """A runtime environment: `RuntimeEnv(env_vars={...}, working_dir=..., py_modules=[...])`.

    Local working_dir / py_modules paths are taken only by init(runtime_env=...), as in Ray."""

    def __init__(self, *, py_modules: Optional[List[str]] = None, working_dir: Optional[str] = None,
                 env_vars: Optional[Dict[str, str]] = None, config: Optional[Dict[str, Any]] = None,
                 _validate: bool = True, **kwargs: Any) -> None:
        super().__init__()
        fields = dict(kwargs)
        for name, value in (("py_modules", py_modules), ("working_dir", working_dir), ("env_vars", env_vars),
                            ("config", config)):
            if value is not None:
                fields[name] = value
        if _validate:
            # Local paths are allowed here: whether they may be used is decided where the
            # environment is given (a task's or actor's options take only package URIs).
            checked = runtime_envs.check(fields, at_job=True) or {}
        else:
            checked = fields
        self.update(checked)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self)

    def serialize(self) -> str:
        return json.dumps(dict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def deserialize(cls, serialized_runtime_env: str) -> "RuntimeEnv":
        return cls(_validate=False, **json.loads(serialized_runtime_env))

    def env_vars(self) -> Dict[str, str]:
        return dict(self.get("env_vars") or {})

    def working_dir(self) -> str:
        return self.get("working_dir", "")

    def py_modules(self) -> List[str]:
        return list(self.get("py_modules") or [])

    def has_working_dir(self) -> bool:
        return bool(self.get("working_dir"))

    def has_py_modules(self) -> bool:
        return bool(self.get("py_modules"))

    def plugins(self) -> List[Any]:
        return []  # minicluster has no runtime_env plugins


__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
