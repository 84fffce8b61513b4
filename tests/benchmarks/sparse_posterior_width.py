"""Is the posterior of the lift too narrow in the sparse regime? (calibration follow-up, issue 16)

    python tests/benchmarks/sparse_posterior_width.py [--runs 12]

A/A experiments of the calibration study's sparse regime (50,000 users, 0.01 events
per user, s uniform in 0.3-1.2), fitted with the defaults. At these rates the counts
are almost Poisson, so the sd of beta (log rate ratio) cannot honestly be smaller
than the Poisson-ratio sd sqrt(1/events_control + 1/events_treatment). Prints both
per run and the median ratio: a ratio well under 1 would explain an A/A 'ship'
rate above 5%.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, SamplerConfig, configure, fit  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    args = parser.parse_args()
    configure()
    rng = np.random.default_rng(5)
    ratios = []
    print("| run | s | events (control, treatment) | posterior sd of beta | Poisson-ratio sd | ratio | P(beat) |")
    print("|---|---|---|---|---|---|---|")
    for i in range(args.runs):
        s = float(rng.uniform(0.3, 1.2))
        data, _ = from_model(50_000, 0.01, np.zeros(2), s, seed=int(rng.integers(1 << 31)))
        beta = fit(data, "v0", FitConfig(sampler=SamplerConfig(seed=i, progress_bar=False))).posterior.flat("beta")[:, 0]
        events = data.group_by("variant").agg(pl.col("cv_count").sum()).sort("variant")["cv_count"].to_numpy()
        poisson_sd = float(np.sqrt(1 / events[0] + 1 / events[1]))
        ratios.append(beta.std() / poisson_sd)
        print(f"| {i} | {s:.2f} | {events[0]}, {events[1]} | {beta.std():.4f} | {poisson_sd:.4f} | {ratios[-1]:.3f} | "
              f"{np.mean(beta > 0):.3f} |", flush=True)
    print(f"\nmedian ratio {np.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.runs} runs")


if __name__ == "__main__":
    main()
