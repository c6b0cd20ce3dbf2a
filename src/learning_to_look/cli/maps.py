"""`l2l maps`: generate, check and show the maps the CNN is taught to look at."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import typer

from ..data import DATASETS, SPLITS, Split, load_dataset
from ..errors import L2LError
from ..data.preview import check_figure_file
from ..device import cpu_threads
from ..maps import (MAP_SOURCES, ClipMaps, MapGenerator, cache_meta, cached_maps, folder_maps, format_report,
                    list_cached, load_image_folder, map_report)
from ..maps.base import Declared, declared
from ..maps.options import build_map_source
from ..maps.cache import DEFAULT_CACHE_DIR, cache_folder, read_cached
from ..maps.show import overlay_grid
from .app import app
from .common import DATA_DIR, one_line

maps_app = typer.Typer(help="Generate, check and show attention maps.\n\n"
                            "Example: l2l maps generate --dataset decoymnist --backend clip "
                            "--prompt \"handwritten digit\"",
                       no_args_is_help=True)
app.add_typer(maps_app, name="maps")

BACKEND = typer.Option(ClipMaps.name, "--backend", help=MAP_SOURCES.help())
DATASET = typer.Option("decoymnist", "--dataset", help=DATASETS.help())
SPLIT = typer.Option("train", "--split", help=" | ".join(SPLITS))
LIMIT = typer.Option(None, "--limit", min=1, help="Only the first N images of the split (smoke tests), N >= 1.")
CACHE_DIR = typer.Option(None, "--cache-dir", envvar="L2L_MAPS_DIR",
                         help=f"Map cache folder [default: ./{DEFAULT_CACHE_DIR}].")
IMAGES = typer.Option(None, "--images", help="A folder of ordinary images instead of a data set.")


def _shown(value: Any, d: Declared) -> str:
    if isinstance(value, tuple):
        return (d.split or ", ").join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def map_flags() -> dict[str, dict[str, Declared]]:
    """Every map-source option a command line can set, by parameter name (the flag without
    dashes), with each source's declaration of it: derived from the sources' fields."""
    table: dict[str, dict[str, Declared]] = {}
    for name, cls in MAP_SOURCES.items():
        for d in declared(cls):
            if d.is_flag:
                table.setdefault(d.flag[2:].replace("-", "_"), {})[name] = d
    return table


def _typer_option(decls: dict[str, Declared]) -> tuple[Any, Any]:
    """(annotation, typer option) of one map flag; its help gives each source's default."""
    d = next(iter(decls.values()))
    shown = {source: _shown(x.default, x) for source, x in decls.items() if x.default not in (None, "")}
    if len(set(shown.values())) == 1:
        default = f"  [default: {next(iter(shown.values()))}]"
    else:
        by_value: dict[str, list[str]] = {}
        for source, value in shown.items():
            by_value.setdefault(value, []).append(source)
        listed = "; ".join(f"{value} ({', '.join(sources)})" for value, sources in by_value.items())
        default = f"  [default: {listed}]" if shown else ""
    kind = List[d.cli] if d.multiple else d.cli  # type: ignore[valid-type]
    names = [f"{d.flag}/--no-{d.flag[2:]}"] if d.cli is bool else [d.flag]
    return Optional[kind], typer.Option(None, *names, envvar=d.env, help=d.help + default)


@dataclasses.dataclass(frozen=True)
class MapFlags:
    """The map flags a command was given (None-valued ones left out), and which of them
    came from the environment (``L2L_VLM``): those apply only where the source takes them."""

    given: dict[str, Any]
    from_env: frozenset[str]


