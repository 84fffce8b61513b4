"""The model's inputs as arrays: histogram cells split by quadrature tier, and the resolved priors.

Kept apart from :mod:`.model` so that a process whose sampler program is already
exported (:mod:`.programs`) builds its inputs without importing NumPyro.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import quadrature as q
from .config import Priors
from .data import ExperimentData


class PriorArrays(NamedTuple):
    """Prior hyper-parameters as arrays; ``beta_scale`` has one entry per treatment arm."""

    beta0_loc: jnp.ndarray
    beta0_scale: jnp.ndarray
    beta_scale: jnp.ndarray
    s_rate: jnp.ndarray


class CellTier(NamedTuple):
    """Histogram cells that share one quadrature rule (nodes ``x``, log weights ``log_wx``)."""

    arm: jnp.ndarray
    log_exposure: jnp.ndarray
    weight: jnp.ndarray
    cv_count: jnp.ndarray
    x: jnp.ndarray
    log_wx: jnp.ndarray


def prior_arrays(priors: Priors, data: ExperimentData) -> PriorArrays:
    """Resolve the priors for this data: ``beta0_loc=None`` centres on the pooled log rate."""
    if priors.beta0_loc is None:
        total = float((data.cell_users * data.cell_count).sum())
        exposure = float((data.cell_users * data.cell_exposure).sum())
        loc = np.log((total + 0.5) / exposure)
    else:
        loc = priors.beta0_loc
    return PriorArrays(
        beta0_loc=jnp.asarray(loc, jnp.float64),
        beta0_scale=jnp.asarray(priors.beta0_scale, jnp.float64),
        beta_scale=jnp.full((data.num_arms - 1,), priors.beta_scale, jnp.float64),
        s_rate=jnp.asarray(priors.s_rate, jnp.float64),
    )


def _padded_size(n: int) -> int:
    """Smallest size >= n of the form 2^k or 3 * 2^k: few distinct shapes, at most 1.5x padding."""
    n = max(int(n), 1)
    power = 1 << (n - 1).bit_length()
    three = 3 * power // 4
    return three if three >= n else power


def cell_tiers(data: ExperimentData) -> tuple[CellTier, ...]:
    """Split the cells into count tiers and pad each to a fixed size (weight 0)."""
    tiers = []
    for mask, n_nodes in q.tier_masks(data.cell_count):
        n = int(mask.sum())
        size = _padded_size(max(n, 1))
        pad = size - n

        def padded(values, fill, dtype):
            return jnp.asarray(np.concatenate([values[mask], np.full(pad, fill)]).astype(dtype))

        x, log_wx = q.hermite_rule(n_nodes)
        tiers.append(
            CellTier(
                arm=padded(data.cell_arm, 0, np.int32),
                log_exposure=padded(np.log(data.cell_exposure), 0.0, np.float64),
                weight=padded(data.cell_users.astype(np.float64), 0.0, np.float64),
                cv_count=padded(data.cell_count.astype(np.float64), 0.0, np.float64),
                x=jnp.asarray(x),
                log_wx=jnp.asarray(log_wx),
            )
        )
    return tuple(tiers)
