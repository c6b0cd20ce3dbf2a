"""Model-epochs per second: the stacked trainer at several stack sizes against the
single-run engine, l2l on LeNet-GAP, on the same data, one process.

Each configuration trains 2 epochs with E_att = 1 (so both phases are timed), on the
first ``--train-subset`` training images, validation included, as ``l2l sweep`` and
``l2l train`` do; nothing is written to ./runs. Peak memory is the process's maximum
resident set size so far (CPU) or torch's peak allocation (CUDA). Run one benchmark at
a time on a small machine.

    python benchmarks/stacked_speed.py                          # M = 1, 4, 16, 64
    python benchmarks/stacked_speed.py --sizes 1 16 --train-subset 2000 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch

from learning_to_look.config import TrainConfig
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.stacked import fit_stacked
from learning_to_look.training.engine import fit
from learning_to_look.training.run import prepare


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 4, 16, 64], help="stack sizes M")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = resolve_run(TrainConfig(dataset="colormnist", method="l2l", epochs=2, e_att=1, seed=0,
                                  train_subset=args.train_subset, device=args.device))
    base = run.cfg
    prep = prepare(run, args.data_dir, progress=False)
    print(f"{args.train_subset} training images, {args.threads} thread(s), {args.device}, torch {torch.__version__}")
    print("| engine | M | seconds for 2 epochs | model-epochs per second | peak memory MiB |")
    print("|---|---|---|---|---|")
    t0 = time.perf_counter()
    fit(run, prep.train, prep.val, progress=False)
    secs = time.perf_counter() - t0
    print(f"| single run | 1 | {secs:.1f} | {2 / secs:.2f} | {peak_mib(args.device):.0f} |", flush=True)
    for m in args.sizes:
        cfgs = [dataclasses.replace(base, lambda0=float(100 + 20 * (i % 11))) for i in range(m)]  # the paper's 100..300
        t0 = time.perf_counter()
        fit_stacked(cfgs, prep.train, prep.val, progress=False)
        secs = time.perf_counter() - t0
        print(f"| stacked | {m} | {secs:.1f} | {2 * m / secs:.2f} | {peak_mib(args.device):.0f} |", flush=True)


if __name__ == "__main__":
    main()
