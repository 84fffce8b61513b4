"""Synthetic raw logs for ``glmm-ab demo``, following the raw contract.

Three experiments (one with three arms), two event names and four metrics over them:
purchases (a count, the primary metric), add_to_cart (a count, a guardrail that may
drop 5%), converted (did the user purchase at all: a conversion metric) and
purchases_per_cart (a ratio). The checkout button's buy-now path lifts purchases but
takes users past the cart, so its guardrail has something to catch. Per-user counts follow
the source article's data-generating process, NegBin(n=10, p=1/(1+intensity)),
with intensity = base x (1 + lift) per arm, drawn as its Gamma-Poisson mixture so
that each user's own rate also drives their history. The checkout button is shown to
existing shoppers: 80% of its users have events in the 14 days before their first
exposure (the pre-period covariate), Poisson with half their untreated rate, moved
by a lognormal drift (sd 0.3); the onboarding flow and the pricing copy are seen by
new visitors, who have no history. Event times are spread over the user's window,
over several weeks. A few dirty rows, as real logs have: repeated event deliveries
(same event_id), users exposed to two variants, and (among the checkout button's
users) stray events two hours before the first exposure (which must not count).
The checkout button's users also have a platform (raw.user_segments: ios 40%, android
35%, web 25%; 5% unrecorded), and the buy-now path works better on iOS (+15 points of
lift on purchases) than on the web (-15): the segment breakdown's example.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from .clock import utc_now


@dataclass(frozen=True)
class DemoExperiment:
    experiment_id: str
    control: str
    lifts: dict[str, float]  # arm -> relative change of intensity (control 0)
    users: int
    start_days_ago: int
    length_days: int | None  # None: still running
    event_lifts: dict[str, dict[str, float]] | None = None  # event name -> arm -> lift, where it differs
    history_share: float = 0.0  # users with events in the pre-period (existing users)
    platform_lifts: dict[str, float] | None = None  # platform -> added to each treatment's purchase lift


    def lift(self, event_name: str, variant: str, platform: str | None = None) -> float:
        lift = (self.event_lifts or {}).get(event_name, self.lifts)[variant]
        if platform is not None and variant != self.control and event_name == "purchase":
            lift += self.platform_lifts[platform]
        return lift


EXPERIMENTS = (
    DemoExperiment("checkout_button", "control", {"control": 0.0, "treatment": 0.25}, 400, 35, 28,
                   {"add_to_cart": {"control": 0.0, "treatment": -0.15}}, history_share=0.8,
                   platform_lifts={"ios": 0.15, "android": 0.0, "web": -0.15}),
    DemoExperiment("onboarding_flow", "control", {"control": 0.0, "short_form": 0.15, "video_intro": -0.10}, 600, 21, None),
    DemoExperiment("pricing_copy", "old_copy", {"old_copy": 0.0, "new_copy": 0.0}, 300, 14, None),
)
EVENTS = {"purchase": 0.3, "add_to_cart": 1.0}  # event name -> base intensity
NEGBIN_N = 10  # the article's NegBin(n=10, ...): a Gamma(10, intensity) rate per user, then Poisson
PRE_PERIOD_DAYS, PRE_PERIOD_SCALE, PRE_PERIOD_DRIFT = 14, 0.5, 0.3
PLATFORMS, PLATFORM_SHARES = ("ios", "android", "web"), (0.4, 0.35, 0.25)
METRICS = (  # raw.metrics: metric_id, event_name, metric_type, denominator_event, role, tolerated_drop
    ("purchases", "purchase", "count", None, "primary", None),
    ("add_to_cart", "add_to_cart", "count", None, "guardrail", 0.05),
    ("converted", "purchase", "conversion", None, "secondary", None),
    ("purchases_per_cart", "purchase", "ratio", "add_to_cart", "secondary", None),
)


def build(now: datetime | None = None, seed: int = 7) -> dict[str, pl.DataFrame]:
    """The raw tables as polars frames, anchored ``now`` (midnight today, UTC, by default)."""
    rng = np.random.default_rng(seed)
    history_rng = np.random.default_rng(seed + 1)  # the pre-period's own stream
    segment_rng = np.random.default_rng(seed + 2)  # and the platforms'
    user_segments = []
    now = now or utc_now().replace(hour=0, minute=0, second=0)
    experiments, assignments, events = [], [], []
    event_seq = 0
    for exp in EXPERIMENTS:
        start = now - timedelta(days=exp.start_days_ago)
        end = start + timedelta(days=exp.length_days) if exp.length_days else None
        window_end = min(end, now) if end else now
        experiments.append((exp.experiment_id, exp.control, start, end))
        arms = list(exp.lifts)
        arm_of_user = rng.integers(0, len(arms), exp.users)
        # first exposures over the first two thirds of the window, so every user has time to convert
        span = (window_end - start).total_seconds() * 2 / 3
        first_seen = [start + timedelta(seconds=float(x)) for x in rng.uniform(0, span, exp.users)]
        for i in range(exp.users):
            user = f"{exp.experiment_id}_u{i:05d}"
            variant = arms[arm_of_user[i]]
            assignments.append((exp.experiment_id, user, variant, first_seen[i]))
            for _ in range(rng.poisson(1.0)):  # repeat exposures, same variant
                later = first_seen[i] + timedelta(hours=float(rng.uniform(1, 72)))
                if later < window_end:
                    assignments.append((exp.experiment_id, user, variant, later))
            window = (window_end - first_seen[i]).total_seconds()
            has_history = history_rng.random() < exp.history_share
            platform = None
            if exp.platform_lifts:
                platform = PLATFORMS[segment_rng.choice(len(PLATFORMS), p=PLATFORM_SHARES)]
                if segment_rng.random() < 0.95:  # the rest have no recorded platform: '(none)'
                    user_segments.append((None, user, "platform", platform))
            for event_name, base in EVENTS.items():
                lift = exp.lift(event_name, variant, platform)
                rate = rng.gamma(NEGBIN_N, base * (1.0 + lift))  # NegBin(10, 1/(1 + intensity)) as a mixture
                for t in rng.uniform(0, window, rng.poisson(rate)):
                    event_seq += 1
                    events.append((f"e{event_seq:08d}", user, event_name, first_seen[i] + timedelta(seconds=float(t))))
                if has_history:  # before the test, the same user without the treatment's lift
                    pre_rate = rate / (1.0 + lift) * PRE_PERIOD_SCALE * np.exp(history_rng.normal(0.0, PRE_PERIOD_DRIFT))
                    for t in history_rng.uniform(60, PRE_PERIOD_DAYS * 86400 - 60, history_rng.poisson(pre_rate)):
                        event_seq += 1
                        events.append((f"e{event_seq:08d}", user, event_name, first_seen[i] - timedelta(seconds=float(t))))
                if rng.random() < 0.1 and exp.history_share:  # an event before exposure: must not count
                    event_seq += 1
                    events.append((f"e{event_seq:08d}", user, event_name, first_seen[i] - timedelta(hours=2)))
        # two users who also saw another variant: excluded as assignment conflicts
        for i in range(2):
            user = f"{exp.experiment_id}_u{i:05d}"
            other = arms[(arm_of_user[i] + 1) % len(arms)]
            assignments.append((exp.experiment_id, user, other, first_seen[i] + timedelta(hours=5)))
    # repeated deliveries of 2% of events (same event_id, a few seconds later)
    repeats = rng.choice(len(events), size=len(events) // 50, replace=False)
    events += [(e[0], e[1], e[2], e[3] + timedelta(seconds=3)) for e in (events[k] for k in repeats)]

    ts = pl.Datetime("us")
    return {
        "experiments": pl.DataFrame(experiments, schema={"experiment_id": pl.String, "control_variant": pl.String, "start_at": ts, "end_at": ts}, orient="row"),
        "metrics": pl.DataFrame(list(METRICS), schema={"metric_id": pl.String, "event_name": pl.String, "metric_type": pl.String,
                                                       "denominator_event": pl.String, "role": pl.String,
                                                       "tolerated_drop": pl.Float64}, orient="row"),
        "assignments": pl.DataFrame(assignments, schema={"experiment_id": pl.String, "user_id": pl.String, "variant": pl.String, "assigned_at": ts}, orient="row"),
        "events": pl.DataFrame(events, schema={"event_id": pl.String, "user_id": pl.String, "event_name": pl.String, "event_at": ts}, orient="row"),
        "user_segments": pl.DataFrame(user_segments, schema={"experiment_id": pl.String, "user_id": pl.String,
                                                             "dimension": pl.String, "segment": pl.String}, orient="row"),
    }
