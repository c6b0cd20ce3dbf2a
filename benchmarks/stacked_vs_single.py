"""At which λ0 do a stacked model and its single run part ways? (PROTOCOL 3.7)

For each seed, one stack holds every λ0; each model is compared with ``l2l train``'s
engine on the same config, same initial weights and same batch order. The two differ
only by float rounding (a grouped convolution sums in another order), which l2l's joint
phase can grow into a different model. Reported: validation accuracy after the last
epoch and at each model's selected epoch, per engine; the test split is never read.

    python benchmarks/stacked_vs_single.py --train-subset 2000 --lambdas 1 3 10 30 100 160 --seeds 0 1
"""

from __future__ import annotations

import argparse

import torch

from learning_to_look.config import TrainConfig
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.stacked import fit_stacked
from learning_to_look.training.engine import fit
from learning_to_look.training.run import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1, 3, 10, 30, 100, 160])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--dataset", default="colormnist")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.dataset}, l2l with oracle maps, first {args.train_subset} training images, paper schedule")
    print("| seed | λ0 | single: last-epoch val acc | stacked: last-epoch val acc | |Δ| | "
          "single: selected val acc | stacked: selected val acc |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        runs = [resolve_run(TrainConfig(dataset=args.dataset, method="l2l", maps="oracle", lambda0=lam, seed=seed,
                                        train_subset=args.train_subset)) for lam in args.lambdas]
        prep = prepare(runs[0], progress=False)
        stacked = fit_stacked([r.cfg for r in runs], prep.train, prep.val, progress=False)
        for run, st in zip(runs, stacked):
            single = fit(run, prep.train, prep.val, progress=False)
            a, b = single.history[-1]["val_acc"], st.history[-1]["val_acc"]
            sel_a = single.history[single.selected_epoch]["val_acc"]
            sel_b = st.history[st.selected_epoch]["val_acc"]
            print(f"| {seed} | {run.cfg.lambda0:g} | {a:.2f} | {b:.2f} | {abs(a - b):.2f} | {sel_a:.2f} "
                  f"| {sel_b:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
