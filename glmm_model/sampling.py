"""Running NUTS on either form of the model, returning draws as ArviZ InferenceData.

NumPyro's ``MCMC`` driver re-traces its sampling loop on every ``run``; in one
process fitting many experiments that costs seconds of compilation per fit and
leaks ~1,300 memory mappings per fit until LLVM cannot allocate any more. So the
loop is driven here with NumPyro's functional NUTS kernel (``numpyro.infer.hmc.hmc``):

* one kernel per (model, warmup length, target acceptance, tree depth, mass matrix), built once;
* chains vectorised with ``vmap``, data passed as arguments of the compiled program
  (never baked in), so every experiment with the same padded shapes reuses it;
* sampling advances in fixed chunks of ``CHUNK`` iterations: one compiled program
  serves any number of draws, and a progress bar can update between chunks.

Initial values are drawn uniformly in (-2, 2) on the unconstrained scale, as
NumPyro's default ``init_to_uniform`` does.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache, partial

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy

from .config import FitConfig, SamplerConfig
from .data import ExperimentData
from .model import cell_tiers, collapsed_model, latent_model, prior_arrays

CHUNK = 100
SUMMARY_SITES = ("beta0", "beta", "s")
FIXED_EFFECT_SITES = ("beta", "log_mean0", "s")  # the sampled (unconstrained) fixed-effect sites


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Keep JAX's compiled programs on disk so later processes skip compilation.

    ``path`` defaults to ``$GLMM_AB_JAX_CACHE`` or ``~/.cache/glmm-ab/jax``.
    Every program is cached, however quickly it compiled.
    """
    path = str(path or os.environ.get("GLMM_AB_JAX_CACHE") or os.path.expanduser("~/.cache/glmm-ab/jax"))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclass(frozen=True)
class Posterior:
    """Posterior draws of (beta0, beta, s) with sampler statistics, and what it cost.

    ``idata`` holds ``beta0`` (chain, draw), ``beta`` (chain, draw, variant) and
    ``s`` (chain, draw), plus ``diverging`` and ``energy``. ``r`` holds the latent
    path's per-user draws (draws, users), None on the collapsed path.
    """

    idata: az.InferenceData
    seconds: float
    r: np.ndarray | None = None

    def flat(self, name: str) -> np.ndarray:
        """Draws of one parameter with chains stacked: (draws,) or (draws, variants)."""
        values = self.idata.posterior[name].values
        return values.reshape((-1,) + values.shape[2:])


def _progress(sampler: SamplerConfig) -> bool:
    flag = sampler.progress_bar
    return sys.stderr.isatty() if flag is None else flag


@lru_cache(maxsize=32)
def _kernel(model, num_warmup: int, target_accept: float, max_tree_depth: int, dense_mass):
    """Compiled (init, advance, constrain) functions for one model and sampler setting.

    ``dense_mass``: True, False, or a tuple of site-name tuples (dense blocks).
    """
    dense_mass = list(dense_mass) if isinstance(dense_mass, tuple) else dense_mass
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda *args, **kwargs: partial(potential_energy, model, args, kwargs), algo="NUTS"
    )

    def init(z, rng_key, args, kwargs):
        return init_kernel(
            z, num_warmup, target_accept_prob=target_accept, max_tree_depth=max_tree_depth, dense_mass=dense_mass,
            model_args=args, model_kwargs=kwargs, rng_key=rng_key,
        )

    def advance(state, args, kwargs):
        def step(state, _):
            state = sample_kernel(state, model_args=args, model_kwargs=kwargs)
            return state, (state.z, state.diverging, state.energy, state.num_steps)

        return jax.lax.scan(step, state, None, length=CHUNK)

    def constrain(z, args, kwargs):
        return constrain_fn(model, args, kwargs, z, return_deterministic=True)

    return (
        jax.jit(jax.vmap(init, in_axes=(0, 0, None, None))),
        jax.jit(jax.vmap(advance, in_axes=(0, None, None))),
        jax.jit(jax.vmap(jax.vmap(constrain, in_axes=(0, None, None)), in_axes=(0, None, None))),
    )


