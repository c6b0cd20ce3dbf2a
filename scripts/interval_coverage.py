"""How often a 95 % interval for a difference of means leaves out 0 when there is no
difference: the report's Welch t-interval against the percentile bootstrap it replaced.
Two samples of n seeds from one normal distribution, many trials; a right interval
leaves out 0 in about 5 % of them.

    .venv/bin/python scripts/interval_coverage.py [--trials 2000]
"""

import argparse

import numpy as np

from learning_to_look.analysis.stats import welch_diff


def bootstrap_diff(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, resamples: int = 10_000) -> tuple:
    """The percentile bootstrap the report used before: each side resampled independently."""
    ra = rng.choice(a, size=(resamples, len(a))).mean(1)
    rb = rng.choice(b, size=(resamples, len(b))).mean(1)
    return tuple(np.quantile(ra - rb, [0.025, 0.975]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print("| seeds a side | percentile bootstrap | Welch t-interval |\n|---|---|---|")
    for n in (3, 5):
        boot = welch = 0
        for _ in range(args.trials):
            a, b = rng.normal(0, 5, n), rng.normal(0, 5, n)
            low, high = bootstrap_diff(a, b, rng)
            boot += low > 0 or high < 0
            _, low, high = welch_diff(a, b)
            welch += low > 0 or high < 0
        print(f"| {n} | {100 * boot / args.trials:.1f} % | {100 * welch / args.trials:.1f} % |")


if __name__ == "__main__":
    main()
