"""Running NUTS on either form of the model; draws come back as plain arrays.

The loop is driven with NumPyro's functional NUTS kernel (``numpyro.infer.hmc.hmc``)
rather than its ``MCMC`` driver, which re-traces its loop on every ``run`` (seconds
per fit, and ~1,300 leaked memory mappings per fit until LLVM cannot allocate more).

One program per (model, input shapes, chains per group, tree depth) advances a group of
chains by ``CHUNK`` iterations; its first call also draws the initial values and
initialises the kernel. Chains within a group are vectorised with ``vmap``; groups
run on their own threads (:func:`run_nuts`). The data are arguments (never baked
in), so every experiment with the same padded shapes reuses the program; the
program is exported to disk (:mod:`.programs`), so a new process loads it instead
of tracing NumPyro again, and NumPyro is imported only to build one. Chunks let a
progress bar move and one program serve any number of draws.

Initial values are drawn uniformly in (-2, 2) on the unconstrained scale, as
NumPyro's default ``init_to_uniform`` does.

Sampling can be bounded in time (``SamplerConfig.time_limit_s``) and cancelled from another thread
(:func:`cancel_running`): both are checked between chunks, so a fit stops within
one chunk. The fit's caller waits by polling, so a time limit is kept even if
an XLA call never returns; the other group threads then finish their current chunk.
"""
from __future__ import annotations

import math
import os
import sys
import time
import threading
from dataclasses import dataclass, replace
from functools import cached_property

import jax
import numpy as np

from . import adaptation, programs
from .config import FitConfig, SamplerConfig
from .data import ExperimentData
from .model_inputs import cells as histogram_cells, conversion_cells, covariate_cells, prior_arrays

CHUNK = 100
CHAINS_PER_GROUP = 2
# Chains are vectorised in pairs only while the dense mass matrix is this small. jaxlib 0.10
# splits a *batched* LAPACK call (batch = the chains of a group) over XLA's intra-op pool and
# waits for the pieces inside a pool thread; two groups doing so at once on a 2-thread pool
# waited for each other forever (a 200-arm experiment: Cholesky of 201 x 201, batch 2). With
# one chain per group every LAPACK call has batch 1 and runs inline, whatever its size. A batch
# of 2 splits from 47 dimensions on (triangular solves; Cholesky from 67), far above this bound,
# which is where pairs stop paying: sampling took 3.4 s in pairs vs 4.4 s single at 10
# dimensions (9 arms), 17.8 s vs 12.8 s at 21 (20 arms).
MAX_VECTORISED_DIM = 16
POLL_SECONDS = 0.1
# The first chunk of draws also compiles the program (~10 s for a shape new to the machine): it gets
# this much on top of the time limit, which then counts from the moment a first chunk came back.
FIRST_CHUNK_ALLOWANCE_S = 120.0


class FitTimeout(RuntimeError):
    """Sampling ran past its deadline and was stopped (no result)."""


class FitCancelled(RuntimeError):
    """Sampling was cancelled by :func:`cancel_running` (a run being stopped)."""


_generation = 0  # bumped by cancel_running(); a fit started under an older value stops


def cancel_running() -> None:
    """Stop every fit sampling in this process now (within one chunk); later fits run as usual."""
    global _generation
    _generation += 1


SUMMARY_SITES = ("beta0", "beta", "s")
COVARIATE_SITES = ("gamma", "delta")  # the pre-period covariate's coefficients
CONVERSION_SITES = ("beta0", "beta")  # the conversion model has no per-user spread
FIXED_EFFECT_SITES = ("beta", "log_mean0", "s")  # the sampled (unconstrained) fixed-effect sites


