"""The job's one clock: every timestamp glmm-ab writes (run ids, started, finished, published,
the demo's anchor) is a UTC instant from :func:`utc_now`, stored as a naive TIMESTAMP in UTC."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    """Now in UTC, naive (the warehouse's TIMESTAMP columns hold UTC), to the second."""
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
