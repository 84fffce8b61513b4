"""The data behind the article's three pictures, as small tables any BI tool can draw.

A dashboard must never refit to draw a picture, so each fit writes what the
pictures need (:mod:`.plots` draws its PNGs from these same rows):

1. ``posterior_draws`` — thinned posterior draws of beta0, beta (per treatment)
   and s, per chain: the trace plot. At most ``TRACE_DRAWS_PER_CHAIN`` evenly
   spaced draws per chain are kept.
2. ``user_predictive`` — for ``SAMPLE_USERS`` users, the posterior predictive
   distribution of their count, binned: y_rep ~ Poisson(mu_i), mu_i drawn from the
   user's rate posterior; with their observed count. Per-user input shows the
   first users; histogram input (no user order) shows users at evenly spaced
   count quantiles of each arm.
3. ``rate_density`` — the estimated per-user rate mu of a random user of each arm
   (the mixture of the arm's users' rate posteriors), as a density over shared
   equal-width bins: the article's TG/CG plot. ``density`` integrates to the share
   of draws inside the bins (about 0.995).
"""
from __future__ import annotations

import numpy as np

from .data import ExperimentData
from .predictive import RateSamples, quantile_cells, thin

TRACE_DRAWS_PER_CHAIN = 200
SAMPLE_USERS = 10
PREDICTIVE_DRAWS = 4000
PREDICTIVE_MAX_BINS = 40
RATE_DRAWS = 20000
RATE_BINS = 60


def trace_rows(draws: dict, variants: tuple[str, ...], per_chain: int = TRACE_DRAWS_PER_CHAIN) -> list[dict]:
    """Thinned draws per chain: one row per (parameter, variant, chain, draw).

    ``draws``: ``beta0`` and ``s`` (chain, draw), ``beta`` (chain, draw, treatment arm).
    """
    n_draws = draws["beta0"].shape[1]
    keep = thin(n_draws, per_chain, None)
    series = [("beta0", None, draws["beta0"])]
    series += [("beta", v, draws["beta"][:, :, k]) for k, v in enumerate(variants[1:])]
    series += [("s", None, draws["s"])] if "s" in draws else []  # a conversion metric has no s
    rows = []
    for parameter, variant, values in series:
        for chain in range(values.shape[0]):
            for d in keep:
                rows.append({"parameter": parameter, "variant": variant, "chain": chain, "draw": int(d),
                             "value": float(values[chain, d])})
    return rows


def _quantile_points(k: int) -> np.ndarray:
    return (np.arange(k) + 0.5) / k


def sample_users(data: ExperimentData, n_users: int = SAMPLE_USERS) -> tuple[np.ndarray, list[str]]:
    """(cell per sampled user, label per sampled user)."""
    if data.user_cell is not None:
        cells = data.user_cell[:n_users]
        ids = data.user_ids[:n_users] if data.user_ids is not None else np.arange(len(cells))
        return cells, [str(u) for u in ids]
    per_arm = max(n_users // data.num_arms, 1)
    probs = _quantile_points(per_arm)
    cells = np.concatenate([quantile_cells(data, np.flatnonzero(data.cell_arm == arm), probs)
                            for arm in range(data.num_arms)])[:n_users]
    labels = [f"at count quantile {p:.0%}" for p in np.tile(probs, data.num_arms)][:n_users]
    return cells, labels


def _count_bins(y: np.ndarray, max_bins: int) -> np.ndarray:
    """Lower edges of integer bins covering y, at most max_bins of them (last edge exclusive)."""
    low, high = int(y.min()), int(y.max())
    width = max(1, int(np.ceil((high - low + 1) / max_bins)))
    return np.arange(low, high + width + 1, width)


MAX_PICTURE_RATE = 1e15


def user_predictive_rows(data: ExperimentData, rates: RateSamples, rng: np.random.Generator,
                         n_users: int = SAMPLE_USERS, draws: int = PREDICTIVE_DRAWS,
                         max_bins: int = PREDICTIVE_MAX_BINS, metric_type: str = "count") -> list[dict]:
    """Binned posterior predictive count distribution of the sampled users (a conversion metric:
    y_rep ~ Bernoulli(p), the rate being the user's probability of converting)."""
    cells, labels = sample_users(data, n_users)
    rows = []
    for k, (cell, label) in enumerate(zip(cells, labels)):
        # numpy's Poisson refuses rates above ~1e19: a rate that large is a count no picture can show
        rate = rates.resample(int(cell), draws, rng)
        y_rep = rng.binomial(1, rate) if metric_type == "conversion" else rng.poisson(np.minimum(rate, MAX_PICTURE_RATE))
        edges = _count_bins(y_rep, max_bins)
        counts, _ = np.histogram(y_rep, bins=edges)
        for j, n in enumerate(counts):
            rows.append({
                "sample_user": k,
                "user_label": label,
                "variant": data.variants[data.cell_arm[cell]],
                "observed_count": int(data.cell_count[cell]),
                "count_low": int(edges[j]),
                "count_high": int(edges[j + 1] - 1),
                "probability": float(n / draws),
            })
    return rows


def arm_rate_draws(data: ExperimentData, rates: RateSamples, arm: int, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Unweighted draws of the rate of a random user of one arm (mixture over its cells)."""
    cells = np.flatnonzero(data.cell_arm == arm)
    pick = rng.choice(cells, size=size, p=data.cell_users[cells] / data.cell_users[cells].sum())
    out = np.empty(size)
    for c in np.unique(pick):
        where = pick == c
        out[where] = rates.resample(c, int(where.sum()), rng)
    return out


def rate_density_rows(data: ExperimentData, rates: RateSamples, rng: np.random.Generator,
                      size: int = RATE_DRAWS, bins: int = RATE_BINS) -> list[dict]:
    """Density of a random user's estimated rate per arm over shared equal-width bins."""
    draws = [arm_rate_draws(data, rates, arm, size, rng) for arm in range(data.num_arms)]
    top = max(float(np.quantile(d, 0.995)) for d in draws)
    edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
    width = edges[1] - edges[0]
    rows = []
    for arm, d in enumerate(draws):
        counts, _ = np.histogram(d, bins=edges)
        for j, n in enumerate(counts):
            rows.append({
                "variant": data.variants[arm],
                "is_control": arm == 0,
                "rate_low": float(edges[j]),
                "rate_high": float(edges[j + 1]),
                "density": float(n / (size * width)),
            })
    return rows
