"""The fit stage for 4, 40 and 200 pairs, and what batching pairs into one vectorised NUTS program does.

    python tests/benchmarks/fit_stage_scaling.py [--sizes 4,40,200] [--batched-sizes 4,40] [--users 1000]

Three measurements, side by side in one process (default sampler: 4 chains x (500 + 2000),
refits off; pairs as in ``fit_stage_runners.py``, ``--users`` users each):

1. **The fit stage as it runs** (``flows.nightly.fit_pairs`` in a Prefect flow, sequential
   runner) for each size: seconds, seconds per pair, ratio to the smallest size.
2. **Batched (vmap over pairs)**: the sampler's own chunk program
   (:func:`glmm_model.sampling._build_chunk`) vectorised over pairs with ``jax.vmap``, histograms
   padded to one shape, every chain of every pair advanced together: sampling seconds only (no
   post-processing, so it flatters the batch). Also the mean leapfrog steps per draw of a chain
   against the mean, over iterations, of the most steps any chain of the batch took: a vectorised
   ``while`` runs until its longest member is done, so the batch pays the second number.
3. **The vectorised gradient**: one gradient of the collapsed log density, vectorised over 64
   points, per point; times the draws, chains and mean leapfrog steps of a fit, the CPU time of a
   fit's gradients at that rate (a point alone costs less: under ``vmap`` the likelihood's loop
   over cells runs until every point's tiers are done).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_stage_runners import pairs  # noqa: E402  (it sets Prefect's environment up first)
from prefect import flow  # noqa: E402

from flows.nightly import fit_pairs  # noqa: E402
from flows.options import RunOptions  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from glmm_model import configure  # noqa: E402
from glmm_model.config import Priors, SamplerConfig  # noqa: E402
from glmm_model.data import prepare  # noqa: E402
from glmm_model.model_inputs import Cells, cells, prior_arrays  # noqa: E402


def fit_stage(work, options) -> tuple[float, float]:
    """Seconds of the fit stage on ``work`` and the mean leapfrog steps per draw of its fits."""
    stage = flow(fit_pairs, name="bench-fits", task_runner=task_runner("sequential"), validate_parameters=False)
    started = time.perf_counter()
    results, failures = stage(work, options)
    seconds = time.perf_counter() - started
    assert failures.height == 0, failures
    return seconds, float(results["diagnostics"]["sampling_seconds"].sum())


def model_inputs(work):
    """Each pair's collapsed-model inputs, the cell arrays padded to the largest capacity among the pairs."""
    exps = [prepare(p.histogram, p.control_variant) for p in work]
    histograms = [cells(e) for e in exps]
    size = max(h.arm.shape[0] for h in histograms)

    def pad(h: Cells) -> Cells:
        return h._replace(**{name: np.concatenate([a, np.zeros(size - a.shape[0], a.dtype)])
                             for name, a in h._asdict().items() if name != "starts"})

    out = []
    for exp, h in zip(exps, histograms):
        h = pad(h)
        out.append(((h, prior_arrays(Priors(), exp)), {"cv_count": h.cv_count}))
    return out


