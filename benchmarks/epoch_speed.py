"""Seconds per training epoch on the full 50,400 training images, per backbone and method.

Each configuration trains two epochs with the paper's settings (E_att = 1, so
two-phase methods time both phases), validation included, exactly as `l2l train`
does; nothing is written to ./runs. Run one benchmark at a time on a small machine.

    python benchmarks/epoch_speed.py                       # all ten configurations
    python benchmarks/epoch_speed.py --only lenet-gap:l2l --threads 1
"""

from __future__ import annotations

import argparse

import torch

from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.engine import fit
from learning_to_look.training.run import prepare

CONFIGS = ("lenet-gap:vanilla", "lenet-gap:l2l", "lenet-gap:rrr", "lenet-gap:eg", "lenet-gap:cdep",
           "cdep-cnn:vanilla", "cdep-cnn:gradcam-kl", "cdep-cnn:rrr", "cdep-cnn:eg", "cdep-cnn:cdep")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="decoymnist")
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), help="backbone:method pairs")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--train-subset", type=int, default=None, help="fewer images, for a smoke run")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.dataset}, {args.threads} thread(s), torch {torch.__version__}")
    print("| backbone | method | s, epoch 0 | s, epoch 1 | images/s, epoch 1 (validation included) |")
    print("|---|---|---|---|---|")
    for pair in args.only:
        backbone, method = pair.split(":")
        run = resolve_run(TrainConfig(dataset=args.dataset, backbone=backbone, method=method, epochs=2, e_att=1,
                                      seed=0, maps="oracle", train_subset=args.train_subset))
        prep = prepare(run, args.data_dir, progress=False)
        try:
            fitted = fit(run, prep.train, prep.val, progress=False)
        except L2LError as e:  # a diverging configuration is a result too
            print(f"| {backbone} | {method} | {e} | | |", flush=True)
            continue
        secs = [row["seconds"] for row in fitted.history]
        rate = len(prep.train) / secs[1]
        print(f"| {backbone} | {method} | {secs[0]:.1f} | {secs[1]:.1f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
