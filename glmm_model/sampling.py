"""Running NUTS on either form of the model, returning draws as ArviZ InferenceData.

Chains are vectorised (one compiled program for all of them) and model arguments
are passed to the compiled program rather than baked into it (``jit_model_args``),
so a second experiment with the same padded shapes reuses the compilation.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from .config import FitConfig
from .data import ExperimentData
from .model import cell_tiers, collapsed_model, latent_model, prior_arrays


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


def _progress(config: FitConfig) -> bool:
    flag = config.sampler.progress_bar
    return sys.stderr.isatty() if flag is None else flag


def sample(data: ExperimentData, config: FitConfig) -> Posterior:
    """Draw from the posterior with NUTS on the configured path."""
    sc = config.sampler
    prior = prior_arrays(config.priors, data)
    if config.method == "collapsed":
        tiers = cell_tiers(data)
        model = collapsed_model
        args = (tiers, prior)
        kwargs = {"cv_count": tuple(t.cv_count for t in tiers)}
    else:
        arm, count, exposure = data.per_user()
        model = latent_model
        args = (jnp.asarray(arm, jnp.int32), jnp.asarray(np.log(exposure)), prior)
        kwargs = {"cv_count": jnp.asarray(count, jnp.float64)}

    kernel = NUTS(model, target_accept_prob=sc.target_accept, max_tree_depth=sc.max_tree_depth)
    mcmc = MCMC(
        kernel,
        num_warmup=sc.num_warmup,
        num_samples=sc.num_samples,
        num_chains=sc.num_chains,
        chain_method="vectorized",
        progress_bar=_progress(config),
        jit_model_args=True,
    )
    started = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(sc.seed), *args, extra_fields=("diverging", "energy"), **kwargs)
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    seconds = time.perf_counter() - started

    treatments = list(data.variants[1:])
    idata = az.from_dict(
        posterior={"beta0": draws["beta0"], "beta": draws["beta"], "s": draws["s"]},
        sample_stats={"diverging": extra["diverging"].astype(bool), "energy": extra["energy"]},
        coords={"variant": treatments},
        dims={"beta": ["variant"]},
    )
    r = None
    if "r" in draws:
        r = draws["r"].reshape((-1, draws["r"].shape[-1]))
    return Posterior(idata=idata, seconds=seconds, r=r)
