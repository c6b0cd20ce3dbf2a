"""Seconds per epoch at 1 and 2 threads, alone and beside one other CPU-bound process,
for the single-run engine and a stack of 16 (l2l on LeNet-GAP, as stacked_speed.py).

This is the measurement behind ``--jobs``' single-thread workers (README, "Threads").
Each cell runs ``stacked_speed.py`` in a fresh process with OMP_NUM_THREADS set; the
busy neighbour is a pure-Python loop, the cheapest stand-in for another job.

    python benchmarks/threads.py --train-subset 2000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

SPEED = Path(__file__).with_name("stacked_speed.py")


def measure(threads: int, busy: bool, subset: int, stack: int) -> dict[str, float]:
    """{engine: seconds per epoch} from one stacked_speed.py run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run([sys.executable, str(SPEED), "--sizes", str(stack), "--train-subset", str(subset),
                              "--threads", str(threads)], env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if neighbour:
            neighbour.kill()
    rows = re.findall(r"^\| (single run|stacked) \| (\d+) \| ([\d.]+) \|", out, flags=re.M)
    return {f"{engine} (M={m})": float(secs) / 2 for engine, m, secs in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--stack", type=int, default=16)
    args = ap.parse_args()
    print(f"{args.train_subset} training images; seconds per epoch (training + validation), {os.cpu_count()} cores")
    print("| engine | threads | alone | beside one busy process |")
    print("|---|---|---|---|")
    cells = {(t, busy): measure(t, busy, args.train_subset, args.stack) for t in (1, 2) for busy in (False, True)}
    for engine in cells[(1, False)]:
        for t in (1, 2):
            print(f"| {engine} | {t} | {cells[(t, False)][engine]:.2f} | {cells[(t, True)][engine]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
