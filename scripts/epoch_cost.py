"""Seconds per training epoch of methods relative to vanilla: where ``Method.epoch_cost``
comes from. Each method trains one epoch on the first 2,000 training images (DecoyMNIST
unless ``--dataset``; CDEP CNN, Adam schedule, batch 64, oracle maps, one thread), from
the same initial weights, in interleaved rounds; the fastest round of each is kept,
since a shared machine only ever slows a round down.

    python scripts/epoch_cost.py vanilla,gals,energy,energy:input-x-gradient,hint,ce --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch

from learning_to_look.config import TrainConfig
from learning_to_look.training.engine import _model, _optimizer, _train_epoch
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.run import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", help="comma-separated methods, METHOD:ATTRIBUTION for energy; vanilla first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dataset", default="decoymnist")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = args.methods.split(",")
    prepared = {}
    for spec in specs:
        method, _, attribution = spec.partition(":")
        cfg = TrainConfig(dataset=args.dataset, method=method, backbone="cdep-cnn", schedule="adam",
                          train_subset=args.images, seed=0, attribution=attribution or None)
        run = resolve_run(cfg, args.data_dir)
        prepared[spec] = (run, prepare(run, args.data_dir, progress=False))
    best = {spec: float("inf") for spec in specs}
    for _ in range(args.rounds):
        for spec, (run, prep) in prepared.items():
            model = _model(run.cfg, run.spec.num_classes, torch.device("cpu"))
            opt, _ = _optimizer(model, run.cfg)
            t0 = time.perf_counter()
            _train_epoch(model, run.method, prep.train, opt, torch.Generator().manual_seed(0), 0,
                         run.cfg.batch_size, torch.device("cpu"), progress=False)
            best[spec] = min(best[spec], time.perf_counter() - t0)
    for spec in specs:
        print(f"{spec}: {best[spec]:.2f} s/epoch, {best[spec] / best[specs[0]]:.2f} x {specs[0]}")


if __name__ == "__main__":
    main()
