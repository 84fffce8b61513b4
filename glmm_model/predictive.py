"""Posterior predictive check, per-user rate estimates, and the rate samples behind the pictures.

Per-user rates mu_i = exp(eta_i + r_i). On the collapsed path r_i was integrated
out, so its posterior is recovered per histogram cell, once per cell however many
users share it:

* the posterior mean uses ``E[mu | y, θ] = (y + 1) L(y + 1 | θ) / L(y | θ)``
  (quadrature), averaged over posterior draws θ — no sampling error from r;
* intervals and density pictures use importance samples: for each draw, r from a
  Normal centred at the conditional mode with 1.5x the Laplace scale, weighted by
  ``p(y, r | θ) / (L(y | θ) q(r))``.

On the latent path the same quantities come straight from the r draws. A
conversion metric has no per-user intercept: every user of an arm has the arm's
probability p_g, whose posterior draws are the cell's samples.

The predictive check compares, per arm, the observed share of users in each
count bin with the model's: for each thinned draw the arm's count distribution
(a mixture over its exposure cells) is computed by quadrature, a replicated
histogram of the arm's size is drawn from it, and a chi-squared discrepancy of
observed vs expected is compared with replicated vs expected (posterior
predictive p-value; small means the model misfits the histogram).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import quadrature as q
from .data import ExperimentData

_SAMPLES_PER_CELL = 2000
_MAX_EXPOSURE_GROUPS = 16
_SMALL_MAX_COUNT = 20
_QUANTILE_BINS = 20
_MAX_PMF_COUNT = 4096  # bins above this count merge into the open last bin (a bot's 10^6 events)
_PMF_CHUNK = 256  # counts per quadrature call: bounds memory at draws x groups x chunk x nodes


def thin(n_draws: int, n_keep: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most n_keep draws, evenly spaced."""
    if n_draws <= n_keep:
        return np.arange(n_draws)
    return np.linspace(0, n_draws - 1, n_keep).round().astype(int)


def cell_eta(data: ExperimentData, beta0: np.ndarray, beta: np.ndarray, covariate=None) -> np.ndarray:
    """Linear predictor (draws, cells) without r: beta0 + beta[arm] + log exposure, plus
    gamma * pre + delta * no_history when ``covariate`` holds the (gamma, delta) draws."""
    beta_full = np.concatenate([np.zeros((len(beta0), 1)), np.asarray(beta).reshape(len(beta0), -1)], axis=1)
    eta = beta0[:, None] + beta_full[:, data.cell_arm] + np.log(data.cell_exposure)[None, :]
    if covariate is not None:
        gamma, delta = covariate
        eta = eta + gamma[:, None] * data.cell_pre[None, :] + delta[:, None] * data.cell_no_history[None, :]
    return eta


def covariate_shift(data: ExperimentData, covariate) -> np.ndarray:
    """Per draw, log of the mean of exp(gamma * pre + delta * no_history) over every user (arms
    pooled): added to beta0, it makes exp(beta0 + s²/2) the marginal mean of a random user."""
    w = data.cell_users / data.cell_users.sum()
    gamma, delta = covariate
    term = gamma[:, None] * data.cell_pre[None, :] + delta[:, None] * data.cell_no_history[None, :]
    top = term.max(axis=1, keepdims=True)
    return top[:, 0] + np.log((np.exp(term - top) * w[None, :]).sum(axis=1))


