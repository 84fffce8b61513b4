"""MCMC convergence diagnostics on (chain, draw) arrays, as ArviZ 0.23 computes them.

Rank-normalised split R-hat, bulk and tail effective sample size, the Monte
Carlo standard error of the mean (Vehtari, Gelman, Simpson, Carpenter and
Bürkner 2021, https://arxiv.org/abs/1903.08008) and the Bayesian fraction of
missing information (Betancourt 2016).

Why not call ArviZ: importing it costs ~1.2 s (it loads its plotting stack and
scipy.stats), more than a whole fit of the article's example now takes. These
are the same formulas, step for step (``arviz.stats.diagnostics``), with numpy
and ``scipy.special`` only; ``tests/test_diagnostics.py`` checks them against
ArviZ on healthy, stuck, constant and discrete chains. ArviZ still draws the
trace plot, and ``Posterior.inference_data`` hands the draws to it.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri

MIN_DRAWS = 4


def _valid(ary: np.ndarray, min_chains: int = 1) -> bool:
    return ary.ndim == 2 and ary.shape[0] >= min_chains and ary.shape[1] >= MIN_DRAWS and not np.isnan(ary).any()


def _split_chains(ary: np.ndarray) -> np.ndarray:
    half = ary.shape[1] // 2
    return np.vstack((ary[:, :half], ary[:, -half:]))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties sharing their average rank (scipy's ``rankdata``)."""
    flat = values.ravel()
    order = np.argsort(flat, kind="mergesort")
    ordered = flat[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], flat.size]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(flat.size)
    ranks[order] = average[group]
    return ranks.reshape(values.shape)


def _z_scale(ary: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks (Blom's offset 3/8)."""
    ranks = _average_ranks(ary)
    return ndtri((ranks - 0.375) / (ary.size - 0.75 + 1.0))


def _rhat(ary: np.ndarray) -> float:
    n = ary.shape[1]
    between = n * np.var(ary.mean(axis=1), ddof=1)
    within = np.mean(np.var(ary, axis=1, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sqrt((between / within + n - 1) / n))


def _autocov(ary: np.ndarray) -> np.ndarray:
    n = ary.shape[1]
    m = 1 << (2 * n - 1).bit_length()  # any FFT length >= 2n gives the same linear autocovariance
    centred = ary - ary.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=m, axis=1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=m, axis=1)[:, :n] / n


def _ess(ary: np.ndarray) -> float:
    """Effective sample size of a (chain, draw) array: Geyer's initial monotone sequence."""
    ary = np.asarray(ary, dtype=float)
    if np.max(ary) - np.min(ary) < np.finfo(float).resolution:
        return float(ary.size)
    n_chain, n_draw = ary.shape
    acov = _autocov(ary)
    mean_var = np.mean(acov[:, 0]) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(ary.mean(axis=1), ddof=1)
    rho = np.zeros(n_draw)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    t = 1
    while t < n_draw - 3 and rho_even + rho_odd > 0.0:  # initial positive sequence
        rho_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:  # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    size = n_chain * n_draw
    tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1: max_t + 2])
    tau = max(tau, 1.0 / np.log10(size))
    return float("nan") if np.isnan(rho).any() else float(size / tau)


def r_hat(ary) -> float:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) value; NaN below 2 chains."""
    ary = np.asarray(ary, dtype=float)
    if not _valid(ary, min_chains=2):
        return float("nan")
    split = _split_chains(ary)
    bulk = _rhat(_z_scale(split))
    tail = _rhat(_z_scale(np.abs(split - np.median(split))))
    return max(bulk, tail)


def ess_bulk(ary) -> float:
    """Bulk effective sample size: ESS of the rank-normalised split chains."""
    ary = np.asarray(ary, dtype=float)
    if not _valid(ary):
        return float("nan")
    return _ess(_z_scale(_split_chains(ary)))


def ess_tail(ary, probs: tuple[float, float] = (0.05, 0.95)) -> float:
    """Tail effective sample size: the smaller ESS of the 5% and 95% quantile indicators."""
    ary = np.asarray(ary, dtype=float)
    if not _valid(ary):
        return float("nan")
    return min(_ess(_split_chains(ary <= np.quantile(ary, p))) for p in probs)


def mcse_mean(ary) -> float:
    """Monte Carlo standard error of the posterior mean: sd / sqrt(ESS of the split chains)."""
    ary = np.asarray(ary, dtype=float)
    if not _valid(ary):
        return float("nan")
    return float(np.std(ary, ddof=1) / np.sqrt(_ess(_split_chains(ary))))


def bfmi(energy) -> np.ndarray:
    """Bayesian fraction of missing information per chain, from the (chain, draw) energies."""
    energy = np.atleast_2d(np.asarray(energy, dtype=float))
    return np.square(np.diff(energy, axis=1)).mean(axis=1) / np.var(energy, axis=1, ddof=1)
