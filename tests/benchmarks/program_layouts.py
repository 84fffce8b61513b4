"""The first night's cost: sampler programs per layout of the collapsed likelihood, cold and warm.

    python tests/benchmarks/program_layouts.py [--warehouse PATH] [--layouts loop,tiers,loop_two_tiers,flat]

A machine's first night traces and compiles one NUTS program per distinct input shape (once;
later processes load it from disk). On the demo's 9 count and ratio pairs (a warehouse after a
nightly run: ``--warehouse``, else ``glmm-ab demo`` builds one in a temporary folder), each
layout runs in its own process with an empty program cache, 2 chains x (200 + 300):

* **loop** (what the sampler does, since 2026-12-01): the cells in one set of arrays of a
  capacity (512 cells at least, else the next power of 2), ordered by the count tiers of
  ``quadrature.COUNT_TIERS`` (5 tiers of 128/24/12/10/8 nodes when this table was measured; 3 of
  128/24/12 since 2026-12-02, later that day a split rule of 48 nodes for counts 0-2); the likelihood
  walks each tier in steps of a fixed number of cells inside a ``while`` loop whose length follows
  the data, so the program
  depends on the capacity only (:func:`glmm_model.quadrature.cells_log_likelihood`);
* **tiers** (what the sampler did before; defined here, like **flat** below, on symmetric rules of
  the tiers' node counts): each tier's cells in arrays of their
  own, padded to 2^k or 3·2^k (at least 8 cells above the first tier), so each mix of tier sizes
  is a program of its own;
* **loop_two_tiers**: the loop with counts 0-2 on 128 nodes and every other count on 24;
* **flat**: one ragged layout, every cell's nodes in one array (its tier's count of them), the
  per-cell sums by ``segment_sum``: two shapes per program (cells, points) whatever the tiers.

Per layout: the distinct programs built, the first fit of each pair (trace + compile + sampling)
summed, and the best of two later fits summed (warm). Then, for one pair, where a program's
build goes: tracing and lowering NumPyro's NUTS to StableHLO, and XLA's compile (wall and CPU
seconds), with no cells (the sampler alone), the tiers layout and the loop.
"""
from __future__ import annotations

import argparse
import atexit
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYOUTS = ("loop", "tiers", "loop_two_tiers", "flat")
SAMPLER = {"num_chains": 2, "num_warmup": 200, "num_samples": 300}


def scratch(prefix: str) -> str:
    """An empty program cache for this process, removed when it exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count_pairs(warehouse: str):
    """(pair name, ExperimentData, FitConfig) of the warehouse's count and ratio pairs."""
    from flows.options import RunOptions
    from flows.warehouse import open_warehouse
    from glmm_model.data import prepare

    options = RunOptions(segments=False, **SAMPLER)
    for p in open_warehouse(warehouse).load_histograms(options.use_exposure):
        if p.metric_type == "conversion":
            continue
        config = options.fit_config(p.experiment_id, p.metric_id, p.planned_split, p.metric_type, p.tolerated_drop)
        data = prepare(p.histogram, p.control_variant, covariate=config.covariate, max_pre_bins=config.pre_period_bins)
        yield f"{p.experiment_id}/{p.metric_id}", data, config


