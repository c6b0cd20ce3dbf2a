"""Independent runs or stacks in worker processes (`--jobs N`).

Each worker is a fresh single-thread process (``spawn``, so CUDA works in it too). Tiny
convolutions gain little from intra-op threads, and two processes with two threads
each on two cores spin-wait for each other's descheduled threads (PROTOCOL 3.7's
thread note and the README's thread table). Every task writes its own folder with
atomic writes, so results do not depend on ``jobs`` or on the order tasks finish in,
and a killed pool resumes like a killed single run.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence

from .errors import L2LError

#: Threads per worker process; measured in the README's thread table.
WORKER_THREADS = 1


def check_jobs(jobs: int) -> int:
    if jobs < 1:
        raise L2LError(f"--jobs must be at least 1, got {jobs}")
    return jobs


def _init_worker() -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)
    torch.set_num_threads(WORKER_THREADS)


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*tasks[index]))`` as tasks finish: inline for ``jobs == 1``,
    else in ``jobs`` worker processes. ``fn`` must be a module-level function."""
    if check_jobs(jobs) == 1 or len(tasks) <= 1:
        for i, args in enumerate(tasks):
            yield i, fn(*args)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
