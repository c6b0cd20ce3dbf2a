"""Where independent runs or stacks execute: in ``--jobs`` worker processes on this
machine (``local``), or one SLURM job each through submitit (``slurm``), as DomainBed's
launcher registry does.

A launcher takes a module-level function and its argument tuples and yields
``(index, result)`` as the tasks finish. Every task writes only its own run folder,
under that folder's lock (:func:`~learning_to_look.io.folder_lock`), and resumes from
its checkpoint: so the records land in the one shared runs folder whichever node trained
them, and rerunning the same command after a job was killed or timed out trains only
what is missing. The submitting command waits for its jobs and prints their results.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..errors import L2LError
from ..registry import Registry
from .parallel import run_tasks, workers

#: Folder under the runs folder where submitit keeps each job's script, pickles and logs.
JOB_LOGS = ".submitit"
#: How often the submitting process asks the scheduler which jobs have finished (seconds),
#: and how often it looks at jobs running on this machine.
POLL_SECONDS = {"slurm": 2.0, "local": 0.2, "debug": 0.0}
#: The rule submitit draws around the traceback of a job that raised.
TRACE_RULE = "-" * 22
#: submitit executors: the real scheduler, or this machine (subprocesses, or in-process
#: for ``debug``) to run the very same job pickles in tests and dry runs.
CLUSTERS = ("slurm", "local", "debug")


def _option(default: Any, help: str, low: int | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A launcher option: default, CLI help and allowed range, declared once."""
    return field(default=default, metadata={"help": help, "low": low, "choices": choices})


@dataclass(frozen=True)
class SlurmOptions:
    """What each SLURM job asks for; one run (or stack) is one job, all in one array."""

    partition: str | None = _option(None, "SLURM partition (unset: the cluster's default).")
    time: int = _option(240, "Wall-clock limit of each job in minutes; a job killed there resumes from its last "
                             "epoch when the command is rerun.", low=1)
    gpus: int = _option(0, "GPUs per job.", low=0)
    cpus: int = _option(1, "CPU cores per job, and torch threads in it.", low=1)
    mem: int = _option(8, "Memory per job in GB.", low=1)
    parallel: int = _option(64, "Most jobs of the array running at once (SLURM array parallelism).", low=1)
    cluster: str = _option("slurm", "submitit executor: slurm, or local / debug to run the same jobs on this "
                                    "machine (tests, a dry run).", choices=CLUSTERS)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, low, choices = getattr(self, f.name), f.metadata["low"], f.metadata["choices"]
            if low is not None and value < low:
                raise L2LError(f"--slurm-{f.name} must be at least {low}, got {value}; pass e.g. "
                               f"--slurm-{f.name} {f.default}")
            if choices is not None and value not in choices:
                raise L2LError(f"unknown --slurm-{f.name} {value!r}; choose one of: {', '.join(choices)}")

    @classmethod
    def help(cls, name: str) -> str:
        f = {f.name: f for f in fields(cls)}[name]
        return f.metadata["help"] + ("" if f.default is None else f"  [default: {f.default}]")


class Launcher:
    """Runs tasks and yields ``(index, result)`` as they finish."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: Whether tasks run on other machines: no progress bars, no check of this machine's memory.
    remote: ClassVar[bool] = False

    def __init__(self, slurm: SlurmOptions | None = None) -> None:
        self.slurm = slurm or SlurmOptions()

    def check(self) -> None:
        """Fail in one line, before any work, when this launcher cannot run here."""

    def in_process(self, jobs: int | None, n_tasks: int) -> bool:
        """Whether ``n_tasks`` tasks run here one after another (then they show progress bars)."""
        return workers(jobs, n_tasks) == 1

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int | None, *, runs_dir: Path,
            unit: str | None = None, sizes: Sequence[int] | None = None) -> Iterator[tuple[int, Any]]:
        """``fn(*task)`` for every task; ``runs_dir`` is where the tasks write (job logs go
        under it), ``unit``/``sizes`` name and weigh one progress bar over local workers."""
        raise NotImplementedError


LAUNCHERS: Registry[type[Launcher]] = Registry("launcher")


@LAUNCHERS.register
class Local(Launcher):
    name = "local"
    summary = "this machine, --jobs worker processes"

    def map(self, fn, tasks, jobs, *, runs_dir, unit=None, sizes=None):
        yield from run_tasks(fn, tasks, jobs, unit=unit, sizes=sizes)


@LAUNCHERS.register
class Slurm(Launcher):
    name = "slurm"
    summary = "one SLURM job per run or stack, through submitit"
    remote = True

    def check(self) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise L2LError("--launcher slurm needs submitit, which is not installed; pip install "
                           "'learning-to-look[slurm]' or use --launcher local") from None
        if self.slurm.cluster == "slurm" and shutil.which("sbatch") is None:
            raise L2LError("--launcher slurm needs SLURM, but sbatch is not on this machine's PATH; run on a SLURM "
                           "login node or use --launcher local")

    def in_process(self, jobs: int | None, n_tasks: int) -> bool:
        return False

    def map(self, fn, tasks, jobs, *, runs_dir, unit=None, sizes=None):
        self.check()
        if not tasks:
            return
        n = len(tasks)
        submitted = self._executor(Path(runs_dir) / JOB_LOGS).map_array(_job, [fn] * n, [self.slurm.cpus] * n,
                                                                        list(tasks))
        pending = dict(enumerate(submitted))
        while pending:
            done = [i for i, job in pending.items() if job.done()]
            for i in done:
                yield i, _result(pending.pop(i))
            if not done:
                time.sleep(POLL_SECONDS[self.slurm.cluster])

    def _executor(self, logs: Path) -> Any:
        import submitit

        o = self.slurm
        executor = submitit.AutoExecutor(folder=logs, cluster=o.cluster)
        executor.update_parameters(timeout_min=o.time, gpus_per_node=o.gpus, cpus_per_task=o.cpus, mem_gb=o.mem,
                                   tasks_per_node=1, nodes=1, name="learning-to-look",
                                   slurm_array_parallelism=o.parallel,
                                   **({"slurm_partition": o.partition} if o.partition else {}))
        return executor


def _job(fn: Callable[..., Any], threads: int, args: tuple) -> Any:
    """One task in its job: the job's cores as torch threads, then ``fn(*args)``."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return fn(*args)


def _result(job: Any) -> Any:
    """A finished job's return value; a job that failed is one line naming its log."""
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001  (submitit raises its own types for a failed or killed job)
        parts = str(err).split(TRACE_RULE)  # a traceback sits between two rules; a killed job's message has none
        text = parts[1] if len(parts) > 2 else parts[0]
        last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), type(err).__name__)
        raise L2LError(f"job {job.job_id} failed: {last.strip()}; see {job.paths.stderr}, fix it and rerun the "
                       "command (finished runs are kept)") from None


def make_launcher(name: str, slurm: SlurmOptions | None = None) -> Launcher:
    """The launcher called ``name``, checked to be able to run here."""
    chosen = LAUNCHERS.get(name)(slurm)
    chosen.check()
    return chosen


def launcher_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in LAUNCHERS.items())
