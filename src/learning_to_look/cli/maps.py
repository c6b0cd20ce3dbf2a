"""`l2l maps`: generate, check and show the maps the CNN is taught to look at."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import typer

from ..data import DATASETS, SPLITS, Split, load_dataset
from ..errors import L2LError
from ..data.preview import check_out_file
from ..maps import (DEFAULT_CLIP, MAP_SOURCES, VARIANTS, ClipMaps, MapGenerator, PrecomputedMaps, PromptSpec,
                    WeCLIPMaps, cache_meta, cached_maps, folder_maps, format_report, list_cached, load_image_folder,
                    map_report)
from ..maps.cache import DEFAULT_CACHE_DIR, cache_folder, read_cached
from ..maps.clip import REFINEMENTS
from ..maps.precomputed import KEYS, PNG_MODES
from ..maps.show import overlay_grid
from ..maps.weclip import CPU_SCHEDULE, GPU_SCHEDULE
from .app import DATA_DIR, app
from .data import one_line

maps_app = typer.Typer(help="Generate, check and show attention maps.\n\n"
                            "Example: l2l maps generate --dataset decoymnist --backend clip "
                            "--prompt \"a handwritten digit\"",
                       no_args_is_help=True)
app.add_typer(maps_app, name="maps")

PROMPTS = PromptSpec()

BACKEND = typer.Option(ClipMaps.name, "--backend", help=MAP_SOURCES.help())
DATASET = typer.Option("decoymnist", "--dataset", help=DATASETS.help())
SPLIT = typer.Option("train", "--split", help=" | ".join(SPLITS))
LIMIT = typer.Option(None, "--limit", min=1, help="Only the first N images of the split (smoke tests), N >= 1.")
VLM = typer.Option(None, "--vlm", envvar="L2L_VLM",
                   help=f"CLIP hub id or save_pretrained folder [default: {DEFAULT_CLIP}].")
DINO = typer.Option(None, "--dino", help="weclip: DINOv2 hub id or folder for a second feature stream.")
VARIANT = typer.Option(None, "--variant",
                       help=f"clip/weclip last block: {' | '.join(VARIANTS)} [default: {ClipMaps.variant}].")
PROMPT = typer.Option(None, "--prompt",
                      help=f"Positive prompt (repeatable) [default: {', '.join(PROMPTS.positive)}].")
NEGATIVES = typer.Option(None, "--negatives",
                         help=f"Comma-separated background prompts [default: {','.join(PROMPTS.negative)}].")
TEMPLATES = typer.Option(None, "--templates",
                         help=f"';'-separated templates with {{}} [default: {';'.join(PROMPTS.templates)}].")
TEMPERATURE = typer.Option(None, "--temperature",
                           help=f"Softmax temperature across prompts [default: {PROMPTS.temperature:g}].")
INPUT_SIZE = typer.Option(None, "--input-size",
                          help=f"Model input size in pixels, a multiple of the patch [default: {ClipMaps.input_size}].")
FLIP = typer.Option(None, "--flip/--no-flip", help="Average with the horizontally flipped image.")
REFINE = typer.Option(None, "--refine", help=f"{' | '.join(REFINEMENTS)} [default: {ClipMaps.refine} for clip, "
                                             f"{WeCLIPMaps.refine} for weclip].")
GUARD = typer.Option(None, "--guard-z", help="Artefact guard threshold in robust z units; 0 disables "
                                             f"[default: {ClipMaps.guard_z:g}].")
ITERATIONS = typer.Option(None, "--iterations", help="weclip decoder iterations "
                                                     f"[default: {GPU_SCHEDULE[0]} on GPU, {CPU_SCHEDULE[0]} on CPU].")
TRAIN_IMAGES = typer.Option(None, "--train-images",
                            help="weclip: train the decoder on N images "
                                 f"[default: {GPU_SCHEDULE[1] or 'all'} on GPU, {CPU_SCHEDULE[1]} on CPU].")
HARD = typer.Option(None, "--hard/--soft", help="weclip: reference-style binary mask instead of soft maps.")
PATH = typer.Option(None, "--path", help="precomputed: folder of PNGs or an .npy/.npz file.")
KEY = typer.Option(None, "--key", help=f"precomputed: {' | '.join(KEYS)} [default: {PrecomputedMaps.key}].")
PNG_MODE = typer.Option(None, "--png-mode", help=f"precomputed PNGs: {' | '.join(PNG_MODES)} (nonblack reads WeCLIP+ "
                                                 f"prediction_cmap) [default: {PrecomputedMaps.png_mode}].")
BATCH = typer.Option(None, "--batch-size", help="Images per forward pass.")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N [default: auto, cuda when available].")
CACHE_DIR = typer.Option(None, "--cache-dir", envvar="L2L_MAPS_DIR",
                         help=f"Map cache folder [default: ./{DEFAULT_CACHE_DIR}].")
IMAGES = typer.Option(None, "--images", help="A folder of ordinary images instead of a data set.")

#: The map-source options of every command that makes maps (`l2l maps generate/check/show`,
#: `l2l train`): name -> (type, option). A new generator option is one entry here.
MAP_FLAGS: dict[str, tuple[Any, Any]] = {
    "vlm": (Optional[str], VLM), "dino": (Optional[str], DINO), "variant": (Optional[str], VARIANT),
    "prompt": (Optional[List[str]], PROMPT), "negatives": (Optional[str], NEGATIVES),
    "templates": (Optional[str], TEMPLATES), "temperature": (Optional[float], TEMPERATURE),
    "input_size": (Optional[int], INPUT_SIZE), "flip": (Optional[bool], FLIP), "refine": (Optional[str], REFINE),
    "guard_z": (Optional[float], GUARD), "iterations": (Optional[int], ITERATIONS),
    "train_images": (Optional[int], TRAIN_IMAGES), "hard": (Optional[bool], HARD), "path": (Optional[Path], PATH),
    "key": (Optional[str], KEY), "png_mode": (Optional[str], PNG_MODE),
}
PROMPT_FLAGS = ("prompt", "negatives", "templates", "temperature")


@dataclasses.dataclass(frozen=True)
class MapFlags:
    """The map flags a command was given (None-valued ones left out), and which of them
    came from the environment (``L2L_VLM``): those apply only where the source takes them."""

    given: dict[str, Any]
    from_env: frozenset[str]


def with_map_flags(command: Callable) -> Callable:
    """Give ``command`` every option of :data:`MAP_FLAGS`; it receives them as one
    :class:`MapFlags` argument called ``map_flags``."""
    sig = inspect.signature(command, eval_str=True)
    keep = [p for p in sig.parameters.values() if p.name != "map_flags"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in MAP_FLAGS.items()]
    context = inspect.Parameter("map_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(command)
    def run(*args: Any, map_context: typer.Context, **kwargs: Any) -> Any:
        given = {k: v for k in MAP_FLAGS if (v := kwargs.pop(k)) is not None}
        env = frozenset(k for k in given if map_context.get_parameter_source(k).name == "ENVIRONMENT")
        return command(*args, map_flags=MapFlags(given, env), **kwargs)

    params = [*keep, *extra, context]
    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def _prompt_spec(prompt: Optional[List[str]], negatives: Optional[str], templates: Optional[str],
                 temperature: Optional[float]) -> Optional[PromptSpec]:
    """The prompts the flags ask for, defaults filling what they leave out; None when no prompt flag is given."""
    if prompt is None and negatives is None and templates is None and temperature is None:
        return None
    return PromptSpec(
        positive=tuple(prompt) if prompt else PROMPTS.positive,
        negative=tuple(s.strip() for s in negatives.split(",") if s.strip()) if negatives is not None
        else PROMPTS.negative,
        templates=tuple(s.strip() for s in templates.split(";") if s.strip()) if templates is not None
        else PROMPTS.templates,
        temperature=temperature if temperature is not None else PROMPTS.temperature)


def generator_options(backend: str, flags: MapFlags) -> dict[str, Any]:
    """The generator fields the flags set for map source ``backend``. A flag the source does
    not take is an error, unless it came from the environment (then it is left out)."""
    cls = MAP_SOURCES.get(backend)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    given = {k: v for k, v in flags.given.items()
             if k not in flags.from_env or k in fields or (k in PROMPT_FLAGS and "prompts" in fields)}
    prompts = _prompt_spec(*(given.pop(k, None) for k in PROMPT_FLAGS))
    options = {k: v for k, v in {**given, "prompts": prompts}.items() if v is not None}
    unused = sorted(set(options) - fields)
    if unused:
        flag_names = ", ".join("--" + ("prompt" if u == "prompts" else u.replace("_", "-")) for u in unused)
        raise L2LError(f"{flag_names} does not apply to map source {backend}; drop it or pick a source that takes it")
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def build_generator(backend: str, flags: MapFlags, **own: Any) -> MapGenerator:
    """A generator from the map flags and the command's own generator options (``batch_size``, ``device``)."""
    options = generator_options(backend, MapFlags({**flags.given, **{k: v for k, v in own.items() if v is not None}},
                                                  flags.from_env))
    generator = MAP_SOURCES.get(backend)(**options)
    generator.check_ready()  # a missing model fails now, before any data is loaded
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
@with_map_flags
def generate(backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
             map_flags: MapFlags = None, batch_size: Optional[int] = BATCH,
             device: Optional[str] = DEVICE, cache_dir: Optional[Path] = CACHE_DIR,
             data_dir: Optional[Path] = DATA_DIR, images: Optional[Path] = IMAGES,
             out: Optional[Path] = typer.Option(None, "--out",
                                                help="With --images: folder for one grey PNG map per image."),
             quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Generate maps once (resumable, cached) and print their diagnostics.

    Example: l2l maps generate --dataset decoymnist --backend clip --vlm openai/clip-vit-base-patch16
    --prompt "a handwritten digit" --negatives "background,black,dark"
    """
    if out is not None and images is None:
        raise L2LError("--out applies only with --images (one PNG map per image); drop it, or pass --images DIR")
    if images is not None and out is None:
        raise L2LError("--images needs --out DIR, where its maps are written as one grey PNG per image (same "
                       "names and sub-folders); pass e.g. --out maps")
    gen = build_generator(backend, map_flags, batch_size=batch_size, device=device)
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
@with_map_flags
def check(backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
          map_flags: MapFlags = None, batch_size: Optional[int] = BATCH,
          device: Optional[str] = DEVICE, cache_dir: Optional[Path] = CACHE_DIR,
          data_dir: Optional[Path] = DATA_DIR) -> None:
    """Diagnostics of cached maps: AUROC and pointing game against the digit, mass on the decoy, artefact patches.

    Example: l2l maps check --dataset decoymnist --backend clip --vlm openai/clip-vit-base-patch16
    """
    gen = build_generator(backend, map_flags, batch_size=batch_size, device=device)
    s = _split(dataset, split, limit, data_dir, build=False)
    maps, stats = _read_cached(gen, dataset, s, cache_dir)
    _print_report(maps, s, stats, gen.describe())


@maps_app.command("show")
@one_line
@with_map_flags
def show(out: Path = typer.Option(..., "--out", help="PNG file to write."),
         n: int = typer.Option(16, "--n", min=1, help="Number of images in the grid (>= 1)."),
         backend: str = BACKEND, dataset: str = DATASET, split: str = SPLIT, limit: Optional[int] = LIMIT,
         map_flags: MapFlags = None, batch_size: Optional[int] = BATCH,
         device: Optional[str] = DEVICE, cache_dir: Optional[Path] = CACHE_DIR,
         data_dir: Optional[Path] = DATA_DIR, images: Optional[Path] = IMAGES) -> None:
    """Write a grid of images with their maps overlaid (data sets: from the cache).

    Example: l2l maps show --dataset decoymnist --backend oracle --out maps.png
    """
    check_out_file(out)
    gen = build_generator(backend, map_flags, batch_size=batch_size, device=device)
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