@dataclass(frozen=True)
class RateSamples:
    """Weighted samples of each cell's rate mu: ``mu`` and ``weight`` are (cells, samples),
    weights sum to 1 per cell; ``mean`` is the posterior mean per cell."""

    mu: np.ndarray
    weight: np.ndarray
    mean: np.ndarray

    def quantiles(self, probs) -> np.ndarray:
        order = np.argsort(self.mu, axis=1)
        mu = np.take_along_axis(self.mu, order, axis=1)
        cdf = np.cumsum(np.take_along_axis(self.weight, order, axis=1), axis=1)
        out = np.empty((self.mu.shape[0], len(probs)))
        for k, p in enumerate(probs):
            idx = np.minimum((cdf < p).sum(axis=1), mu.shape[1] - 1)
            out[:, k] = mu[np.arange(mu.shape[0]), idx]
        return out

    def resample(self, cell: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """Unweighted draws of one cell's rate."""
        return rng.choice(self.mu[cell], size=size, p=self.weight[cell])


def collapsed_rates(data, beta0, beta, s, rng, covariate=None) -> RateSamples:
    """Per-cell rate posteriors from (beta0, beta, s[, gamma, delta]) draws by quadrature and importance sampling."""
    n_cells = data.n_cells
    per_draw = 8  # importance samples per kept draw: 250 draws x 8, where each draw costs two quadratures
    n_keep = int(max(50, min(_SAMPLES_PER_CELL // per_draw, 2e7 // (per_draw * n_cells))))
    idx = thin(len(beta0), n_keep, rng)
    eta = cell_eta(data, beta0[idx], beta[idx], None if covariate is None else (covariate[0][idx], covariate[1][idx]))
    s_j = np.broadcast_to(s[idx, None], eta.shape)
    y = np.broadcast_to(data.cell_count[None, :].astype(float), eta.shape)
    log_l = q.log_marginal_tiered(y, eta, s_j)
    mean = ((y + 1.0) * np.exp(q.log_marginal_tiered(y + 1.0, eta, s_j) - log_l)).mean(axis=0)

    r_star, sigma_hat = q.laplace_mode(y, eta, s_j, xp=np)
    scale = 1.5 * sigma_hat
    z = rng.standard_normal((per_draw,) + eta.shape)
    r = r_star + scale * z
    log_q = -0.5 * z**2 - q.HALF_LOG_2PI - np.log(scale)
    log_w = q.log_joint(r, y, eta, s_j, xp=np) - log_l - log_q
    mu = np.exp(eta + r)
    # (per_draw, J, C) -> (C, per_draw * J)
    mu = mu.transpose(2, 0, 1).reshape(n_cells, -1)
    w = np.exp(log_w.transpose(2, 0, 1).reshape(n_cells, -1))
    w /= w.sum(axis=1, keepdims=True)
    return RateSamples(mu=mu, weight=w, mean=mean)


def conversion_rates(data, beta0, beta, rng) -> RateSamples:
    """Per-cell conversion probabilities: each cell's users have their arm's p (draws thinned)."""
    idx = thin(len(beta0), _SAMPLES_PER_CELL, rng)
    p = conversion_probability(data, beta0[idx], beta[idx])  # (J, cells)
    return RateSamples(mu=p.T.copy(), weight=np.full(p.T.shape, 1.0 / p.shape[0]), mean=p.mean(axis=0))


def conversion_probability(data, beta0, beta) -> np.ndarray:
    """p of each cell's arm, (draws, cells): logit^-1(beta0 + beta[arm])."""
    return np.exp(-np.logaddexp(0.0, -cell_eta(data, beta0, beta)))


def latent_rates(data, beta0, beta, s, r, rng) -> RateSamples:
    """Per-cell rate posteriors pooled from the latent path's per-user draws (draws, users)."""
    arm, count, exposure = data.per_user()
    user_cell = data.user_cell if data.user_cell is not None else np.repeat(np.arange(data.n_cells), data.cell_users)
    beta_full = np.concatenate([np.zeros((len(beta0), 1)), np.asarray(beta).reshape(len(beta0), -1)], axis=1)
    mus, means = [], np.empty(data.n_cells)
    for c in range(data.n_cells):
        users = np.flatnonzero(user_cell == c)
        d = rng.integers(0, len(beta0), _SAMPLES_PER_CELL)
        u = users[rng.integers(0, len(users), _SAMPLES_PER_CELL)]
        eta = beta0[d] + beta_full[d, arm[u]] + np.log(exposure[u])
        mus.append(np.exp(eta + r[d, u]))
        means[c] = np.exp(beta0[:, None] + beta_full[:, arm[users]] + np.log(exposure[users]) + r[:, users]).mean()
    mu = np.stack(mus)
    return RateSamples(mu=mu, weight=np.full(mu.shape, 1.0 / mu.shape[1]), mean=means)


def _pre_bound(values, c: int):
    """A cell's pre-period bin bound, None without the covariate or for users with no history."""
    return None if values is None or values[c] < 0 else int(values[c])


def user_estimate_rows(data: ExperimentData, rates: RateSamples, level: float) -> list[dict]:
    tail = (1.0 - level) / 2.0
    qs = rates.quantiles([tail, 0.5, 1.0 - tail])
    return [
        {
            "variant": data.variants[data.cell_arm[c]],
            "cv_count": int(data.cell_count[c]),
            "exposure": float(data.cell_exposure[c]),
            "n_users": int(data.cell_users[c]),
            "pre_cv_count_low": _pre_bound(data.cell_pre_low, c),
            "pre_cv_count_high": _pre_bound(data.cell_pre_high, c),
            "rate_mean": float(rates.mean[c]),
            "rate_median": float(qs[c, 1]),
            "rate_low": float(qs[c, 0]),
            "rate_high": float(qs[c, 2]),
        }
        for c in range(data.n_cells)
    ]


def quantile_cells(data: ExperimentData, cells: np.ndarray, probs) -> np.ndarray:
    """Of ``cells``, the ones holding the users at the given quantiles of their counts."""
    cells = cells[np.argsort(data.cell_count[cells], kind="stable")]
    cdf = np.cumsum(data.cell_users[cells]) / data.cell_users[cells].sum()
    return cells[np.minimum(np.searchsorted(cdf, probs), len(cells) - 1)]


def count_bins(data: ExperimentData) -> np.ndarray:
    """Lower edges of the count bins; the last bin is open-ended. Edges stop at _MAX_PMF_COUNT, so
    the model's count distribution is never enumerated beyond it, however extreme one user is."""
    max_count = int(data.cell_count.max())
    if max_count <= _SMALL_MAX_COUNT:
        return np.arange(max_count + 2)
    cells = quantile_cells(data, np.arange(data.n_cells), np.linspace(0.0, 0.99, _QUANTILE_BINS))
    edges = np.unique(np.concatenate([[0], data.cell_count[cells], [max_count + 1]]))
    return edges[edges <= _MAX_PMF_COUNT]


def _offset_groups(data: ExperimentData, arm: int, coef=(0.0, 0.0)):
    """(log exposure, pre, no_history) centres and the share of the arm's users, per group of its
    cells. Cells are grouped on their offset log exposure + gamma * pre + delta * no_history at
    ``coef`` (the posterior means of gamma and delta), at most ``_MAX_EXPOSURE_GROUPS`` groups."""
    mask = data.cell_arm == arm
    log_e = np.log(data.cell_exposure[mask])
    pre = data.cell_pre[mask] if data.has_covariate else np.zeros_like(log_e)
    no_history = data.cell_no_history[mask].astype(float) if data.has_covariate else np.zeros_like(log_e)
    users = data.cell_users[mask].astype(float)
    offset = log_e + coef[0] * pre + coef[1] * no_history
    uniq, inv = np.unique(offset, return_inverse=True)
    if len(uniq) > _MAX_EXPOSURE_GROUPS:
        qs = np.quantile(offset, np.linspace(0, 1, _MAX_EXPOSURE_GROUPS + 1)[1:-1])
        inv = np.searchsorted(qs, offset)
    n = np.bincount(inv, weights=users)
    keep = n > 0
    centres = [np.bincount(inv, weights=users * v)[keep] / n[keep] for v in (log_e, pre, no_history)]
    return centres, n[keep] / n.sum()


def _count_pmf(data, arm: int, shift: np.ndarray, sd: np.ndarray, values: np.ndarray, covariate=None) -> np.ndarray:
    """(draws, values): P(count = v) for a random user of ``arm`` (a mixture over its offset groups)."""
    coef = (0.0, 0.0) if covariate is None else (float(covariate[0].mean()), float(covariate[1].mean()))
    (log_e, pre, no_history), share = _offset_groups(data, arm, coef)
    eta = shift[:, None, None] + log_e[None, :, None]  # (J, groups, 1)
    if covariate is not None:
        eta = eta + (covariate[0][:, None] * pre[None, :] + covariate[1][:, None] * no_history[None, :])[:, :, None]
    pmf = np.empty((len(shift), len(values)))
    for start in range(0, len(values), _PMF_CHUNK):
        chunk = values[start:start + _PMF_CHUNK]
        log_p = q.log_marginal_tiered(chunk[None, None, :], eta, sd[:, None, None])
        pmf[:, start:start + len(chunk)] = (np.exp(log_p) * share[None, :, None]).sum(axis=1)
    return pmf


def predictive_check(data, beta0, beta, s, n_draws: int, level: float, rng,
                     metric_type: str = "count", covariate=None) -> tuple[list[dict], list[float]]:
    """Rows of observed vs predicted share per arm x count bin, and each arm's p-value (a conversion
    metric: the bins 'not converted' and 'converted', from p_g)."""
    edges = np.array([0, 1]) if metric_type == "conversion" else count_bins(data)
    values = np.arange(edges[-1])
    bin_of = np.searchsorted(edges, values, side="right") - 1
    idx = thin(len(beta0), n_draws, rng)
    b0, b = beta0[idx], np.asarray(beta).reshape(len(beta0), -1)[idx]
    tail = (1.0 - level) / 2.0
    rows, p_values = [], []
    for arm, variant in enumerate(data.variants):
        shift = b0 + (b[:, arm - 1] if arm > 0 else 0.0)
        if metric_type == "conversion":
            pmf = np.exp(-np.logaddexp(0.0, shift))[:, None]  # P(not converted) = 1 - p
        else:
            cov = None if covariate is None else (covariate[0][idx], covariate[1][idx])
            pmf = _count_pmf(data, arm, shift, s[idx], values, cov)
        p_bins = np.zeros((len(idx), len(edges)))
        np.add.at(p_bins.T, bin_of, pmf.T)
        p_bins[:, -1] = np.clip(1.0 - p_bins[:, :-1].sum(axis=1), 0.0, 1.0)
        p_bins /= p_bins.sum(axis=1, keepdims=True)

        mask = data.cell_arm == arm
        n_arm = int(data.cell_users[mask].sum())
        counts = data.cell_count[mask]
        observed = np.bincount(np.searchsorted(edges, counts, side="right") - 1,
                               weights=data.cell_users[mask], minlength=len(edges))
        replicated = np.stack([rng.multinomial(n_arm, p) for p in p_bins])
        expected = n_arm * p_bins
        eps = 1e-9
        t_obs = (((observed[None, :] - expected) ** 2) / (expected + eps)).sum(axis=1)
        t_rep = (((replicated - expected) ** 2) / (expected + eps)).sum(axis=1)
        p_value = float(np.mean(t_rep >= t_obs))
        p_values.append(p_value)
        rep_share = replicated / n_arm
        low, high = np.quantile(rep_share, [tail, 1.0 - tail], axis=0)
        for k in range(len(edges)):
            rows.append(
                {
                    "variant": variant,
                    "count_low": int(edges[k]),
                    "count_high": int(edges[k + 1] - 1) if k + 1 < len(edges) else None,
                    "observed_users": int(observed[k]),
                    "observed_share": float(observed[k] / n_arm),
                    "predicted_share_mean": float(p_bins[:, k].mean()),
                    "predicted_share_low": float(low[k]),
                    "predicted_share_high": float(high[k]),
                    "ppc_p_value": p_value,
                }
            )
    return rows, p_values