@dataclass(frozen=True)
class Posterior:
    """Posterior draws of (beta0, beta, s) with sampler statistics, and what it cost (a conversion
    metric: beta0 and beta, on the log-odds scale).

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
            posterior={name: self.draws[name] for name in SUMMARY_SITES + COVARIATE_SITES if name in self.draws},
            sample_stats={"diverging": self.stats["diverging"], "energy": self.stats["energy"],
                          "n_steps": self.stats["n_steps"]},
            coords={"variant": list(self.variants)},
            dims={"beta": ["variant"]},
        )


def _progress(sampler: SamplerConfig) -> bool:
    flag = sampler.progress_bar
    return sys.stderr.isatty() if flag is None else flag


def _build_chunk(model_name: str, data_tree, data_leaves, sc: SamplerConfig, dense_mass, sites: tuple):
    """Trace-ready function ``chunk(state, first, seed, group, warmup, data) -> (state, outputs)`` and example arguments.

    ``state`` is the flat list of the kernel state's arrays; with ``first`` true it
    is ignored and the group's chains start afresh from ``seed`` and ``group``. ``warmup``:
    :class:`.adaptation.WarmupInputs`, the warmup's length and target acceptance, inputs
    rather than constants, so one program serves every warmup and every refit. ``outputs``: the
    constrained values of ``sites`` per iteration, then divergence, energy and
    leapfrog steps, each (chains, CHUNK, ...).
    """
    from numpyro import handlers
    from numpyro.infer.hmc import hmc
    from numpyro.infer.hmc_util import IntegratorState
    from numpyro.infer.util import constrain_fn, potential_energy
    from numpyro.util import cond, identity

    from . import model as model_module

    model = getattr(model_module, model_name)
    dense_mass = list(dense_mass) if isinstance(dense_mass, tuple) else dense_mass
    # The potential jitted, so the model is traced once and each later use (the initial step size, the
    # trajectories) reuses its trace: building a program took ~13% less time, the same draws bit for bit.
    potential = jax.jit(lambda z, args, kwargs: potential_energy(model, args, kwargs, z))
    # NumPyro's NUTS kernel with no warmup of its own: the adaptation is applied after each of its
    # transitions, for as many iterations as the warmup input says (adaptation.py)
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda *args, **kwargs: (lambda z: potential(z, args, kwargs)), algo="NUTS"
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
                z, 0, max_tree_depth=sc.max_tree_depth, dense_mass=dense_mass, model_args=args, model_kwargs=kwargs,
                rng_key=key,
            )

        return jax.vmap(init_one)(z, jax.random.split(key_chains, sc.num_chains))

    def advance(state, warmup, args, kwargs):
        adapt = adaptation.update_fn(warmup, dense_mass)

        def step(state, _):
            new = sample_kernel(state, model_args=args, model_kwargs=kwargs)
            z_info = IntegratorState(new.z, None, new.potential_energy, new.z_grad)
            adapt_state = cond(state.i < warmup.num_warmup, (state.i, new.accept_prob, z_info, state.adapt_state),
                               lambda a: adapt(*a), state.adapt_state, identity)
            new = new._replace(adapt_state=adapt_state)
            return new, (new.z, new.diverging, new.energy, new.num_steps)

        return jax.lax.scan(step, state, None, length=CHUNK)

    def constrain(z, args, kwargs):
        values = constrain_fn(model, args, kwargs, z, return_deterministic=True)
        return {name: values[name] for name in sites}

    # jitted, so it is traced once: here for the state's shapes, then reused inside the chunk
    start = jax.jit(start)
    args0, kwargs0 = jax.tree.unflatten(data_tree, data_leaves)
    state_shape = jax.eval_shape(start, jax.random.PRNGKey(0), args0, kwargs0)
    state_leaves, state_tree = jax.tree.flatten(state_shape)

    def chunk(state_leaves, first, seed, group, warmup, data_leaves):
        rng_key = jax.random.fold_in(jax.random.PRNGKey(seed), group)
        args, kwargs = jax.tree.unflatten(data_tree, data_leaves)
        state = jax.tree.unflatten(state_tree, state_leaves)
        warmup = adaptation.WarmupInputs(*warmup)
        state = jax.lax.cond(first, lambda: start(rng_key, args, kwargs), lambda: state)
        state, (z, diverging, energy, num_steps) = jax.vmap(advance, in_axes=(0, None, None, None))(
            state, warmup, args, kwargs)
        values = jax.vmap(jax.vmap(constrain, in_axes=(0, None, None)), in_axes=(0, None, None))(z, args, kwargs)
        return jax.tree.leaves(state), (values, diverging, energy, num_steps)

    scalar = jax.ShapeDtypeStruct((), np.uint32)
    warmup = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in adaptation.warmup_inputs(0, 0.8)]
    example = (list(state_leaves), jax.ShapeDtypeStruct((), bool), scalar, scalar, warmup, list(data_leaves))
    return chunk, example


def chain_groups(num_chains: int, mass_dim: int = 0) -> list[int]:
    """Chains per group: pairs (the last one smaller when they do not divide) while the dense mass
    matrix has at most ``MAX_VECTORISED_DIM`` dimensions, else one chain per group."""
    per_group = CHAINS_PER_GROUP if mass_dim <= MAX_VECTORISED_DIM else 1
    full, rest = divmod(num_chains, per_group)
    return [per_group] * full + ([rest] if rest else [])


class _Stop:
    """Why the group threads should stop between chunks: a deadline passed or the fit was cancelled."""

    def __init__(self, limit: float | None):
        self.limit, self.deadline, self.generation, self.reason = limit, None, _generation, None

    def start(self) -> None:
        """Sampling starts: the first chunk may also compile."""
        if self.limit:
            self.deadline = time.monotonic() + self.limit + FIRST_CHUNK_ALLOWANCE_S

    def first_chunk_done(self) -> None:
        if self.limit:
            self.deadline = min(self.deadline, time.monotonic() + self.limit)

    def check(self) -> None:
        if self.reason is None and _generation != self.generation:
            self.reason = FitCancelled("the fit was cancelled")
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = FitTimeout("sampling ran past the fit's time limit")
        if self.reason is not None:
            raise self.reason


def _run_group(program, group: int, seed: int, warmup, data_leaves, total: int, bar, stop: _Stop) -> list:
    """Every chunk's outputs for one group of chains (runs in its own thread)."""
    # every argument on the device from the first call on: a host array where a device
    # array came before counts as a new input placement and costs a second compilation
    device = jax.devices()[0]
    state, warmup, data_leaves, seed, group = jax.device_put(
        ([np.zeros(a.shape, a.dtype) for a in program.arg_avals[0]], list(warmup), data_leaves, np.uint32(seed),
         np.uint32(group)),
        device,
    )
    chunks = []
    for i in range(math.ceil(total / CHUNK)):
        stop.check()
        state, out = program.call(state, np.bool_(i == 0), seed, group, warmup, data_leaves)
        chunks.append(jax.device_get(out))
        if i == 0:
            stop.first_chunk_done()
        if bar is not None:
            bar.update(min(CHUNK, total - i * CHUNK))
    return chunks


