"""Ray's `ray.util.multiprocessing`: multiprocessing.Pool's API on a minicluster session
(pool.py); TimeoutError and JoinableQueue are the standard library's, as Ray re-exports them."""

from multiprocessing import JoinableQueue, TimeoutError

from minicluster.util.multiprocessing.pool import AsyncResult, Pool

__all__ = ["AsyncResult", "JoinableQueue", "Pool", "TimeoutError"]