def batched(work, sampler: SamplerConfig) -> tuple[float, float, float, float]:
    """(compile seconds, sampling seconds, mean steps per draw, mean per-iteration max over the batch)."""
    import jax

    from glmm_model import adaptation, sampling

    data = model_inputs(work)
    leaves = [jax.tree.flatten(d)[0] for d in data]
    tree = jax.tree.flatten(data[0])[1]
    stacked = [np.stack(xs) for xs in zip(*leaves)]
    chunk, example = sampling._build_chunk("collapsed_model", tree, leaves[0], sampler, True, sampling.SUMMARY_SITES)
    program = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, 0, None, 0)))
    warmup = list(adaptation.warmup_inputs(sampler.num_warmup, sampler.target_accept))
    n = len(work)
    state = [np.zeros((n,) + a.shape, a.dtype) for a in example[0]]
    total = sampler.num_warmup + sampler.num_samples
    steps, started = [], time.perf_counter()
    for i in range(math.ceil(total / sampling.CHUNK)):
        state, out = program(state, np.bool_(i == 0), np.uint32(sampler.seed), np.arange(n, dtype=np.uint32), warmup,
                             stacked)
        out = jax.device_get(out)
        if i == 0:  # the first chunk compiles: time the rest and scale to every chunk
            first_done = time.perf_counter()
        steps.append(out[3])
    rest = time.perf_counter() - first_done
    chunks = math.ceil(total / sampling.CHUNK)
    n_steps = np.concatenate(steps, axis=2)  # (pairs, chains, iterations)
    return (first_done - started - rest / (chunks - 1), rest * chunks / (chunks - 1), float(n_steps.mean()),
            float(n_steps.max(axis=(0, 1)).mean()))


def gradient_floor(work) -> float:
    """Seconds per point of one vectorised gradient of the collapsed log density (64 points)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    from glmm_model import model

    args, kwargs = model_inputs(work[:1])[0]
    grad = jax.jit(jax.vmap(jax.value_and_grad(lambda z: potential_energy(model.collapsed_model, args, kwargs, z))))
    points = 64
    z = {"s": jnp.full(points, 0.5), "log_mean0": jnp.zeros(points), "beta": jnp.zeros((points, 1))}
    grad(z)[0].block_until_ready()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(100):
            out = grad(z)
        out[0].block_until_ready()
        times.append((time.perf_counter() - started) / 100 / points)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,40,200")
    parser.add_argument("--batched-sizes", default="4,40")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    configure()
    sizes = [int(s) for s in args.sizes.split(",")]
    batched_sizes = [int(s) for s in args.batched_sizes.split(",") if s]
    work = pairs(max(sizes + batched_sizes), args.users)
    options = RunOptions(refits=0)
    sampler = options.fit_config("e", "m").sampler
    fit_stage(work[:2], options)  # loads or compiles the programs these pairs need
    rows = []
    for n in sizes:
        seconds, sampling = fit_stage(work[:n], options)
        rows.append((n, seconds, sampling))
        print(f"fit stage, {n} pairs: {seconds:.1f} s", file=sys.stderr, flush=True)
    print("| pairs | fit stage (s) | per pair (s) | of which sampling (s, summed) | ratio to the smallest |")
    print("|---|---|---|---|---|")
    for n, seconds, sampling in rows:
        print(f"| {n} | {seconds:.1f} | {seconds / n:.2f} | {sampling:.1f} | {seconds / rows[0][1]:.1f} |")
    mean_steps = 6.0
    if batched_sizes:
        print("\n| pairs in one vmapped program | compile (s) | sampling (s) | per pair (s) | "
              "leapfrog steps per draw, mean | most steps in the batch per iteration, mean |")
        print("|---|---|---|---|---|---|")
        for n in batched_sizes:
            compile_s, seconds, mean_steps, max_steps = batched(work[:n], sampler)
            print(f"| {n} | {compile_s:.1f} | {seconds:.1f} | {seconds / n:.2f} | {mean_steps:.1f} | {max_steps:.1f} |",
                  flush=True)
    floor = gradient_floor(work)
    iterations = sampler.num_chains * (sampler.num_warmup + sampler.num_samples)
    print(f"\nOne gradient of the collapsed log density ({args.users:,} users, vectorised over 64 points): "
          f"{floor * 1e6:.1f} us per point. A fit runs {iterations:,} NUTS iterations; at {mean_steps:.1f} leapfrog steps "
          f"per draw that is {floor * iterations * mean_steps:.2f} CPU seconds of gradients per pair at this vectorised "
          "rate (under vmap the likelihood's loop over cells runs until every point's tiers are done, so one point "
          "alone costs less). "
          f"{os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
