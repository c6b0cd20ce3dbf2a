"""Per-epoch scalars for a dashboard (``--log tensorboard``): the run's history rows, as
they are written, under the run folder's ``tensorboard/``. The record stays the source
of truth; this is a view of it while a run trains."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import L2LError

LOGGERS = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


def check_logger(kind: str) -> None:
    """Fail before training when the logger's package is missing."""
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise L2LError("--log tensorboard needs the tensorboard package; pip install 'learning-to-look[log]' "
                           "or drop --log") from None


@contextmanager
def scalar_log(kind: str, folder: Path) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """A function that logs one epoch's history row, or None for ``none``."""
    if kind == "none":
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / TENSORBOARD_DIR))

    def log_row(row: dict[str, Any]) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else f"schedule/{key}"
                writer.add_scalar(tag, value, row["epoch"])
        writer.flush()

    try:
        yield log_row
    finally:
        writer.close()
