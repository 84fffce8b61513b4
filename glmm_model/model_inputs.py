"""The model's inputs as arrays: histogram cells split by quadrature tier, and the resolved priors.

Kept apart from :mod:`.model` so that a process whose sampler program is already
exported (:mod:`.programs`) builds its inputs without importing NumPyro. They are
numpy arrays: the sampler puts them on the device in one transfer, where building
each as a JAX array ran (and looked up in the compilation cache) one small program
per array.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import quadrature as q
from .config import Priors
from .data import ExperimentData


class PriorArrays(NamedTuple):
    """Prior hyper-parameters as arrays; ``beta_scale`` has one entry per treatment arm."""

    beta0_loc: np.ndarray
    beta0_scale: np.ndarray
    beta_scale: np.ndarray
    s_rate: np.ndarray


class CellTier(NamedTuple):
    """Histogram cells that share one quadrature rule (nodes ``x``, log weights ``log_wx``)."""

    arm: np.ndarray
    log_exposure: np.ndarray
    weight: np.ndarray
    cv_count: np.ndarray
    x: np.ndarray
    log_wx: np.ndarray


GAMMA_SCALE, DELTA_SCALE = 1.0, 2.5  # priors of the pre-period covariate's coefficients (see .model)
# the segment models' priors: a segment's level around beta0 (Normal sd), the effect spread (half-normal)
SEGMENT_LEVEL_SCALE, EFFECT_SPREAD_SCALE = 1.0, 0.25


def segment_effect_variance(data: ExperimentData, segment: np.ndarray, n_segments: int) -> np.ndarray:
    """Each segment x treatment's squared standard error of its log rate ratio (K x T), from the
    cells' means and variances (at least Poisson's); inf where an arm has no users or no events.
    :func:`.model.segment_effects` centres a segment's effect by it."""
    out = np.zeros((n_segments, data.num_arms - 1))
    for k in range(n_segments):
        var_log_mean = np.full(data.num_arms, np.inf)
        for g in range(data.num_arms):
            mask = (segment == k) & (data.cell_arm == g)
            n = float(data.cell_users[mask].sum())
            if n < 2:
                continue
            rate = data.cell_count[mask] / data.cell_exposure[mask]
            mean = float(np.average(rate, weights=data.cell_users[mask]))
            if mean > 0:
                var = float(np.average((rate - mean) ** 2, weights=data.cell_users[mask]))
                var_log_mean[g] = max(var, mean) / (n * mean * mean)
        out[k] = var_log_mean[0] + var_log_mean[1:]
    return out


class SegmentTier(NamedTuple):
    """The segment (0-based index) of one tier's cells, and each segment x treatment's squared
    standard error of its effect (K x T, the same in every tier; see :func:`.model.segment_effects`)."""

    segment: np.ndarray
    effect_variance: np.ndarray


class CovariateTier(NamedTuple):
    """The pre-period covariate of one tier's cells: centred log1p(pre count) and the no-history flag."""

    pre: np.ndarray
    no_history: np.ndarray


def prior_arrays(priors: Priors, data: ExperimentData, metric_type: str = "count") -> PriorArrays:
    """Resolve the priors for this data: ``beta0_loc=None`` centres on the pooled log rate (a
    conversion metric: on the pooled log-odds of converting)."""
    total = float((data.cell_users * data.cell_count).sum())
    if priors.beta0_loc is None and metric_type == "conversion":
        users = float(data.cell_users.sum())
        loc = np.log((total + 0.5) / (users - total + 0.5))
    elif priors.beta0_loc is None:
        exposure = float((data.cell_users * data.cell_exposure).sum())
        loc = np.log((total + 0.5) / exposure)
    else:
        loc = priors.beta0_loc
    return PriorArrays(
        beta0_loc=np.asarray(loc, np.float64),
        beta0_scale=np.asarray(priors.beta0_scale, np.float64),
        beta_scale=np.full((data.num_arms - 1,), priors.beta_scale, np.float64),
        s_rate=np.asarray(priors.s_rate, np.float64),
    )


