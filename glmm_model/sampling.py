"""Running NUTS on either form of the model; draws come back as plain arrays.

The loop is driven with NumPyro's functional NUTS kernel (``numpyro.infer.hmc.hmc``)
rather than its ``MCMC`` driver, which re-traces its loop on every ``run`` (seconds
per fit, and ~1,300 leaked memory mappings per fit until LLVM cannot allocate more).

One program per (model, input shapes, sampler settings) advances a group of
chains by ``CHUNK`` iterations; its first call also draws the initial values and
initialises the kernel. Chains within a group are vectorised with ``vmap``; groups
run on their own threads (:func:`run_nuts`). The data are arguments (never baked
in), so every experiment with the same padded shapes reuses the program; the
program is exported to disk (:mod:`.programs`), so a new process loads it instead
of tracing NumPyro again, and NumPyro is imported only to build one. Chunks let a
progress bar move and one program serve any number of draws.

Initial values are drawn uniformly in (-2, 2) on the unconstrained scale, as
NumPyro's default ``init_to_uniform`` does.
"""
from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property, partial

import jax
import numpy as np

from . import programs
from .config import FitConfig, SamplerConfig
from .data import ExperimentData
from .model_inputs import cell_tiers, prior_arrays

CHUNK = 100
CHAINS_PER_GROUP = 2
SUMMARY_SITES = ("beta0", "beta", "s")
FIXED_EFFECT_SITES = ("beta", "log_mean0", "s")  # the sampled (unconstrained) fixed-effect sites


@dataclass(frozen=True)
class Posterior:
    """Posterior draws of (beta0, beta, s) with sampler statistics, and what it cost.

    ``draws``: ``beta0`` (chain, draw), ``beta`` (chain, draw, variant) and ``s``
    (chain, draw). ``stats``: ``diverging``, ``energy`` and ``n_steps`` (chain, draw).
    ``variants``: the treatment arms, in the order of ``beta``'s last axis.
    ``r`` holds the latent path's per-user draws (draws, users), None on the collapsed path.
    """

    draws: dict
    stats: dict
    variants: tuple
    seconds: float
    r: np.ndarray | None = None

    def flat(self, name: str) -> np.ndarray:
        """Draws of one parameter with chains stacked: (draws,) or (draws, variants)."""
        values = self.draws[name]
        return values.reshape((-1,) + values.shape[2:])

    @cached_property
    def inference_data(self):
        """The draws as ArviZ ``InferenceData`` (built on first use; ArviZ is imported only here)."""
        import arviz as az

        return az.from_dict(
            posterior={name: self.draws[name] for name in SUMMARY_SITES},
            sample_stats={"diverging": self.stats["diverging"], "energy": self.stats["energy"],
                          "n_steps": self.stats["n_steps"]},
            coords={"variant": list(self.variants)},
            dims={"beta": ["variant"]},
        )


def _progress(sampler: SamplerConfig) -> bool:
    flag = sampler.progress_bar
    return sys.stderr.isatty() if flag is None else flag


def _build_chunk(model_name: str, data_tree, data_leaves, sc: SamplerConfig, dense_mass, sites: tuple):
    """Trace-ready function ``chunk(state, first, seed, group, data) -> (state, outputs)`` and example arguments.

    ``state`` is the flat list of the kernel state's arrays; with ``first`` true it
    is ignored and the group's chains start afresh from ``seed`` and ``group``. ``outputs``: the
    constrained values of ``sites`` per iteration, then divergence, energy and
    leapfrog steps, each (chains, CHUNK, ...).
    """
    from numpyro import handlers
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import constrain_fn, potential_energy

    from . import model as model_module

    model = getattr(model_module, model_name)
    dense_mass = list(dense_mass) if isinstance(dense_mass, tuple) else dense_mass
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda *args, **kwargs: partial(potential_energy, model, args, kwargs), algo="NUTS"
    )

    def latent_values(args, kwargs):
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
        return {name: site["value"] for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]}

    def start(rng_key, args, kwargs):
        # shapes by abstract evaluation; every site of these models keeps its shape when unconstrained
        shapes = jax.eval_shape(latent_values, args, kwargs)
        key_init, key_chains = jax.random.split(rng_key)
        keys = jax.random.split(key_init, max(len(shapes), 1))
        z = {name: jax.random.uniform(key, (sc.num_chains,) + shape.shape, minval=-2.0, maxval=2.0)
             for key, (name, shape) in zip(keys, sorted(shapes.items()))}

        def init_one(z, key):
            return init_kernel(
                z, sc.num_warmup, target_accept_prob=sc.target_accept, max_tree_depth=sc.max_tree_depth,
                dense_mass=dense_mass, model_args=args, model_kwargs=kwargs, rng_key=key,
            )

        return jax.vmap(init_one)(z, jax.random.split(key_chains, sc.num_chains))

    def advance(state, args, kwargs):
        def step(state, _):
            state = sample_kernel(state, model_args=args, model_kwargs=kwargs)
            return state, (state.z, state.diverging, state.energy, state.num_steps)

        return jax.lax.scan(step, state, None, length=CHUNK)

    def constrain(z, args, kwargs):
        values = constrain_fn(model, args, kwargs, z, return_deterministic=True)
        return {name: values[name] for name in sites}

    args0, kwargs0 = jax.tree.unflatten(data_tree, data_leaves)
    state_shape = jax.eval_shape(start, jax.random.PRNGKey(0), args0, kwargs0)
    state_leaves, state_tree = jax.tree.flatten(state_shape)

    def chunk(state_leaves, first, seed, group, data_leaves):
        rng_key = jax.random.fold_in(jax.random.PRNGKey(seed), group)
        args, kwargs = jax.tree.unflatten(data_tree, data_leaves)
        state = jax.tree.unflatten(state_tree, state_leaves)
        state = jax.lax.cond(first, lambda: start(rng_key, args, kwargs), lambda: state)
        state, (z, diverging, energy, num_steps) = jax.vmap(advance, in_axes=(0, None, None))(state, args, kwargs)
        values = jax.vmap(jax.vmap(constrain, in_axes=(0, None, None)), in_axes=(0, None, None))(z, args, kwargs)
        return jax.tree.leaves(state), (values, diverging, energy, num_steps)

    scalar = jax.ShapeDtypeStruct((), np.uint32)
    example = (list(state_leaves), jax.ShapeDtypeStruct((), bool), scalar, scalar, list(data_leaves))
    return chunk, example


