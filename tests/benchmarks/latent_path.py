"""Benchmark 4: how far the latent path (one r_i per user, as the article samples it) goes.

    python tests/benchmarks/latent_path.py [--sizes 200 2000 20000] [--budget 300]

For each size: users from the model (2 arms, 2 conversions per user on average,
s = 0.5), fitted on the latent path and on the collapsed path with the default
sampler (4 chains x (500 warmup + 2000 draws), chains vectorised in two groups
on two threads). Each fit runs twice in the process; the second is the time with
the program compiled. Prints wall times, leapfrog steps per draw, divergences,
min bulk ESS and max R-hat. A latent fit slower than ``--budget`` seconds is not
repeated, and larger sizes are skipped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, SamplerConfig, fit  # noqa: E402
from glmm_model import configure  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402


def timed_fit(users, method: str, budget: float):
    config = FitConfig(method=method, sampler=SamplerConfig(progress_bar=False))
    times = []
    for _ in range(2):
        started = time.perf_counter()
        result = fit(users, "v0", config)
        times.append(time.perf_counter() - started)
        if times[0] > budget:
            times.append(float("nan"))  # not repeated
            break
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2_000, 20_000])
    parser.add_argument("--budget", type=float, default=300.0)
    args = parser.parse_args()
    configure()
    print("| users | path | first fit (s) | compiled fit (s) | leapfrog steps per draw | divergences | min ESS bulk | max R-hat |")
    print("|---|---|---|---|---|---|---|---|")
    over_budget = False
    for n in args.sizes:
        if over_budget:
            print(f"| {n:,} | latent | skipped: a smaller size already took more than {args.budget:.0f} s | | | | | |")
            continue
        users, _ = from_model(n, 2.0, [0.0, 0.1], 0.5, seed=n)
        for method in ("latent", "collapsed"):
            times, result = timed_fit(users, method, args.budget)
            d = result.diagnostics.row(0, named=True)
            steps = float(result.posterior.stats["n_steps"].mean())
            print(f"| {n:,} | {method} | {times[0]:.1f} | {times[1]:.1f} | {steps:.1f} | {d['divergences']} | "
                  f"{d['min_ess_bulk']:.0f} | {d['max_r_hat']:.3f} |", flush=True)
            if method == "latent" and times[0] > args.budget:
                over_budget = True


if __name__ == "__main__":
    main()
