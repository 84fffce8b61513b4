"""The model's inputs as arrays: histogram cells ordered by quadrature tier, and the resolved priors.

Kept apart from :mod:`.model` so that a process whose sampler program is already
exported (:mod:`.programs`) builds its inputs without importing NumPyro. They are
numpy arrays: the sampler puts them on the device in one transfer, where building
each as a JAX array ran (and looked up in the compilation cache) one small program
per array.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.special as sp

from . import quadrature as q
from .config import Priors
from .data import ExperimentData


class PriorArrays(NamedTuple):
    """Prior hyper-parameters as arrays; ``beta_scale`` has one entry per treatment arm."""

    beta0_loc: np.ndarray
    beta0_scale: np.ndarray
    beta_scale: np.ndarray
    s_rate: np.ndarray


class Cells(NamedTuple):
    """Histogram cells padded to a capacity (weight 0), ordered tier by tier
    (:func:`.quadrature.cell_order`); ``starts`` are the tiers' offsets in that order."""

    arm: np.ndarray
    log_exposure: np.ndarray
    weight: np.ndarray
    cv_count: np.ndarray
    log_factorial: np.ndarray
    starts: np.ndarray


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


class SegmentCells(NamedTuple):
    """The segment (0-based index) of each cell, ordered and padded like :class:`Cells`, and each
    segment x treatment's squared standard error of its effect (K x T; see :func:`.model.segment_effects`)."""

    segment: np.ndarray
    effect_variance: np.ndarray


class CovariateCells(NamedTuple):
    """The pre-period covariate of the cells, ordered and padded like :class:`Cells`: centred
    log1p(pre count) and the no-history flag."""

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


# The cell arrays' capacity: at least MIN_CAPACITY cells, else the next power of 2, plus one loop
# step's slack (:func:`.quadrature.max_step_cells`) so that a step never reads past the end. The
# sampler's program depends on the capacity only: with the floor one program serves every experiment
# of up to 512 cells of a family (model, arms, covariate): the demo's 9 count and ratio pairs need 3
# programs where cells padded tier by tier needed 9 (tests/benchmarks/program_layouts.py).
MIN_CAPACITY = 512


def _padded_size(n: int, floor: int = 1) -> int:
    """Smallest size >= max(n, floor) of the form 2^k or 3 * 2^k: few distinct shapes, at most
    1.5x padding above the floor."""
    n = max(int(n), floor, 1)
    power = 1 << (n - 1).bit_length()
    three = 3 * power // 4
    return three if three >= n else power


def cell_capacity(n_cells: int) -> int:
    """The padded length of the cell arrays for ``n_cells`` cells (see MIN_CAPACITY)."""
    return max(MIN_CAPACITY, 1 << (max(int(n_cells), 1) - 1).bit_length()) + q.max_step_cells()


def per_cell(data: ExperimentData, values: np.ndarray, dtype, fill=0) -> np.ndarray:
    """``values`` (one per cell) in :func:`cells`' order, padded with ``fill`` to its capacity."""
    order, _ = q.cell_order(data.cell_count)
    values = np.asarray(values)[order]
    return np.concatenate([values, np.full(cell_capacity(data.n_cells) - len(order), fill)]).astype(dtype)


def cells(data: ExperimentData) -> Cells:
    """The histogram's cells as the collapsed models take them (:class:`Cells`)."""
    count = data.cell_count.astype(np.float64)
    return Cells(
        arm=per_cell(data, data.cell_arm, np.int32),
        log_exposure=per_cell(data, np.log(data.cell_exposure), np.float64),
        weight=per_cell(data, data.cell_users, np.float64),
        cv_count=per_cell(data, count, np.float64),
        log_factorial=per_cell(data, sp.gammaln(count + 1.0), np.float64),
        starts=q.cell_order(data.cell_count)[1],
    )


def covariate_cells(data: ExperimentData) -> CovariateCells:
    """The pre-period covariate of :func:`cells`' cells."""
    return CovariateCells(pre=per_cell(data, data.cell_pre, np.float64),
                          no_history=per_cell(data, data.cell_no_history, np.float64))