def chain_groups(num_chains: int) -> list[int]:
    """Chains per group: groups of ``CHAINS_PER_GROUP``, the last one smaller when they do not divide."""
    full, rest = divmod(num_chains, CHAINS_PER_GROUP)
    return [CHAINS_PER_GROUP] * full + ([rest] if rest else [])


def _run_group(program, group: int, seed: int, data_leaves, total: int, bar) -> list:
    """Every chunk's outputs for one group of chains (runs in its own thread)."""
    # every argument on the device from the first call on: a host array where a device
    # array came before counts as a new input placement and costs a second compilation
    device = jax.devices()[0]
    state, data_leaves, seed, group = jax.device_put(
        ([np.zeros(a.shape, a.dtype) for a in program.arg_avals[0]], data_leaves, np.uint32(seed), np.uint32(group)),
        device,
    )
    chunks = []
    for i in range(math.ceil(total / CHUNK)):
        state, out = program.call(state, np.bool_(i == 0), seed, group, data_leaves)
        chunks.append(jax.device_get(out))
        if bar is not None:
            bar.update(min(CHUNK, total - i * CHUNK))
    return chunks


def run_nuts(model_name: str, args, kwargs, sc: SamplerConfig, progress: bool = False, dense_mass=True,
             sites: tuple = SUMMARY_SITES):
    """Draws (chains, draws, ...) of ``sites``, and the sampler statistics (chains, draws).

    Chains run in groups (:func:`chain_groups`), vectorised within a group, one
    thread per group up to the number of cores: XLA runs a program in the thread
    that calls it, so two groups use two cores. On the article's example two
    groups of two chains on two cores took 0.74 s where four vectorised chains
    took 1.25 s. Group g's chains start from ``fold_in(PRNGKey(seed), g)``, so the
    draws depend on the seed and the number of chains, not on the machine's cores.
    """
    data_leaves, data_tree = jax.tree.flatten((args, kwargs))
    groups = chain_groups(sc.num_chains)

    def program_for(chains: int):
        group_sc = replace(sc, num_chains=chains)
        settings = {"model": model_name, "chunk": CHUNK, "num_chains": chains, "num_warmup": sc.num_warmup,
                    "target_accept": sc.target_accept, "max_tree_depth": sc.max_tree_depth,
                    "dense_mass": dense_mass, "sites": sites}
        return programs.load(
            f"nuts-{model_name}", settings, (args, kwargs),
            lambda: _build_chunk(model_name, data_tree, data_leaves, group_sc, dense_mass, sites),
        )

    group_programs = [program_for(chains) for chains in groups]
    total = sc.num_warmup + sc.num_samples
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * len(groups), desc=f"NUTS x{sc.num_chains} chains", file=sys.stderr)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(len(groups), cores))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nuts") as pool:
            per_group = list(pool.map(
                lambda g: _run_group(group_programs[g], g, sc.seed, data_leaves, total, bar), range(len(groups))
            ))
    finally:
        if bar is not None:
            bar.close()
    # chunks joined along iterations (axis 1), then groups along chains (axis 0)
    by_group = [jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks) for chunks in per_group]
    joined = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0)[:, sc.num_warmup:total], *by_group)
    values, diverging, energy, num_steps = joined
    return values, {"diverging": diverging.astype(bool), "energy": energy, "n_steps": num_steps}


def sample(data: ExperimentData, config: FitConfig) -> Posterior:
    """Draw from the posterior with NUTS on the configured path."""
    prior = prior_arrays(config.priors, data)
    if config.method == "collapsed":
        tiers = cell_tiers(data)
        model, args, kwargs = "collapsed_model", (tiers, prior), {"cv_count": tuple(t.cv_count for t in tiers)}
        dense, sites = config.sampler.dense_mass, SUMMARY_SITES
    else:
        arm, count, exposure = data.per_user()
        model = "latent_model"
        args = (np.asarray(arm, np.int32), np.log(np.asarray(exposure, np.float64)), prior)
        kwargs = {"cv_count": np.asarray(count, np.float64)}
        # a dense block over the fixed effects; one over every user's r_i would be n x n
        dense = (FIXED_EFFECT_SITES,) if config.sampler.dense_mass else False
        sites = SUMMARY_SITES + ("r",)

    started = time.perf_counter()
    draws, stats = run_nuts(model, args, kwargs, config.sampler, _progress(config.sampler), dense, sites)
    seconds = time.perf_counter() - started
    r = draws.pop("r", None)
    return Posterior(
        draws=draws, stats=stats, variants=tuple(data.variants[1:]), seconds=seconds,
        r=None if r is None else r.reshape((-1, r.shape[-1])),
    )
