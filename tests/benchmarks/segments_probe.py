"""Probe of the segment model (not a benchmark yet): time, divergences, tree sizes, spread and lifts."""
import sys
import time

import numpy as np

import glmm_model as gm
from glmm_model import sampling
from glmm_model.segments import fit_segments

sys.path.insert(0, "tests")
from test_segments import segment_frame  # noqa: E402

gm.configure()
steps = []
_run = sampling.run_nuts


def spy(*a, **k):
    draws, stats = _run(*a, **k)
    steps.append((float(np.mean(stats["n_steps"])), int(stats["diverging"].sum())))
    return draws, stats


sampling.run_nuts = spy
cfg = gm.FitConfig(sampler=gm.SamplerConfig(num_chains=2, num_warmup=400, num_samples=600, seed=3, progress_bar=False))
cases = {"apart": [0, 0.2, 0.4], "alike": [0.2, 0.2, 0.2]}
for name in sys.argv[1:] or cases:
    steps.clear()
    t = time.time()
    r = fit_segments(segment_frame(cases[name], seed=0 if name == "apart" else 1), "A", cfg)
    print(name, f"{time.time() - t:.1f} s", "attempts (mean leapfrog steps, divergences):", steps)
    print(r.segment_lift.select("segment", "relative_lift_mean", "relative_lift_low", "relative_lift_high"))
    print(r.segment_spread.select("valid", "effect_spread_mean", "effect_spread_median", "effect_spread_low", "effect_spread_high",
                                  "max_r_hat", "divergences"))
