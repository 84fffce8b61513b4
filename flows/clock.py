"""The job's one clock: every timestamp glmm-ab writes (run ids, started, finished, published,
the demo's anchor) is a UTC instant from :func:`utc_now`, stored as a naive TIMESTAMP in UTC."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone


def utc_now() -> datetime:
    """Now in UTC, naive (the warehouse's TIMESTAMP columns hold UTC), to the second."""
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def new_run_id(started_at: datetime | None = None) -> str:
    """A run's id: its UTC start to the second, then 8 random hex digits (sortable, unique)."""
    return f"{started_at or utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
