"""`l2l predict` and `l2l explain`: use a trained run on a folder of images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from .app import app
from .common import one_line

RUN = typer.Argument(..., help="A finished run folder: runs/DATASET/GROUP/seedN (the one holding result.json).")
IMAGES = typer.Option(..., "--images", help="Folder of images (PNG, JPEG, ...; any size, resized like in training).")
DEVICE = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N.")


@app.command("predict")
@one_line
def predict(run: Path = RUN, images: Path = IMAGES,
            out: Path = typer.Option(Path("predictions.csv"), "--out", help="CSV file to write."),
            device: str = DEVICE) -> None:
    """Predict every image in a folder with a trained run; write a CSV of classes and probabilities.

    Example: l2l predict runs/shapes-bg/vanilla-none-lenet-gap-0123456789/seed0 --images my_images --out preds.csv
    """
    from ..data.preview import check_out_file
    from ..inference import load_run, write_predictions
    from ..maps.images import load_image_folder

    check_out_file(out)
    trained = load_run(run, device)
    names, probs = [], []
    for split in load_image_folder(images):
        names += split.names
        probs += list(trained.predict(split.images))
    order = sorted(range(len(names)), key=names.__getitem__)
    names, probs = [names[i] for i in order], [probs[i] for i in order]
    write_predictions(out, names, probs, trained.class_names)
    counts = Counter(trained.class_names[int(p.argmax())] for p in probs)
    typer.echo(f"{len(names)} images -> {out}  ({', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))})")


@app.command("explain")
@one_line
def explain(run: Path = RUN, images: Path = IMAGES,
            out: Path = typer.Option(..., "--out",
                                     help="Folder for one overlay PNG per image (NAME_cam.png, sub-folders kept)."),
            limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images (by name)."),
            device: str = DEVICE, quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Write where a trained run looks: each image with the CAM of its predicted class and a colour bar.

    Example: l2l explain runs/shapes-bg/l2l-oracle-lenet-gap-0123456789/seed0 --images my_images --out cams
    """
    from tqdm.auto import tqdm

    from ..inference import load_run, write_overlay
    from ..maps.images import check_out_folder, load_image_folder
    from ..plotting import pyplot

    check_out_folder(out)
    pyplot()  # a missing matplotlib fails before any work
    trained = load_run(run, device)
    todo = sorted(((name, split, i) for split in load_image_folder(images) for i, name in enumerate(split.names)),
                  key=lambda t: t[0])
    todo = todo[:limit] if limit else todo
    for name, split, i in tqdm(todo, desc="explain", unit="img", disable=quiet):
        probs, cams = trained.explain(split.images[i:i + 1])
        k = int(probs[0].argmax())
        title = f"{name}: {trained.class_names[k]} (p {probs[0, k]:.2f}); {trained.config.method}, maps " \
                f"{trained.maps.get('name', 'none')} ({trained.maps.get('kind', 'none')})"
        write_overlay(out / Path(name).with_name(f"{Path(name).stem}_cam.png"), split.images[i], cams[0], title)
    typer.echo(f"{len(todo)} overlays -> {out}")