def _latent_values(model, *args, **kwargs) -> dict:
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    return {name: site["value"] for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]}


def _initial_values(model, args, kwargs, rng_key, num_chains: int) -> dict:
    """Uniform(-2, 2) on the unconstrained scale for every latent site, per chain.

    Site shapes come from ``jax.eval_shape`` (abstract evaluation): running the
    model eagerly would compile each of its operations on first use, ~1.5 s per process.
    Every site of these models keeps its shape when unconstrained.
    """
    shapes = jax.eval_shape(partial(_latent_values, model), *args, **kwargs)
    keys = jax.random.split(rng_key, max(len(shapes), 1))
    return {
        name: jax.random.uniform(key, (num_chains,) + shape.shape, minval=-2.0, maxval=2.0)
        for key, (name, shape) in zip(keys, sorted(shapes.items()))
    }


def run_nuts(model, args, kwargs, sc: SamplerConfig, progress: bool = False, dense_mass=True):
    """Draws (chains, draws, ...) of every site, and the sampler statistics."""
    init, advance, constrain = _kernel(model, sc.num_warmup, sc.target_accept, sc.max_tree_depth, dense_mass)
    key_init, key_chains = jax.random.split(jax.random.PRNGKey(sc.seed))
    state = init(_initial_values(model, args, kwargs, key_init, sc.num_chains),
                 jax.random.split(key_chains, sc.num_chains), args, kwargs)
    total = sc.num_warmup + sc.num_samples
    chunks = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"NUTS x{sc.num_chains} chains", file=sys.stderr)
    for _ in range(math.ceil(total / CHUNK)):
        state, out = advance(state, args, kwargs)
        chunks.append(out)
        if bar is not None:
            bar.update(min(CHUNK, total - bar.n))
    if bar is not None:
        bar.close()
    z, diverging, energy, num_steps = (
        jax.tree.map(lambda *xs: np.concatenate(xs, axis=1)[:, sc.num_warmup:total], *parts)
        for parts in zip(*chunks)
    )
    draws = {k: np.asarray(v) for k, v in constrain(z, args, kwargs).items()}
    return draws, {"diverging": np.asarray(diverging), "energy": np.asarray(energy), "num_steps": np.asarray(num_steps)}


def sample(data: ExperimentData, config: FitConfig) -> Posterior:
    """Draw from the posterior with NUTS on the configured path."""
    prior = prior_arrays(config.priors, data)
    if config.method == "collapsed":
        tiers = cell_tiers(data)
        model, args, kwargs = collapsed_model, (tiers, prior), {"cv_count": tuple(t.cv_count for t in tiers)}
        dense = config.sampler.dense_mass
    else:
        arm, count, exposure = data.per_user()
        model = latent_model
        args = (jnp.asarray(arm, jnp.int32), jnp.asarray(np.log(exposure)), prior)
        kwargs = {"cv_count": jnp.asarray(count, jnp.float64)}
        # a dense block over the fixed effects; one over every user's r_i would be n x n
        dense = (FIXED_EFFECT_SITES,) if config.sampler.dense_mass else False

    started = time.perf_counter()
    draws, stats = run_nuts(model, args, kwargs, config.sampler, _progress(config.sampler), dense)
    seconds = time.perf_counter() - started

    idata = az.from_dict(
        posterior={name: draws[name] for name in SUMMARY_SITES},
        sample_stats={"diverging": stats["diverging"].astype(bool), "energy": stats["energy"],
                      "n_steps": stats["num_steps"]},
        coords={"variant": list(data.variants[1:])},
        dims={"beta": ["variant"]},
    )
    r = draws["r"].reshape((-1, draws["r"].shape[-1])) if "r" in draws else None
    return Posterior(idata=idata, seconds=seconds, r=r)
