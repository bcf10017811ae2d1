"""What a task sees of its worker process: its runtime_env, OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES.

Runs in a worker, on its main thread, as each task begins (worker.py, Worker._begin): Ray sets
these per task or per actor, and a worker here runs many tasks in turn, so each is set as the
task starts and only where it changes.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Tuple

from minicluster._private.common import config, runtime_envs
from minicluster.exceptions import RuntimeEnvSetupError

_OMP_KEY = os.fsencode("OMP_NUM_THREADS")  #: its key in os.environ._data (POSIX: bytes)


@functools.lru_cache(maxsize=64)
def _omp_value(num_cpus: float) -> bytes:
    """OMP_NUM_THREADS for a task of `num_cpus` CPUs, as os.environ stores it."""
    return os.fsencode(str(max(int(num_cpus), 1)))


class TaskEnvironment:
    def __init__(self, client: Any) -> None:
        self.client = client  #: the worker's WorkerClient
        self.omp_ours = False  #: OMP_NUM_THREADS was set by us, not inherited from the user's environment
        #: Ray's RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO: tasks without GPUs get an empty CUDA_VISIBLE_DEVICES
        self.empty_devices_on_zero = os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "").lower() in ("1", "true")

    def enter_runtime_env(self, encoded: str) -> Optional[Exception]:
        """The first task of this worker's life decides its runtime_env (the head sends it only
        tasks of that one): set before the function's module is imported. Returns the error
        that fails the task if it cannot be set up."""
        env = runtime_envs.decode(encoded)
        try:
            runtime_envs.apply(env, self.client.session_dir)
        except (OSError, ValueError) as exc:
            return RuntimeEnvSetupError(f"{type(exc).__name__}: {exc}")  # (Ray's error for a failed setup)
        self.client.runtime_env = encoded
        # In Ray the variables are there when the worker starts: what it reads once at its
        # start (RAY_TASK_MAX_RETRIES, for the tasks it submits) is read again now.
        self.client.default_max_retries = config.task_max_retries()
        if "OMP_NUM_THREADS" in (env.get("env_vars") or {}):
            self.omp_ours = False  # the user's own setting: tasks' CPU counts leave it alone (Ray)
        return None

    def set_omp_threads(self, num_cpus: float) -> None:
        """As Ray does: OMP_NUM_THREADS is the task's whole CPUs (at least 1), unless the user's
        environment sets it. Ray unsets it after each task and sets it again at the next; here
        it stays between tasks (nothing runs then) and is set only when the value changes."""
        environ = os.environ
        # Read as bytes from the mapping's own dict: os.environ.get encodes the key and decodes
        # the value in Python, some 3 calls per task for a value that nearly never changes.
        current = environ._data.get(_OMP_KEY)  # type: ignore[attr-defined]
        if current is not None and not self.omp_ours:
            return  # the user's own setting, inherited from the driver's environment
        wanted = _omp_value(num_cpus)
        if current != wanted:  # (also when the last task changed or removed it)
            environ["OMP_NUM_THREADS"] = wanted.decode()
            self.omp_ours = True

    def set_gpus(self, gpu_ids: Optional[Tuple[str, ...]]) -> None:
        """As Ray: CUDA_VISIBLE_DEVICES names the GPUs the task or actor was given. A task without
        GPUs leaves it as it is (a worker runs GPU tasks or CPU tasks, never both), or empties it
        with RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 (Ray's switch for its older behaviour)."""
        self.client.gpu_ids = gpu_ids or ()
        if gpu_ids is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        elif self.empty_devices_on_zero:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