def with_map_flags(exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Give a command every map flag (but those in ``exclude``, e.g. names the command
    uses for itself); it receives them as one :class:`MapFlags` argument ``map_flags``."""
    def wrap(command: Callable) -> Callable:
        table = {k: v for k, v in map_flags().items() if k not in exclude}
        sig = inspect.signature(command, eval_str=True)
        keep = [p for p in sig.parameters.values() if p.name != "map_flags"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                 for name, (kind, option) in ((k, _typer_option(v)) for k, v in table.items())]
        context = inspect.Parameter("map_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(command)
        def run(*args: Any, map_context: typer.Context, **kwargs: Any) -> Any:
            given = {k: v for k in table if (v := kwargs.pop(k)) is not None}
            env = frozenset(k for k in given if map_context.get_parameter_source(k).name == "ENVIRONMENT")
            return command(*args, map_flags=MapFlags(given, env), **kwargs)

        params = [*keep, *extra, context]
        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run
    return wrap


def _parsed(d: Declared, value: Any) -> Any:
    """A flag's value as the source's option takes it: split texts, repeated values, paths as text."""
    if d.split is not None:
        return tuple(part.strip() for part in str(value).split(d.split) if part.strip())
    if d.multiple:
        return tuple(value)
    return str(value) if isinstance(value, Path) else value


def generator_options(backend: str, flags: MapFlags) -> dict[str, Any]:
    """The options the flags set for map source ``backend``, as its config holds them (nested
    options, the prompts, as a partial mapping the source completes with its own defaults).
    A flag the source does not take is an error, unless it came from the environment."""
    decls = {d.flag[2:].replace("-", "_"): d for d in declared(MAP_SOURCES.get(backend)) if d.is_flag}
    unused = sorted(k for k in flags.given if k not in decls and k not in flags.from_env)
    if unused:
        names = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise L2LError(f"{names} does not apply to map source {backend}; drop it or pick a source that takes it")
    options: dict[str, Any] = {}
    for param, value in flags.given.items():
        if (d := decls.get(param)) is not None:
            target = options.setdefault(d.parent, {}) if d.parent else options
            target[d.field] = _parsed(d, value)
    return options


def build_generator(backend: str, flags: MapFlags) -> MapGenerator:
    """A generator from the map flags; a missing model fails here, before any data is loaded."""
    generator = build_map_source(backend, generator_options(backend, flags))
    generator.check_ready()
    return generator


def _split(dataset: str, split: str, limit: Optional[int], data_dir: Optional[Path], build: bool) -> Split:
    """The split (its first ``limit`` images); ``build=False`` for the read-only commands."""
    if split not in SPLITS:
        raise L2LError(f"--split must be {' or '.join(SPLITS)}, got {split!r}")
    ds = load_dataset(dataset, data_dir, build=build)
    s = ds.train if split == "train" else ds.test
    return s.subset(np.arange(min(limit, len(s)))) if limit else s


def _print_report(maps: np.ndarray, split: Split, stats: Optional[dict], describe: dict) -> None:
    label = describe["kind"]
    if not describe.get("real_vlm", True):
        label = f"{label}, NOT a real VLM: {describe.get('weights')}"
    typer.echo(f"maps {describe['name']} ({label}) fingerprint {describe['fingerprint']}")
    for line in format_report(map_report(maps, split, stats)):
        typer.echo(f"  {line}")


def _read_cached(gen: MapGenerator, dataset: str, split: Split,
                 cache_dir: Optional[Path]) -> tuple[np.ndarray, Optional[dict]]:
    """Maps from the cache only (non-cacheable sources are computed): checking must
    never trigger an hour of generation by accident."""
    if not gen.cacheable:
        return gen.generate(split), None
    maps, meta = read_cached(gen, dataset, split, cache_dir)
    return maps, meta.get("stats")


@maps_app.command("generate")
@one_line
@with_map_flags()
def generate(backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
             map_flags: MapFlags = None, cache_dir: Optional[Path] = CACHE_DIR,
             data_dir: Optional[Path] = DATA_DIR, images: Optional[Path] = IMAGES,
             out: Optional[Path] = typer.Option(None, "--out",
                                                help="With --images: folder for one grey PNG map per image."),
             quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Generate maps once (resumable, cached) and print their diagnostics.

    Example: l2l maps generate --dataset decoymnist --backend clip --vlm openai/clip-vit-base-patch16
    --prompt "handwritten digit" --negatives "background,black,dark"
    """
    if out is not None and images is None:
        raise L2LError("--out applies only with --images (one PNG map per image); drop it, or pass --images DIR")
    if images is not None and out is None:
        raise L2LError("--images needs --out DIR, where its maps are written as one grey PNG per image (same "
                       "names and sub-folders); pass e.g. --out maps")
    torch.set_num_threads(cpu_threads())  # generation is this process's one job
    gen = build_generator(backend, map_flags)
    if images is not None:
        result = folder_maps(gen, images, out, progress=not quiet)
        typer.echo(f"{len(result)} maps from {gen.name} ({gen.kind}) for {images}" + (f" -> {out}" if out else ""))
        return
    s = _split(dataset, split, limit, data_dir, build=True)
    maps = cached_maps(gen, dataset, s, cache_dir=cache_dir, progress=not quiet)
    meta = cache_meta(gen, dataset, s, cache_dir) if gen.cacheable else None
    where = cache_folder(gen, dataset, s, cache_dir) if gen.cacheable else "not cached (cheap source)"
    timing = f"  (device {meta['device']}, {meta['seconds']:.1f}s)" if meta else ""
    typer.echo(f"{dataset}/{s.name}: {len(maps)} maps -> {where}{timing}")
    _print_report(maps, s, (meta or {}).get("stats"), gen.describe())


@maps_app.command("check")
@one_line
@with_map_flags()
def check(backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
          map_flags: MapFlags = None, cache_dir: Optional[Path] = CACHE_DIR,
          data_dir: Optional[Path] = DATA_DIR) -> None:
    """Diagnostics of cached maps: AUROC and pointing game against the digit, mass on the decoy, artefact patches.

    Example: l2l maps check --dataset decoymnist --backend clip --vlm openai/clip-vit-base-patch16
    """
    gen = build_generator(backend, map_flags)
    s = _split(dataset, split, limit, data_dir, build=False)
    maps, stats = _read_cached(gen, dataset, s, cache_dir)
    _print_report(maps, s, stats, gen.describe())


@maps_app.command("show")
@one_line
@with_map_flags()
def show(out: Path = typer.Option(..., "--out", help="Figure to write: .png, .pdf or .svg."),
         n: int = typer.Option(16, "--n", min=1, help="Number of images in the grid (>= 1)."),
         backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
         map_flags: MapFlags = None, cache_dir: Optional[Path] = CACHE_DIR,
         data_dir: Optional[Path] = DATA_DIR, images: Optional[Path] = IMAGES) -> None:
    """Write a grid of images with their maps overlaid (data sets: from the cache).

    Example: l2l maps show --dataset decoymnist --backend oracle --out maps.png
    """
    check_figure_file(out)
    gen = build_generator(backend, map_flags)
    d = gen.describe()
    real = "" if d.get("real_vlm", True) else ", random-init test model: not a VLM map"
    title = f"{d['name']} ({d['kind']}{real}) {d['fingerprint']}"
    if images is not None:
        result = folder_maps(gen, images)
        pics = {name: img for s in load_image_folder(images) for name, img in zip(s.names, s.images)}
        names = list(result)[:n]
        typer.echo(f"wrote {overlay_grid([pics[k] for k in names], [result[k] for k in names], out, title, names)}")
        return
    s = _split(dataset, split, limit, data_dir, build=False)
    maps, _ = _read_cached(gen, dataset, s, cache_dir)
    k = min(n, len(maps))
    labels = [f"y={y}" for y in s.labels[:k]]
    typer.echo(f"wrote {overlay_grid(list(s.images[:k]), list(maps[:k]), out, f'{dataset}/{s.name}: {title}', labels)}")


@maps_app.command("list")
@one_line
def list_cmd(cache_dir: Optional[Path] = CACHE_DIR) -> None:
    """Cached map sets, usable as `l2l train --maps FOLDER-NAME`.

    Example: l2l maps list --cache-dir ./maps_cache
    """
    entries = list_cached(cache_dir)
    if not entries:
        typer.echo("no cached maps")
    for folder, meta, problem in entries:
        if meta is None:
            typer.echo(f"{folder}: CORRUPT ({problem})")
            continue
        d = meta.get("describe", {})
        state = "complete" if meta.get("complete") else f"{len(meta.get('chunks', {}))} chunks done"
        state = f"CORRUPT ({problem})" if problem else state
        real = "" if d.get("real_vlm", True) else "  [random-init test model]"
        typer.echo(f"{meta['dataset']}/{meta['split']}/{folder.name}: {d.get('kind')} {state}{real}")
    bad = [e for e in entries if e.problem]
    if bad:
        raise L2LError(f"{len(bad)} of {len(entries)} cached map sets are corrupt, the first in {bad[0].folder} "
                       f"({bad[0].problem}); `l2l maps generate` with its options regenerates it, or delete the "
                       "folder")
