"""`l2l predict` and `l2l explain`: use a trained run on a folder of images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from ..errors import L2LError
from .app import app
from .common import one_line

RUN = typer.Argument(..., help="A finished run folder: runs/DATASET/GROUP/seedN (the one holding its record).")
IMAGES = typer.Option(..., "--images", help="Folder of images (PNG, JPEG, ...; any size, prepared as the import "
                                            "prepared the run's data: shorter side resized, centre crop).")
DEVICE = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N.")
QUIET = typer.Option(False, "--quiet", help="No progress bar.")
#: Images prepared and predicted at once.
BATCH = 256


@app.command("predict")
@one_line
def predict(run: Path = RUN, images: Path = IMAGES,
            out: Path = typer.Option(Path("predictions.csv"), "--out", help="CSV file to write."),
            device: str = DEVICE, quiet: bool = QUIET) -> None:
    """Predict every image in a folder with a trained run; write a CSV of classes and probabilities.
    When every image sits in a sub-folder named after a class, also print the accuracy,
    per-class accuracy and the confusion matrix.

    Example: l2l predict runs/shapes-bg/vanilla-none-lenet-gap-0123456789/seed0 --images my_images --out preds.csv
    """
    import numpy as np

    from ..data.images import image_files
    from ..data.preview import check_out_file
    from ..inference import labels_from_folders, load_run, read_images, scores_text, write_predictions
    from ..progress import bar

    check_out_file(out)
    trained = load_run(run, device)
    files = image_files(images)
    names = [f.relative_to(images).as_posix() for f in files]
    probs = []
    with bar(total=len(files), desc="predict", unit="img", show=not quiet) as progress:
        for i in range(0, len(files), BATCH):
            probs.append(trained.predict(read_images(trained, files[i:i + BATCH])))
            progress.update(len(files[i:i + BATCH]))
    probs = np.concatenate(probs)
    write_predictions(out, names, probs, trained.class_names)
    counts = Counter(trained.class_names[int(p.argmax())] for p in probs)
    typer.echo(f"{len(names)} images -> {out}  ({', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))})")
    labels = labels_from_folders(names, trained.class_names)
    if labels is not None:
        typer.echo("\n".join(scores_text(labels, probs, trained.class_names)))


@app.command("explain")
@one_line
def explain(run: Path = RUN, images: Path = IMAGES,
            out: Path = typer.Option(..., "--out",
                                     help="Folder for one PNG per image (NAME_cam.png, sub-folders kept)."),
            cls: str = typer.Option("pred", "--class", help="Whose CAM: pred (the predicted class), true (the class "
                                                            "of the image's sub-folder) or a class name."),
            limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images (by name)."),
            device: str = DEVICE, quiet: bool = QUIET) -> None:
    """Write where a trained run looks: each image as the network saw it, the CAM over a grey
    copy and the CAM alone, for the predicted class, the true class or a named one.

    Example: l2l explain runs/shapes-bg/l2l-oracle-lenet-gap-0123456789/seed0 --images my_images --out cams
    """
    from ..data.images import image_files
    from ..inference import labels_from_folders, load_run, read_images, write_overlay
    from ..maps.images import check_out_folder
    from ..plotting import pyplot
    from ..progress import bar

    check_out_folder(out)
    pyplot()  # a missing matplotlib fails before any work
    trained = load_run(run, device)
    files = image_files(images)[:limit] if limit else image_files(images)
    names = [f.relative_to(images).as_posix() for f in files]
    targets = _targets(cls, names, trained.class_names, labels_from_folders(names, trained.class_names))
    for i, (name, f) in enumerate(bar(list(zip(names, files)), desc="explain", unit="img", show=not quiet)):
        prepared = read_images(trained, [f])
        probs, cams = trained.explain(prepared, None if targets is None else [targets[i]])
        k = int(probs[0].argmax()) if targets is None else targets[i]
        title = (f"{name}: CAM of {trained.class_names[k]} (predicted {trained.class_names[int(probs[0].argmax())]}, "
                 f"p {probs[0].max():.2f}); {trained.config.method}, maps {trained.maps.get('name', 'none')} "
                 f"({trained.maps.get('kind', 'none')})")
        write_overlay(out / Path(name).with_name(f"{Path(name).stem}_cam.png"), prepared[0], cams[0], title)
    typer.echo(f"{len(files)} images explained -> {out}")


def _targets(cls: str, names: list[str], classes: tuple[str, ...], labels) -> list[int] | None:
    """The class whose CAM each image gets; None: each image's predicted class."""
    if cls == "pred":
        return None
    if cls == "true":
        if labels is None:
            raise L2LError("--class true needs every image in a sub-folder named after a class of the run "
                           f"({', '.join(classes)}); use --class pred or a class name")
        return [int(v) for v in labels]
    if cls not in classes:
        raise L2LError(f"--class {cls!r} is no class of this run; choose pred, true or one of: {', '.join(classes)}")
    return [classes.index(cls)] * len(names)