def _in_threads(work, n: int, workers: int, stop: _Stop) -> list:
    """``[work(0), ..., work(n - 1)]`` on ``workers`` daemon threads. The caller polls, so a deadline
    or a cancel ends the wait even while a thread is inside a call that does not return.

    On a stop or an error the other threads finish the chunk they are in (they check ``stop``
    between chunks) before this returns: a thread still inside XLA when the interpreter exits
    aborts the process. One that does not come back within ``FIRST_CHUNK_ALLOWANCE_S`` is left.
    """
    results, errors, pending = [None] * n, [], list(range(n))
    lock, finished = threading.Lock(), threading.Semaphore(0)

    def worker():
        while True:
            with lock:
                if not pending or errors:
                    return
                i = pending.pop(0)
            try:
                results[i] = work(i)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with lock:
                    errors.append(exc)
            finally:
                finished.release()

    threads = [threading.Thread(target=worker, name=f"nuts_{k}", daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    done, failure = 0, None
    while done < n and failure is None:
        if finished.acquire(timeout=POLL_SECONDS):
            done += 1
            failure = errors[0] if errors else None
        else:
            try:
                stop.check()
            except (FitTimeout, FitCancelled) as exc:
                failure = exc
    if failure is not None:
        with lock:
            pending.clear()
        stop.reason = stop.reason or failure  # the others stop at their next chunk
        give_up = time.monotonic() + FIRST_CHUNK_ALLOWANCE_S
        for thread in threads:
            thread.join(timeout=max(0.0, give_up - time.monotonic()))
        raise failure
    return results


def run_nuts(model_name: str, args, kwargs, sc: SamplerConfig, progress: bool = False, dense_mass=True,
             sites: tuple = SUMMARY_SITES, mass_dim: int = 0):
    """Draws (chains, draws, ...) of ``sites``, and the sampler statistics (chains, draws).

    Chains run in groups (:func:`chain_groups`), vectorised within a group, one
    thread per group up to the number of cores: XLA runs a program in the thread
    that calls it, so two groups use two cores. On the article's example two
    groups of two chains on two cores took 0.74 s where four vectorised chains
    took 1.25 s. Group g's chains start from ``fold_in(PRNGKey(seed), g)``, so the
    draws depend on the seed, the number of chains and ``mass_dim`` (the dense mass
    matrix's size, which sets the grouping), not on the machine's cores.
    Sampling still running ``sc.time_limit_s`` after its first chunk of draws came back
    (that chunk, which also compiles, may take ``FIRST_CHUNK_ALLOWANCE_S`` more) stops
    with :class:`FitTimeout`.
    """
    stop = _Stop(sc.time_limit_s)  # a cancel from now on counts
    data_leaves, data_tree = jax.tree.flatten((args, kwargs))
    groups = chain_groups(sc.num_chains, mass_dim)

    def program_for(chains: int):
        group_sc = replace(sc, num_chains=chains)
        # warmup and target acceptance are inputs (adaptation.py): one program serves every warmup and refit
        settings = {"model": model_name, "chunk": CHUNK, "num_chains": chains, "max_tree_depth": sc.max_tree_depth,
                    "dense_mass": dense_mass, "sites": sites}
        return programs.load(
            f"nuts-{model_name}", settings, (args, kwargs),
            lambda: _build_chunk(model_name, data_tree, data_leaves, group_sc, dense_mass, sites),
        )

    group_programs = [program_for(chains) for chains in groups]
    warmup = adaptation.warmup_inputs(sc.num_warmup, sc.target_accept)
    stop.start()
    total = sc.num_warmup + sc.num_samples
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total * len(groups), desc=f"NUTS x{sc.num_chains} chains", file=sys.stderr)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(len(groups), cores))
    try:
        per_group = _in_threads(
            lambda g: _run_group(group_programs[g], g, sc.seed, warmup, data_leaves, total, bar, stop), len(groups), workers, stop
        )
    finally:
        if bar is not None:
            bar.close()
    # chunks joined along iterations (axis 1), then groups along chains (axis 0)
    by_group = [jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks) for chunks in per_group]
    joined = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0)[:, sc.num_warmup:total], *by_group)
    values, diverging, energy, num_steps = joined
    return values, {"diverging": diverging.astype(bool), "energy": energy, "n_steps": num_steps}


