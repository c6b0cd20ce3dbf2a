"""`l2l data`: build, inspect and preview the benchmark data sets."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from ..data import DATASETS, build_dataset, dataset_path, load_dataset
from ..data.formats import FORMATS
from ..data.images import MAX_PIXELS
from ..errors import L2LError
from ..data.preview import check_figure_file, preview_dataset
from .app import app
from .common import DATA_DIR, MNIST_DIR, one_line

data_app = typer.Typer(help="Build and inspect data sets.\n\nExample: l2l data build colormnist", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _names(name: str, data_dir: Optional[Path] = None) -> list[str]:
    """Every built data set for ``all``, else the one called ``name``, built or imported into
    ``data_dir`` (an unknown name is a one-line error)."""
    from ..data.imported import dataset_spec

    if name == "all":
        return [n for n, spec in DATASETS.items() if spec.build is not None]
    return [dataset_spec(name, data_dir).name]


@data_app.command("build")
@one_line
def build(name: str = typer.Argument("all", help=f"{DATASETS.help()} | all"),
          data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR,
          force: bool = typer.Option(False, "--force", help="Rebuild even if a verified file exists.")) -> None:
    """Build a data set from verified MNIST (seconds).

    Example: l2l data build decoymnist --data-dir ./data
    """
    for n in _names(name, data_dir):
        path = dataset_path(n, data_dir)
        t0 = time.perf_counter()
        if force or not path.exists():
            build_dataset(n, data_dir, mnist_dir and str(mnist_dir))
        ds = load_dataset(n, data_dir, mnist_dir=mnist_dir and str(mnist_dir))
        typer.echo(f"{n}: {len(ds.train)} train + {len(ds.test)} test -> {path} ({time.perf_counter() - t0:.1f}s)")


@data_app.command("info")
@one_line
def info(name: str = typer.Argument(..., help=DATASETS.help()),
         data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR) -> None:
    """Sizes, label counts, protocol and array hashes of a built data set (never builds it).

    Example: l2l data info colormnist
    """
    ds = load_dataset(_names(name, data_dir)[0], data_dir, build=False, mnist_dir=mnist_dir and str(mnist_dir))
    h = ds.header
    typer.echo(f"{ds.name}: {h['protocol']} (protocol v{h['protocol_version']})")
    source = h["imported"]["from"] if "imported" in h else h["mnist_source"]
    typer.echo(f"  file: {dataset_path(ds.name, data_dir)}  source: {source}")
    for split in (ds.train, ds.test):
        counts = Counter(split.labels.tolist())
        names = DATASETS[ds.name].classes
        typer.echo(f"  {split.name}: {len(split)} images {tuple(split.images.shape[1:])} uint8; "
                   f"labels {' '.join(f'{names[c]}:{counts[c]}' for c in sorted(counts))}")
    typer.echo("  sha256:")
    for k, meta in h["arrays"].items():
        typer.echo(f"    {k:<13} {str(tuple(meta['shape'])):<20} {meta['sha256']}")


@data_app.command("show")
@one_line
def show(name: str = typer.Argument(..., help=DATASETS.help()),
         out: Path = typer.Option(..., "--out", help="Figure to write: .png, .pdf or .svg."),
         data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR) -> None:
    """Write a grid of train and test images with labels (never builds the data set).

    Example: l2l data show colormnist --out colormnist.png
    """
    check_figure_file(out)
    ds = load_dataset(_names(name, data_dir)[0], data_dir, build=False, mnist_dir=mnist_dir and str(mnist_dir))
    typer.echo(f"wrote {preview_dataset(ds, out)}")


@data_app.command("import")
@one_line
def import_cmd(name: str = typer.Argument(..., help="Name of the new data set (lower case, digits, - _ .)."),
               source: Path = typer.Option(..., "--from", help="Folder with train/<class>/, test/<class>/ "
                                           "(val/ and masks/ optional), or a CSV with path,label,split[,group]."),
               size: int = typer.Option(224, "--size", help="Side in pixels: shorter side resized, centre crop."),
               skip_bad: bool = typer.Option(False, "--skip-bad",
                                             help="Leave out unreadable files instead of failing."),
               force: bool = typer.Option(False, "--force", help="Import again over an existing data set."),
               max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", min=1,
                                              help="Refuse images with more pixels than this (decoding them would "
                                                   "take too much memory)."),
               object_word: str = typer.Option("object", "--object", help="What reports call the thing to look at "
                                               "(e.g. bird)."),
               shortcut_word: str = typer.Option("background", "--shortcut", help="What reports call the "
                                                 "spurious cue (e.g. water)."),
               fmt: str = typer.Option("auto", "--format", help=f"{' | '.join(FORMATS)}: auto reads a folder or a "
                                       "path,label,split[,group] CSV; waterbirds group_DRO's metadata.csv; redmeat "
                                       "GALS's food-101 meta/all_images.csv; csv any CSV with --columns."),
               columns: Optional[str] = typer.Option(None, "--columns", help="--format csv: which column is which, "
                                                     "e.g. path=img_filename,label=y,split=split,group=place."),
               split_values: Optional[str] = typer.Option(None, "--split-values", help="--format csv: the split "
                                                          "column's values, e.g. 0=train,1=val,2=test."),
               data_dir: Optional[Path] = DATA_DIR,
               quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Import your own images as a data set (verified uint8 store, class names and file names kept).

    Example: l2l data import birds --from ./birds --size 224   then   l2l train --dataset birds --backbone resnet18

    Published layouts: l2l data import waterbirds --from ./waterbird_complete95_forest2water2 --format waterbirds
    """
    if fmt not in FORMATS:
        raise L2LError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    from ..data.imported import import_dataset

    t0 = time.perf_counter()
    path, skipped, warnings = import_dataset(name, source, data_dir, size=size, skip_bad=skip_bad, force=force,
                                             progress=not quiet, max_pixels=max_pixels,
                                             words=(object_word.strip() or "object",
                                                    shortcut_word.strip() or "background"),
                                             fmt=fmt, columns=columns, split_values=split_values)
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    ds = load_dataset(name, data_dir, build=False)
    h = ds.header["imported"]
    groups = f", {len(h['groups'])} groups" if h["groups"] else ""
    n = len(ds.train) + len(ds.test)
    masks = "" if not h["has_masks"] else ", masks" if h.get("masked", n) == n else f", masks for {h['masked']} of {n}"
    typer.echo(f"{name}: {len(ds.train)} train{' + val' if h['has_val'] else ''} + {len(ds.test)} test images, "
               f"{len(h['classes'])} classes{groups}{masks} -> {path} "
               f"({time.perf_counter() - t0:.1f}s)" + (f"; skipped {skipped} bad file(s)" if skipped else ""))
