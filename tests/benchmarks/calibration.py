"""Calibration of the collapsed fit: interval coverage and A/A false 'ship' rate.

    python tests/benchmarks/calibration.py [--per-scale 40] [--aa-per-scale 20] [--out FILE]

For each count scale (mean conversions per user in the control), simulates
experiments from the model with random true parameters (s ~ U(0.2, 1.2),
relative effect beta ~ N(0, 0.15)), fits each with the default priors, and counts
how often the 95% interval holds the truth. Then A/A experiments (beta = 0):
the share labelled 'ship' (should be near 5%: one-sided P(beat) >= 0.95) and
'keep_control'. Prints a markdown table; --out also writes it to a file.
Not run by pytest: it takes ~20-30 minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, SamplerConfig, fit  # noqa: E402
from glmm_model import configure  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402

SCALES = [(0.02, 20_000), (0.5, 1_000), (5.0, 400), (50.0, 300), (300.0, 200)]


def covered(result, truth) -> dict[str, bool]:
    out = {}
    for row in result.posterior_summary.iter_rows(named=True):
        true = truth[row["parameter"]]
        true = float(np.atleast_1d(true)[0])
        out[row["parameter"]] = row["ci_low"] <= true <= row["ci_high"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scale", type=int, default=40)
    parser.add_argument("--aa-per-scale", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    configure()
    sampler = SamplerConfig(num_chains=2, num_warmup=500, num_samples=1000, progress_bar=False)
    config = FitConfig(sampler=sampler)
    rows, started = [], time.perf_counter()
    for scale, n_users in SCALES:
        rng = np.random.default_rng(int(scale * 1000) + 17)
        hits = {"beta0": [], "beta": [], "s": []}
        labels, invalid = [], 0
        for i in range(args.per_scale + args.aa_per_scale):
            aa = i >= args.per_scale
            s_true = float(rng.uniform(0.2, 1.2))
            beta = 0.0 if aa else float(rng.normal(0.0, 0.15))
            data, truth = from_model(n_users, scale, [0.0, beta], s_true, seed=int(rng.integers(1 << 31)))
            result = fit(data, "v0", config.with_(sampler=SamplerConfig(**{**sampler.__dict__, "seed": i})))
            decision = result.lift["decision"][0]
            invalid += decision == "invalid"
            if aa:
                labels.append(decision)
            else:
                for k, v in covered(result, truth).items():
                    hits[k].append(v)
        rows.append(
            {
                "mean per user": scale,
                "users": n_users,
                "experiments": args.per_scale,
                "coverage beta0": np.mean(hits["beta0"]),
                "coverage beta": np.mean(hits["beta"]),
                "coverage s": np.mean(hits["s"]),
                "A/A runs": args.aa_per_scale,
                "A/A ship": np.mean([d == "ship" for d in labels]),
                "A/A keep_control": np.mean([d == "keep_control" for d in labels]),
                "invalid (all runs)": invalid,
            }
        )
        print(f"scale {scale}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    table = pl.DataFrame(rows)
    all_hits = {k: float(np.average(table[f"coverage {k}"], weights=table["experiments"])) for k in ("beta0", "beta", "s")}
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for r in table.iter_rows():
        cells = [str(r[0])] + [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Overall 95% interval coverage: beta0 {all_hits['beta0']:.3f}, beta {all_hits['beta']:.3f}, s {all_hits['s']:.3f} "
        f"over {int(table['experiments'].sum())} experiments; A/A 'ship' share "
        f"{float(np.average(table['A/A ship'], weights=table['A/A runs'])):.3f} over {int(table['A/A runs'].sum())} runs. "
        f"Sampler: 2 chains x (500 warmup + 1000 draws), collapsed, default priors; {time.perf_counter() - started:.0f} s."
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