def sample(data: ExperimentData, config: FitConfig) -> Posterior:
    """Draw from the posterior with NUTS on the configured path (a conversion metric: its own model)."""
    prior = prior_arrays(config.priors, data, config.metric_type)
    mass_dim = data.num_arms + 1 if config.sampler.dense_mass else 0  # beta per treatment, log_mean0 and s
    if config.metric_type == "conversion":
        cells = conversion_cells(data)
        model, args, kwargs = "conversion_model", (cells, prior), {"cv_count": cells.converted}
        dense, sites = config.sampler.dense_mass, CONVERSION_SITES
        mass_dim = data.num_arms if config.sampler.dense_mass else 0  # beta0 and beta per treatment
    elif config.method == "collapsed":
        histogram = histogram_cells(data)
        model, args, kwargs = "collapsed_model", (histogram, prior), {"cv_count": histogram.cv_count}
        dense, sites = config.sampler.dense_mass, SUMMARY_SITES
        if data.has_covariate:
            kwargs["covariate"] = covariate_cells(data)
            sites = SUMMARY_SITES + COVARIATE_SITES
            mass_dim += 2 if config.sampler.dense_mass else 0
    else:
        if data.has_covariate:
            raise ValueError("the pre-period covariate is fitted on the collapsed path only: use method "
                             "'collapsed', or fit without the covariate")
        arm, count, exposure = data.per_user()
        model = "latent_model"
        args = (np.asarray(arm, np.int32), np.log(np.asarray(exposure, np.float64)), prior)
        kwargs = {"cv_count": np.asarray(count, np.float64)}
        # a dense block over the fixed effects; one over every user's r_i would be n x n
        dense = (FIXED_EFFECT_SITES,) if config.sampler.dense_mass else False
        sites = SUMMARY_SITES + ("r",)

    started = time.perf_counter()
    draws, stats = run_nuts(model, args, kwargs, config.sampler, _progress(config.sampler), dense, sites,
                            mass_dim=mass_dim)
    seconds = time.perf_counter() - started
    r = draws.pop("r", None)
    return Posterior(
        draws=draws, stats=stats, variants=tuple(data.variants[1:]), seconds=seconds,
        r=None if r is None else r.reshape((-1, r.shape[-1])),
    )