def _flat_layout():
    """The ragged layout's inputs and model (defined here: the product does not use it)."""
    from typing import NamedTuple

    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    from glmm_model import model as m
    from glmm_model import quadrature as q
    from glmm_model.model_inputs import CovariateCells, _padded_size

    class Flat(NamedTuple):
        arm: np.ndarray
        log_exposure: np.ndarray
        weight: np.ndarray
        cv_count: np.ndarray
        cell: np.ndarray
        x: np.ndarray
        log_wx: np.ndarray
        valid: np.ndarray

    def inputs(data):
        size = _padded_size(data.n_cells, 8)
        cell, x, log_wx = [], [], []
        for mask, rule in q.tier_masks(data.cell_count):
            nodes = len(rule.x)
            rule_x, rule_w = q.hermite_rule(nodes)  # symmetric rules of the tiers' node counts (layouts defined here)
            for c in np.flatnonzero(mask):
                cell.append(np.full(nodes, c))
                x.append(rule_x)
                log_wx.append(rule_w)
        cell, x, log_wx = np.concatenate(cell), np.concatenate(x), np.concatenate(log_wx)
        order = np.argsort(cell, kind="stable")
        n_points = len(cell)
        pad = _padded_size(n_points, 64) - n_points

        def cells(values, dtype):
            return np.concatenate([values, np.zeros(size - data.n_cells)]).astype(dtype)

        flat = Flat(arm=cells(data.cell_arm, np.int32), log_exposure=cells(np.log(data.cell_exposure), np.float64),
                    weight=cells(data.cell_users, np.float64), cv_count=cells(data.cell_count, np.float64),
                    cell=np.concatenate([cell[order], np.full(pad, size - 1)]).astype(np.int32),
                    x=np.concatenate([x[order], np.zeros(pad)]), log_wx=np.concatenate([log_wx[order], np.zeros(pad)]),
                    valid=np.concatenate([np.ones(n_points), np.zeros(pad)]).astype(bool))
        covariate = None
        if data.has_covariate:
            covariate = CovariateCells(pre=cells(data.cell_pre, np.float64), no_history=cells(data.cell_no_history, np.float64))
        return flat, covariate

    def log_marginal(y, eta, s, f):
        r_star, sigma_hat = (jax.lax.stop_gradient(v) for v in q.laplace_mode(y, eta, s))
        shift = jax.lax.stop_gradient(q._log_joint_kernel(r_star, y, eta, s, jnp))  # the largest term, about
        scale = np.sqrt(2.0) * sigma_hat
        c = f.cell
        terms = f.log_wx + q._log_joint_kernel(r_star[c] + scale[c] * f.x, y[c], eta[c], s, jnp) - shift[c]
        sums = jax.ops.segment_sum(jnp.where(f.valid, jnp.exp(terms), 0.0), c, num_segments=y.shape[0],
                                   indices_are_sorted=True)
        return jnp.log(sums) + shift + jnp.log(scale / s) - jax.scipy.special.gammaln(y + 1.0) - q.HALF_LOG_2PI

    def flat_model(f, prior, cv_count=None, covariate=None):
        beta0, beta_full, s = m.fixed_effects(prior)
        eta = beta0 + beta_full[f.arm] + f.log_exposure
        if covariate is not None:
            gamma = numpyro.sample("gamma", dist.Normal(0.0, m.GAMMA_SCALE))
            delta = numpyro.sample("delta", dist.Normal(0.0, m.DELTA_SCALE))
            eta = eta + gamma * covariate.pre + delta * covariate.no_history
        with numpyro.plate("cells", f.arm.shape[0]):
            numpyro.factor("cv_count", q.cell_log_likelihood(log_marginal(cv_count, eta, s, f), f.weight))

    m.flat_model = flat_model
    return inputs


def _tiers_layout():
    """The layout the sampler used before the loop (defined here: the product no longer uses it)."""
    from typing import NamedTuple

    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    from glmm_model import model as m
    from glmm_model import quadrature as q
    from glmm_model.model_inputs import CovariateCells, _padded_size

    class CellTier(NamedTuple):
        arm: np.ndarray
        log_exposure: np.ndarray
        weight: np.ndarray
        cv_count: np.ndarray
        x: np.ndarray
        log_wx: np.ndarray

    def inputs(data):
        tiers, covariates = [], []
        for t, (mask, rule) in enumerate(q.tier_masks(data.cell_count)):
            nodes = len(rule.x)
            n = int(mask.sum())
            pad = _padded_size(n, 8 if t else 1) - n

            def padded(values, dtype):
                return np.concatenate([values[mask], np.zeros(pad)]).astype(dtype)

            x, log_wx = q.hermite_rule(nodes)
            tiers.append(CellTier(arm=padded(data.cell_arm, np.int32), log_exposure=padded(np.log(data.cell_exposure), float),
                                  weight=padded(data.cell_users, float), cv_count=padded(data.cell_count, float),
                                  x=x, log_wx=log_wx))
            if data.has_covariate:
                covariates.append(CovariateCells(pre=padded(data.cell_pre, float),
                                                 no_history=padded(data.cell_no_history, float)))
        return tuple(tiers), tuple(covariates) if covariates else None

    def tiers_model(tiers, prior, cv_count=None, covariate=None):
        beta0, beta_full, s = m.fixed_effects(prior)
        if covariate is not None:
            gamma = numpyro.sample("gamma", dist.Normal(0.0, m.GAMMA_SCALE))
            delta = numpyro.sample("delta", dist.Normal(0.0, m.DELTA_SCALE))
        for t, tier in enumerate(tiers):
            eta = beta0 + beta_full[tier.arm] + tier.log_exposure
            if covariate is not None:
                eta = eta + gamma * covariate[t].pre + delta * covariate[t].no_history
            with numpyro.plate(f"cells_{t}", tier.arm.shape[0]):
                d = m.PoissonLogNormal(eta, s, tier.x, tier.log_wx)
                numpyro.factor(f"cv_count_{t}", q.cell_log_likelihood(d.log_prob(cv_count[t]), tier.weight))

    m.tiers_model = tiers_model
    return inputs


def _layout_args(layout: str, data, config):
    """(model name, args, kwargs, sites, mass_dim) of one pair on a layout defined here."""
    from glmm_model import sampling
    from glmm_model.model_inputs import prior_arrays

    cells, covariate = (_flat_layout() if layout == "flat" else _tiers_layout())(data)
    kwargs = {"cv_count": cells.cv_count if layout == "flat" else tuple(t.cv_count for t in cells)}
    sites, mass_dim = sampling.SUMMARY_SITES, data.num_arms + 1
    if covariate is not None:
        kwargs["covariate"] = covariate
        sites, mass_dim = sites + sampling.COVARIATE_SITES, mass_dim + 2
    return f"{layout}_model", (cells, prior_arrays(config.priors, data, config.metric_type)), kwargs, sites, mass_dim


