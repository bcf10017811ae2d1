"""`import ray` resolves to minicluster: application code keeps Ray's import and is tested here.

Runs in the driver (installed by the pytest plugin's --minicluster-alias-ray, or
`minicluster_alias_ray = true` in the ini file) and in every worker of the sessions
it starts: the driver's sys.path, which each worker gets, leads with a folder
holding a tiny `ray` package whose import installs the same alias there, so a
function pickled by reference (`ray` in its module's globals) finds it too.

    sys.modules["ray"]                  a module that forwards to minicluster; a name minicluster
                                        lacks raises AttributeError naming `ray.<name>`
    sys.modules["ray.<sub>"]            minicluster's public module of that name (ray.util,
                                        ray.util.state, ray.exceptions, ray.cluster_utils, ...)
    import ray.<sub we lack>            ModuleNotFoundError naming it

install() is idempotent; uninstall() puts sys.modules and sys.path back.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import pkgutil
import shutil
import sys
import tempfile
import types
from typing import Any, List, Optional

import minicluster

#: Our modules that are not Ray's (or Ray's under another name): never aliased as ray.<name>.
NOT_RAY = frozenset({"testing", "cli", "demo", "api", "object_ref"})
#: What a worker's `import ray` runs (the package folder is made by install()).
SHIM_SOURCE = "from minicluster.testing.ray_alias import install as _install\n_install()\n"
WHY = ("`ray` is minicluster in this test session (the pytest plugin's --minicluster-alias-ray); "
       "see the README's table of Ray's API for what minicluster provides")


def _missing_attribute(name: str) -> Any:
    """`ray`'s module __getattr__ (PEP 562): minicluster's names, a clear error for the ones it lacks."""
    try:
        return getattr(minicluster, name)
    except AttributeError:
        pass
    module = sys.modules.get(f"ray.{name}")
    if module is not None:
        return module
    raise AttributeError(f"module 'ray' has no attribute {name!r}: minicluster does not provide ray.{name} ({WHY})")


def _names() -> List[str]:
    return sorted(set(dir(minicluster)) | {n[4:] for n in sys.modules if n.startswith("ray.") and n.count(".") == 1})


class _MissingFinder(importlib.abc.MetaPathFinder):
    """`import ray.<sub>` not aliased yet: minicluster's module of that name if it has one (its own
    ImportError if it needs an optional dependency), else an error naming what minicluster lacks."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith("ray.") or sys.modules.get("ray") is not _alias:
            return None
        parts = fullname.split(".")[1:]
        spec = None
        if parts[0] not in NOT_RAY and not any(p.startswith("_") for p in parts):
            try:
                spec = importlib.util.find_spec(f"minicluster.{'.'.join(parts)}")
            except ModuleNotFoundError:
                spec = None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {fullname!r}: minicluster does not provide {fullname} "
                                      f"({WHY})", name=fullname)
        return importlib.util.spec_from_loader(fullname, _Existing(importlib.import_module(spec.name)))


class _Existing(importlib.abc.Loader):
    """Loads `ray.<sub>` as minicluster's module, already imported, left as it is."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set it to the ray.<sub> one


_alias: Optional[types.ModuleType] = None  # a plain module (cloudpickle pickles those by name)
_finder = _MissingFinder()
_shim_root: Optional[str] = None  #: the folder holding the workers' `ray` package (driver only)
_saved: dict = {}  #: sys.modules entries named ray/ray.* before install (a real Ray, say)


def public_modules() -> List[str]:
    """minicluster's public submodules that Ray also has, as their names under minicluster ('util.state')."""
    names: List[str] = []
    for info in pkgutil.walk_packages(minicluster.__path__, "minicluster."):
        parts = info.name.split(".")[1:]
        if parts[0] in NOT_RAY or any(p.startswith("_") for p in parts):
            continue
        names.append(".".join(parts))
    return names


def install(shim_folder: bool = False) -> types.ModuleType:
    """Make `import ray` give minicluster in this process; with shim_folder, in the workers of the
    sessions started from now on too (driver side: the workers' sys.path comes from ours)."""
    global _alias, _shim_root
    if _alias is None or sys.modules.get("ray") is not _alias:
        for name in list(sys.modules):
            if (name == "ray" or name.startswith("ray.")) and name not in _saved:
                _saved[name] = sys.modules.pop(name)
        alias = types.ModuleType("ray", minicluster.__doc__)
        alias.__path__ = []  # a package, so `import ray.x` reaches _MissingFinder
        alias.__getattr__ = _missing_attribute  # type: ignore[attr-defined]
        alias.__dir__ = _names  # type: ignore[attr-defined]
        for sub in public_modules():
            try:
                module = importlib.import_module(f"minicluster.{sub}")
            except ImportError:
                continue  # needs an optional dependency (joblib, ...): `import ray.<sub>` tries again
            sys.modules[f"ray.{sub}"] = module
            if "." not in sub:
                setattr(alias, sub, module)
        _alias = alias
        sys.modules["ray"] = alias
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
    if shim_folder and _shim_root is None:
        root = tempfile.mkdtemp(prefix="minicluster-ray-alias-")
        os.makedirs(os.path.join(root, "ray"))
        with open(os.path.join(root, "ray", "__init__.py"), "w") as f:
            f.write(SHIM_SOURCE)
        sys.path.insert(0, root)
        _shim_root = root
    return _alias


def uninstall() -> None:
    """Undo install(): `ray` is what it was before (absent, or a real Ray)."""
    global _alias, _shim_root
    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        del sys.modules[name]
    sys.modules.update(_saved)
    _saved.clear()
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _alias = None
    if _shim_root is not None:
        if _shim_root in sys.path:
            sys.path.remove(_shim_root)
        shutil.rmtree(_shim_root, ignore_errors=True)
        _shim_root = None
