"""The nightly schedule: a Prefect deployment of the flow, served by ``glmm-ab serve``.

``serve_nightly`` registers the deployment ``glmm-ab-nightly/<name>`` with a cron
schedule (default 03:00 every day, in a configurable time zone) on the Prefect
server at ``PREFECT_API_URL`` and then runs, in this process, every flow run the
server hands it: the scheduled ones and any triggered from the UI, the CLI
(``prefect deployment run glmm-ab-nightly/nightly``) or the API. At most one
run at a time: two nightly runs would only queue on the warehouse's write lock.
``prefect.yaml`` declares the same deployment for a work pool, the Prefect way
for teams that run workers.
"""
from __future__ import annotations

from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from pydantic import ValidationError

from .nightly import nightly

DEFAULT_CRON = "0 3 * * *"


def nightly_schedule(cron: str = DEFAULT_CRON, timezone: str = "UTC") -> CronSchedule:
    """A validated cron schedule; ValueError naming the bad cron string or time zone."""
    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"bad schedule (--cron {cron!r}, --timezone {timezone!r}): {problems}") from None


def serve_nightly(name: str, schedule: CronSchedule, parameters: dict) -> None:
    """Register the deployment and serve its runs until interrupted (blocks)."""
    nightly.serve(
        name=name,
        schedule=schedule,
        parameters=parameters,
        limit=1,
        description="glmm-ab nightly: dbt, one GLMM fit per experiment x metric, results, BI copy.",
        tags=["glmm-ab"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
