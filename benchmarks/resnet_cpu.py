"""ResNet training images per second at 224 px on CPU: the project's training step in
full, the same frozen up to a stage (``--freeze-until``), and a bare PyTorch loop on the
same model, batch size and thread count.

- full: ``training.engine``'s epoch loop with the vanilla method, on uint8 images that it
  converts batch by batch, as ``l2l train`` does on an imported 224 px data set;
- frozen: the same loop on the frozen part's cached output (``training.features``); the
  one-off cost of filling the cache is reported on its own;
- bare: ``model(x)``, cross-entropy, ``backward``, ``SGD.step`` on float inputs made
  beforehand (its best case: no conversion).
Each is timed on the epochs after a first (warm-up) one. Random images and labels: the
speed does not depend on them.

    python benchmarks/resnet_cpu.py --threads 1 --images 32 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from learning_to_look.config import TrainConfig
from learning_to_look.device import pick_device
from learning_to_look.methods import METHODS, Batch
from learning_to_look.nn.backbones import build_backbone
from learning_to_look.training.engine import _optimizer, _train_epoch
from learning_to_look.training.features import freeze


def _epochs(model, method, batch, opt, cfg, epochs: int) -> float:
    """Images per second of the project's epoch loop over ``epochs`` epochs after a warm-up epoch."""
    gen, device = torch.Generator().manual_seed(0), pick_device("cpu")
    _train_epoch(model, method, batch, opt, gen, 0, cfg.batch_size, device, False)
    t0 = time.perf_counter()
    for e in range(epochs):
        _train_epoch(model, method, batch, opt, gen, e + 1, cfg.batch_size, device, False)
    return epochs * len(batch) / (time.perf_counter() - t0)


def bare(backbone: str, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, cfg: TrainConfig) -> float:
    """Images per second of a plain PyTorch loop on the same model and optimiser settings."""
    torch.manual_seed(0)
    model = build_backbone(backbone, int(y.max()) + 1).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def epoch() -> None:
        for idx in torch.randperm(len(y)).split(batch_size):
            loss = F.cross_entropy(model(x[idx])[0], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return epochs * len(y) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs, after one warm-up epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--freeze-until", default="layer3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(dataset="shapes-bg", method="vanilla", backbone=args.backbone, batch_size=args.batch_size,
                      ).with_schedule_defaults()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 224, 224), dtype=torch.uint8, generator=gen)  # (N,3,224,224)
    y = torch.randint(0, 4, (args.images,), generator=gen)
    method = METHODS.get("vanilla")(cfg)
    rows = []

    torch.manual_seed(0)
    model = build_backbone(args.backbone, 4)
    rows.append(("project step, full network", _epochs(model, method, Batch(images, y, size=224), _optimizer(
        model, cfg)[0], cfg, args.epochs)))

    torch.manual_seed(0)
    model = build_backbone(args.backbone, 4)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        train, _ = freeze(model, args.freeze_until, Batch(images, y, size=224), Batch(images[:2], y[:2], size=224),
                          Path(folder), pick_device("cpu"))
        fill = (args.images + 2) / (time.perf_counter() - t0)
        rows.append((f"project step, frozen up to {args.freeze_until}", _epochs(
            model, method, train, _optimizer(model, cfg)[0], cfg, args.epochs)))
    rows.append((f"filling the {args.freeze_until} cache (once per image)", fill))

    x = (images.float() / 127.5 - 1)  # (N,3,224,224) in [-1, 1], the project's input scale
    rows.append(("bare PyTorch loop, full network", bare(args.backbone, x, y, args.batch_size, args.epochs, cfg)))
    print(f"{args.backbone}, 224 px, {args.threads} thread(s), batch {args.batch_size}, {args.images} images, "
          f"{args.epochs} timed epochs after one warm-up, torch {torch.__version__}")
    print("| what | images/s |\n|---|---|")
    for what, rate in rows:
        print(f"| {what} | {rate:.2f} |")
    print(f"full project step / bare loop: {rows[0][1] / rows[-1][1]:.2f}")


if __name__ == "__main__":
    main()
