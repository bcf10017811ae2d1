"""Ray's `ray.util.joblib`: joblib's "ray" backend, so `n_jobs` runs on a minicluster session.

    from minicluster.util.joblib import register_ray
    register_ray()
    with joblib.parallel_backend("ray"):
        joblib.Parallel(n_jobs=4)(joblib.delayed(f)(x) for x in data)   # scikit-learn's n_jobs too

joblib is an optional dependency (`pip install 'minicluster[joblib]'`); this module
imports without it, and register_ray() says what to install. The backend is in
ray_backend.py; it runs in the process that runs joblib.Parallel (the driver).
"""

from __future__ import annotations


def register_ray() -> None:
    """Register the "ray" backend with joblib (parallel_backend("ray") / parallel_config)."""
    try:
        import joblib
    except ImportError as exc:
        raise ImportError("minicluster.util.joblib needs joblib, an optional dependency: "
                          "pip install 'minicluster[joblib]' (or pip install joblib)") from exc
    from minicluster.util.joblib.ray_backend import RayBackend

    joblib.register_parallel_backend("ray", RayBackend)


__all__ = ["register_ray"]
