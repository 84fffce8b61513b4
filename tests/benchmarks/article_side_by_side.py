"""Benchmark 1: the source article's code vs ``glmm-ab fit``, side by side, same data and settings.

    python tests/benchmarks/article_side_by_side.py [--repeats 3]

Runs ``../shared/reference/article_glmm.py`` as published (NUTS, 4 chains, 500
warmup, 2000 draws, 200 users from numpy seed 42) and ``glmm-ab fit`` with the
same chains, warmup and draws and the article's priors on the same 200 users,
each as a fresh process timed by wall clock (imports included), alternating, and
prints both times, their medians and ratio (glmm-ab's timed runs find the sampler
program in the cache, as every fit after a machine's first does; the first fit,
with an empty cache, is timed once and printed beside them), and how far apart the posterior means
are in units of their Monte Carlo error. Needs ../shared beside the repository
(it is not part of a user's clone); without it, stops with a message.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
ARTICLE = ROOT.parent / "shared" / "reference" / "article_glmm.py"
BIN = Path(sys.executable).parent


def article_data(path: Path) -> None:
    np.random.seed(42)
    group = np.random.binomial(1, 0.5, size=200)
    cv_count = np.random.negative_binomial(n=10, p=1 / (1 + (1.5 * group + 1)), size=200)
    pl.DataFrame({"variant": np.where(group == 1, "TG", "CG"), "cv_count": cv_count}).write_csv(path)


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - started, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not ARTICLE.exists():
        sys.exit(f"needs the article's code at {ARTICLE} (../shared/reference beside the repository); not found")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "article.csv"
        article_data(csv)
        ours = [str(BIN / "glmm-ab"), "fit", str(csv), "--control", "CG", "--priors", "article",
                "--chains", "4", "--warmup", "500", "--samples", "2000", "--json"]
        theirs = [sys.executable, str(ARTICLE)]
        cold, _ = timed(ours, {**env, "GLMM_AB_JAX_CACHE": str(Path(tmp) / "cold-cache")})
        timed(ours, env)  # untimed: the user's cache now holds this shape's program, as after any earlier fit
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            t, their_out = timed(theirs, env)
            t_theirs.append(t)
            t, our_out = timed(ours, env)
            t_ours.append(t)
    their_means = ast.literal_eval(their_out.strip().splitlines()[-1])
    summary = {r["parameter"]: r for r in json.loads(our_out)["posterior_summary"]}
    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    print("| run | article's code (s) | glmm-ab fit (s) |")
    print("|---|---|---|")
    for i, (a, b) in enumerate(zip(t_theirs, t_ours), 1):
        print(f"| {i} | {a:.1f} | {b:.1f} |")
    print(f"| median | {med_theirs:.1f} | {med_ours:.1f} |")
    print(f"\nSpeed-up (median wall time, imports included): {med_theirs / med_ours:.1f}x. "
          f"glmm-ab with an empty compilation cache (first run on a machine): {cold:.1f} s.")
    print("\n| parameter | article mean | glmm-ab mean | glmm-ab sd | difference / combined MC error |")
    print("|---|---|---|---|---|")
    for theirs_name, ours_name in (("beta0", "beta0"), ("beta1", "beta"), ("s", "s")):
        row = summary[ours_name]
        # the article prints no MCSE; its chains are as long as ours, so take ours for both
        mc = np.sqrt(2) * row["mcse_mean"]
        diff = their_means[theirs_name] - row["mean"]
        print(f"| {theirs_name} | {their_means[theirs_name]:.4f} | {row['mean']:.4f} | {row['sd']:.4f} | {diff / mc:+.2f} |")
    print("\nBoth: NUTS, 4 chains x (500 warmup + 2000 draws), priors beta0 ~ N(0,1), beta1 ~ N(0,1), s ~ Exp(1); "
          "the article samples 200 latent r_i, glmm-ab integrates them out (collapsed, default).")


if __name__ == "__main__":
    main()
