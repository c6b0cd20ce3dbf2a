"""Seconds for one test pass of a stack (what the optimistic bound runs for every saved
epoch of a sweep) at several evaluation batch sizes, one process.

The inputs are random images of the backbone's input shape: the cost of a pass does not depend on
what the images show. The accuracies must agree across batch sizes; the script says so.

    python benchmarks/bound_batch.py                     # M = 16, 10,000 images, 1 thread
    python benchmarks/bound_batch.py --m 4 --batches 1000 64 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from learning_to_look.nn.backbones import LeNetGAP
from learning_to_look.training.stacked import StackedLeNetGAP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=16, help="models in the stack")
    ap.add_argument("--n", type=int, default=10_000, help="test images")
    ap.add_argument("--batches", type=int, nargs="*", default=[1000, 256, 64, 32], help="batch sizes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StackedLeNetGAP([LeNetGAP(num_classes=10, in_channels=3) for _ in range(args.m)])
    size = StackedLeNetGAP.backbone.input_size
    x, y = torch.randn(args.n, 3, size, size), torch.randint(0, 10, (args.n,))  # (N,3,S,S), (N,)
    print(f"M {args.m}, {args.n} images, {args.threads} thread(s), torch {torch.__version__}")
    print("| batch | seconds per pass | model-images per second |")
    print("|---|---|---|")
    first = None
    for bs in args.batches:
        t0 = time.perf_counter()
        acc = model.accuracy(x, y, bs=bs)  # (M,)
        secs = time.perf_counter() - t0
        first = acc if first is None else first
        same = "" if torch.equal(acc, first) else " (accuracies differ from the first batch size)"
        print(f"| {bs} | {secs:.2f} | {args.m * args.n / secs:,.0f} |{same}", flush=True)


if __name__ == "__main__":
    main()
