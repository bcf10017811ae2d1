"""joblib's "ray" backend (Ray's ray.util.joblib.ray_backend.RayBackend), on our Pool.

joblib hands the backend batches of calls; each batch goes to one of the pool's actors
(minicluster.util.multiprocessing.Pool.apply_async) and joblib's callback fires on the
driver when it is done. `n_jobs=-1` means the session's CPUs (a session is started if
none runs); `ray_remote_args`, given to parallel_backend("ray", ...) or to Parallel(...),
are the pool actors' options. Needs joblib (imported here at module level: only
register_ray() imports this module, after checking joblib is there).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    PoolManagerMixin,
    SequentialBackend,
)

from minicluster import api
from minicluster.util.multiprocessing.pool import Pool

_JOBLIB_POOL_SETTINGS = {"context", "max_nbytes", "mmap_mode", "temp_folder", "verbose", "prewarm"}


class RayBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib's batches on a pool of actors."""

    supports_retrieve_callback = True
    supports_return_generator = False

    def __init__(self, nesting_level: Optional[int] = None, inner_max_num_threads: Optional[int] = None,
                 ray_remote_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        self.ray_remote_args = ray_remote_args
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not api.is_initialized():
                api.init()
            cpus = int(api.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)  # -1: every CPU of the session, -2: all but one, ...
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Optional[str] = None,
                  require: Optional[str] = None, ray_remote_args: Optional[Dict[str, Any]] = None,
                  **pool_kwargs: Any) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:  # as joblib's process backends (and Ray's): one job runs in this process
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        # joblib passes its process pools' memmapping settings with every Parallel call; they do
        # not apply here (arguments travel through the object store, not memmapped temp files).
        unknown = set(pool_kwargs) - _JOBLIB_POOL_SETTINGS
        if unknown:
            raise TypeError(f"the ray backend does not take {sorted(unknown)} (only ray_remote_args)")
        args = ray_remote_args if ray_remote_args is not None else self.ray_remote_args
        self._pool = Pool(processes=n_jobs, ray_remote_args=args)
        self.parallel = parallel
        return n_jobs

    def terminate(self) -> None:
        super().terminate()
        self.reset_batch_stats()