def one_layout(layout: str, warehouse: str) -> dict:
    """Fit the pairs on ``layout`` in this process (its cache empty); returns the row."""
    from glmm_model import configure

    cache = scratch(f"glmm-ab-layout-{layout}-")
    configure(cache)
    from glmm_model import quadrature, sampling

    if layout == "loop_two_tiers":
        quadrature.COUNT_TIERS = ((3, 128, False), (None, 24, False))
    first, warm = 0.0, 0.0
    for _, data, config in _count_pairs(warehouse):
        if layout.startswith("loop"):
            def fit_once():
                return sampling.sample(data, config)
        else:
            name, args, kwargs, sites, mass_dim = _layout_args(layout, data, config)

            def fit_once():
                return sampling.run_nuts(name, args, kwargs, config.sampler, False, True, sites, mass_dim=mass_dim)
        started = time.perf_counter()
        fit_once()
        first += time.perf_counter() - started
        times = []
        for _ in range(2):
            started = time.perf_counter()
            fit_once()
            times.append(time.perf_counter() - started)
        warm += min(times)
    programs = len(list((Path(cache) / "programs").glob("*.jax")))  # beside each: its .json and .lock
    return {"layout": layout, "programs": programs, "first": first, "warm": warm}


def build_breakdown(warehouse: str, layout: str) -> dict:
    """Trace + lower and compile of one pair's program on ``layout`` ("none": the sampler and the
    priors alone), no caches."""
    from dataclasses import replace

    import jax

    from glmm_model import configure

    configure(scratch("glmm-ab-layout-breakdown-"))
    jax.config.update("jax_enable_compilation_cache", False)
    from glmm_model import sampling
    from glmm_model.model_inputs import cells, prior_arrays

    name, data, config = next(p for p in _count_pairs(warehouse) if p[0] == "pricing_copy/purchases")
    if layout == "loop":
        histogram = cells(data)
        model, args, kwargs = "collapsed_model", (histogram, prior_arrays(config.priors, data)), {"cv_count": histogram.cv_count}
    elif layout == "tiers":
        model, args, kwargs, _, _ = _layout_args("tiers", data, config)
    else:  # the tiers model with no tiers: the sampler and the priors
        model, args, kwargs, _, _ = _layout_args("tiers", data, config)
        args, kwargs = ((), args[1]), {"cv_count": ()}
    leaves, tree = jax.tree.flatten((args, kwargs))
    started, cpu = time.perf_counter(), _cpu()
    function, example = sampling._build_chunk(model, tree, leaves, replace(config.sampler, num_chains=2),
                                              True, sampling.SUMMARY_SITES)
    lowered = jax.jit(function).lower(*example)
    trace = (time.perf_counter() - started, _cpu() - cpu)
    started, cpu = time.perf_counter(), _cpu()
    lowered.compile()
    compile_ = (time.perf_counter() - started, _cpu() - cpu)
    return {"layout": layout, "hlo_lines": lowered.as_text().count("\n"), "trace": trace, "compile": compile_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default=None, help="a demo warehouse after a nightly run")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_layout(args.one, args.warehouse)))
        return
    if args.breakdown is not None:
        print(json.dumps(build_breakdown(args.warehouse, args.breakdown)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = args.warehouse
        if warehouse is None:
            warehouse = str(Path(tmp) / "demo.duckdb")
            subprocess.run([str(Path(sys.executable).parent / "glmm-ab"), "demo", "--warehouse", warehouse,
                            "--chains", "2", "--warmup", "200", "--samples", "300", "--no-segments", "--no-publish"],
                           check=True, capture_output=True)

        def child(*flags) -> dict:
            out = subprocess.run([sys.executable, __file__, "--warehouse", warehouse, *flags],
                                 check=True, capture_output=True, text=True)
            return json.loads(out.stdout.strip().splitlines()[-1])

        rows = [child("--one", layout) for layout in args.layouts.split(",")]
        breakdown = [child("--breakdown", layout) for layout in ("none", "tiers", "loop")]
    print("| layout | programs | first fits, summed (s) | warm fits, summed (s) | first / warm |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['programs']} | {r['first']:.1f} | {r['warm']:.1f} | {r['first'] / r['warm']:.1f} |")
    print("\n| cells in the program | StableHLO lines | trace + lower, wall (s) | cpu (s) "
          "| XLA compile, wall (s) | cpu (s) |")
    print("|---|---|---|---|---|---|")
    for b in breakdown:
        print(f"| {b['layout']} | {b['hlo_lines']:,} | {b['trace'][0]:.1f} | {b['trace'][1]:.1f} "
              f"| {b['compile'][0]:.1f} | {b['compile'][1]:.1f} |")
    print(f"\nThe demo's 9 count and ratio pairs, {SAMPLER['num_chains']} chains x ({SAMPLER['num_warmup']} + "
          f"{SAMPLER['num_samples']}), each layout in its own process with an empty cache; the breakdown is "
          "pricing_copy/purchases with the compilation cache off.")


if __name__ == "__main__":
    main()
