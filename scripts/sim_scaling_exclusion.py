"""Simulate the false-exclusion rate of `exclude="auto"` on exact laws, and its power (docs/guide/scaling-exclusion.md).

Run: PYTHONPATH=src python scripts/sim_scaling_exclusion.py  (a few minutes on 2 cores). The old rule's
column of the guide's table came from this script run against commit 02715cb.
"""

import numpy as np

from saelab.experiments.scaling import fit_joint, fit_power, fit_power_const

N = np.array([256, 512, 1024, 2048, 4096], float)


def false_exclusions(form: str, seeds: int, sigma: float, reps: int, rng) -> int:
    """How many of `reps` exact laws with log-normal noise sigma lose a size."""
    bad = 0
    for _ in range(reps):
        if form == "joint":
            n, k = np.meshgrid(N, [8, 16, 32, 64])
            n, k = np.repeat(n.ravel(), seeds), np.repeat(k.ravel(), seeds)
            y = np.exp(-0.5 - 0.4 * np.log(k) - 0.05 * np.log(n) - 0.02 * np.log(k) * np.log(n)) + np.exp(
                -4 - 0.1 * np.log(k)
            )
            y = y * np.exp(rng.normal(0, sigma, y.size))
            bad += bool(fit_joint(n, k, y, exclude="auto", n_boot=0).excluded_n)
        else:
            x = np.repeat(N, seeds)
            y = (0.9 * x**-0.3 + (0.05 if form == "power+const" else 0.0)) * np.exp(rng.normal(0, sigma, x.size))
            bad += bool((fit_power if form == "power" else fit_power_const)(x, y, exclude="auto", n_boot=0).excluded_x)
    return bad


def main() -> None:
    """Print the false-exclusion table, then the chance that a planted off-trend smallest size goes."""
    rng = np.random.default_rng(1)
    for form, seeds, sigma, reps in [
        ("power", 1, 0.01, 2000),
        ("power", 1, 0.1, 2000),
        ("power", 3, 0.01, 2000),
        ("power+const", 1, 0.01, 300),
        ("power+const", 1, 0.05, 300),
        ("power+const", 3, 0.01, 300),
        ("joint", 1, 0.003, 100),
        ("joint", 1, 0.01, 100),
    ]:
        b = false_exclusions(form, seeds, sigma, reps, rng)
        print(f"{form:12s} seeds {seeds} sigma {sigma:<6} false exclusions {b}/{reps} = {b / reps:.3f}", flush=True)
    rng = np.random.default_rng(5)
    for seeds in (1, 3):
        for off in (1.05, 1.1, 1.3, 1.5):
            hit = 0
            for _ in range(300):
                x = np.repeat(N, seeds)
                y = 0.9 * x**-0.3 * np.exp(rng.normal(0, 0.01, x.size))
                y[x == N[0]] *= off
                hit += N[0] in fit_power(x, y, exclude="auto", n_boot=0).excluded_x
            print(f"power, {seeds} seed(s), sigma 0.01, smallest size x{off}: dropped in {hit}/300", flush=True)


if __name__ == "__main__":
    main()
