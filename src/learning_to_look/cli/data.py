"""`l2l data`: build, inspect and preview the benchmark data sets."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from ..data import DATASETS, build_dataset, dataset_path, load_dataset
from ..data.preview import preview_dataset
from .app import DATA_DIR, MNIST_DIR, app

data_app = typer.Typer(help="Build and inspect data sets.\n\nExample: l2l data build colormnist", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _names(name: str) -> list[str]:
    """Every registered data set for ``all``, else the one called ``name`` (an unknown name is a one-line error)."""
    return list(DATASETS) if name == "all" else [DATASETS.get(name).name]


@data_app.command("build")
def build(name: str = typer.Argument("all", help=f"{DATASETS.help()} | all"),
          data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR,
          force: bool = typer.Option(False, "--force", help="Rebuild even if a verified file exists.")) -> None:
    """Build a data set from verified MNIST (seconds).

    Example: l2l data build decoymnist --data-dir ./data
    """
    for n in _names(name):
        path = dataset_path(n, data_dir)
        t0 = time.perf_counter()
        if force or not path.exists():
            build_dataset(n, data_dir, mnist_dir and str(mnist_dir))
        ds = load_dataset(n, data_dir, mnist_dir=mnist_dir and str(mnist_dir))
        typer.echo(f"{n}: {len(ds.train)} train + {len(ds.test)} test -> {path} ({time.perf_counter() - t0:.1f}s)")


@data_app.command("info")
def info(name: str = typer.Argument(..., help=DATASETS.help()),
         data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR) -> None:
    """Sizes, label counts, protocol and array hashes of a built data set.

    Example: l2l data info colormnist
    """
    ds = load_dataset(_names(name)[0], data_dir, mnist_dir=mnist_dir and str(mnist_dir))
    h = ds.header
    typer.echo(f"{ds.name}: {h['protocol']} (protocol v{h['protocol_version']})")
    typer.echo(f"  file: {dataset_path(ds.name, data_dir)}  mnist: {h['mnist_source']}")
    for split in (ds.train, ds.test):
        counts = Counter(split.labels.tolist())
        typer.echo(f"  {split.name}: {len(split)} images {tuple(split.images.shape[1:])} uint8; "
                   f"labels {' '.join(f'{c}:{counts[c]}' for c in range(10))}")
    typer.echo("  sha256:")
    for k, meta in h["arrays"].items():
        typer.echo(f"    {k:<13} {str(tuple(meta['shape'])):<20} {meta['sha256']}")


@data_app.command("show")
def show(name: str = typer.Argument(..., help=DATASETS.help()),
         out: Path = typer.Option(..., "--out", help="PNG file to write."),
         data_dir: Optional[Path] = DATA_DIR, mnist_dir: Optional[Path] = MNIST_DIR) -> None:
    """Write a grid of train and test images with labels.

    Example: l2l data show colormnist --out colormnist.png
    """
    ds = load_dataset(_names(name)[0], data_dir, mnist_dir=mnist_dir and str(mnist_dir))
    typer.echo(f"wrote {preview_dataset(ds, out)}")
