"""Independent runs or stacks in worker processes (`--jobs N`).

Every run trains with one thread, in a worker process (``spawn``, so CUDA works there
too) or, with ``jobs == 1``, in this one. Measured on 2 cores (README, "Threads"):
tiny convolutions gain little from a second thread, a 2-thread run beside any other
busy process spins for its descheduled partner (2.3x slower for the single-run
engine), and two 1-thread stacks finish more model-epochs than one 2-thread stack.
One thread count everywhere also keeps the numbers independent of ``jobs``: every
task writes its own folder with atomic writes, whatever the order tasks finish in,
and a killed pool resumes like a killed single run.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from ..errors import L2LError

#: Threads per worker process; measured in the README's thread table.
WORKER_THREADS = 1
#: How often a worker checks that its parent is alive (seconds).
PARENT_POLL_SECONDS = 1.0
#: Environment variable for the default number of workers.
JOBS_ENV = "L2L_JOBS"


def default_jobs() -> int:
    """``$L2L_JOBS`` when set (a test suite or a shared machine pins it), else one worker per core."""
    text = os.environ.get(JOBS_ENV, "").strip()
    if not text:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise L2LError(f"{JOBS_ENV}={text!r} is not a whole number of at least 1; set it like {JOBS_ENV}=2 or unset it")
    return int(text)


def workers(jobs: int | None, n_tasks: int) -> int:
    """How many processes ``n_tasks`` tasks get: ``jobs`` (default: one per core), at
    most one per task. One means the tasks run here, one after another (with progress bars)."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise L2LError(f"--jobs must be at least 1, got {jobs}")
    return max(1, min(jobs, n_tasks))


def _exit_with_parent(parent: int) -> None:
    """Stop this worker once its parent is gone (killed with SIGKILL, say), instead of
    finishing its run unseen while it holds the run's lock; a rerun resumes the run
    from its last whole epoch."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _init_worker() -> None:
    """One thread per run (module docstring), and no life beyond the parent's."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)
    torch.set_num_threads(WORKER_THREADS)
    if multiprocessing.parent_process() is not None:  # a worker process, not this one running tasks itself
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int | None, *, unit: str | None = None,
              sizes: Sequence[int] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*tasks[index]))`` as tasks finish, in :func:`workers` processes
    (here when that is one). ``fn`` must be a module-level function. With ``unit``, the
    workers' progress is one bar counting ``sizes[i]`` (default 1) per finished task."""
    n = workers(jobs, len(tasks))
    if n == 1:
        _init_worker()
        for i, args in enumerate(tasks):
            yield i, fn(*args)
        return
    sizes = list(sizes or [1] * len(tasks))
    bar = tqdm(total=sum(sizes), unit=unit or "task", desc=f"{n} workers", disable=unit is None, dynamic_ncols=True)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker) as pool, bar:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                bar.update(sizes[futures[future]])
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