class ConversionCells(NamedTuple):
    """The cells of a conversion metric, (arm, converted 0/1) with their users, padded (weight 0)."""

    arm: np.ndarray
    weight: np.ndarray
    converted: np.ndarray


def conversion_cells(data: ExperimentData) -> ConversionCells:
    """At most two cells per arm, padded to a size shared by experiments with a similar number of arms."""
    size = _padded_size(data.n_cells, 4)
    pad = size - data.n_cells

    def padded(values, dtype):
        return np.concatenate([values, np.zeros(pad)]).astype(dtype)

    return ConversionCells(arm=padded(data.cell_arm, np.int32), weight=padded(data.cell_users, np.float64),
                           converted=padded(data.cell_count, np.float64))


# Every tier but the first (counts 0-2, by far the most quadrature nodes) holds at least this many
# cells. Small experiments have a handful of cells in the higher tiers (0, 1, 2, 3 ...), each mix
# a new program shape and so a new compilation (~19 s on a fresh cache); with the floor the 24
# test experiments of 10 users per arm need 2 shapes instead of 6, at up to ~20% more sampling
# time on the smallest experiments (median of 3, a busy machine) and none on the article's data.
MIN_TIER_CELLS = 8


def _padded_size(n: int, floor: int = 1) -> int:
    """Smallest size >= max(n, floor) of the form 2^k or 3 * 2^k: few distinct shapes, at most
    1.5x padding above the floor."""
    n = max(int(n), floor, 1)
    power = 1 << (n - 1).bit_length()
    three = 3 * power // 4
    return three if three >= n else power


def cell_tiers(data: ExperimentData) -> tuple[CellTier, ...]:
    """Split the cells into count tiers and pad each to a fixed size (weight 0)."""
    return tuple(tier for tier, _ in _tiers(data))


def padded_per_tier(data: ExperimentData, values: np.ndarray, dtype) -> tuple[np.ndarray, ...]:
    """One array per :func:`cell_tiers` tier: ``values`` (one per cell) split and padded (0) the same way."""
    out = []
    for t, (mask, _) in enumerate(q.tier_masks(data.cell_count)):
        size = _padded_size(int(mask.sum()), MIN_TIER_CELLS if t else 1)
        out.append(np.concatenate([values[mask], np.zeros(size - int(mask.sum()))]).astype(dtype))
    return tuple(out)


def covariate_tiers(data: ExperimentData) -> tuple[CovariateTier, ...]:
    """The covariate of :func:`cell_tiers`' cells, tier by tier, padded the same way."""
    return tuple(cov for _, cov in _tiers(data))


def _tiers(data: ExperimentData):
    tiers, covariates = [], []
    for t, (mask, n_nodes) in enumerate(q.tier_masks(data.cell_count)):
        n = int(mask.sum())
        size = _padded_size(n, MIN_TIER_CELLS if t else 1)
        pad = size - n

        def padded(values, fill, dtype):
            return np.concatenate([values[mask], np.full(pad, fill)]).astype(dtype)

        x, log_wx = q.hermite_rule(n_nodes)
        tiers.append(
            CellTier(
                arm=padded(data.cell_arm, 0, np.int32),
                log_exposure=padded(np.log(data.cell_exposure), 0.0, np.float64),
                weight=padded(data.cell_users.astype(np.float64), 0.0, np.float64),
                cv_count=padded(data.cell_count.astype(np.float64), 0.0, np.float64),
                x=np.asarray(x, np.float64),
                log_wx=np.asarray(log_wx, np.float64),
            )
        )
        if data.has_covariate:
            covariates.append(CovariateTier(pre=padded(data.cell_pre, 0.0, np.float64),
                                            no_history=padded(data.cell_no_history, 0.0, np.float64)))
        else:
            covariates.append(None)
    return list(zip(tiers, covariates))
