"""The fits fanned out on a real Dask LocalCluster (two worker processes): the same lift, to the bit,
as the sequential runner."""
from datetime import date, datetime, timedelta

import pytest

from flows.options import RunOptions
from flows.runners import check_spec, task_runner
from pipeline_helpers import copy_one_experiment, small, sql

pytest.importorskip("prefect_dask", reason="the dask extra is part of the test install")

TABLES = ("lift", "posterior_summary", "diagnostics")


def test_the_dask_runner_gives_the_sequential_runners_results(demo_run, nightly, tmp_path):
    # the night test_operations reruns: its programs are compiled once for both
    as_of = datetime.combine(date.today() - timedelta(days=2), datetime.min.time())
    reports = {}
    for runner in ("sequential", "dask"):
        path = copy_one_experiment(demo_run[0], tmp_path / runner)
        reports[runner] = (path, nightly(warehouse=str(path), as_of=as_of,
                                         options=small(publish_results=False, task_runner=runner)))
    for runner, (path, report) in reports.items():
        assert report.status == "succeeded" and report.failures.height == 0, (runner, report.failures)
    for table in TABLES:
        exclude = "run_id, sampling_seconds, total_seconds" if table == "diagnostics" else "run_id"
        query = f"SELECT * EXCLUDE ({exclude}) FROM glmm.{table} WHERE run_id = ? ORDER BY ALL"
        seq, dask = (sql(path, query, [report.run_id]) for path, report in (reports["sequential"], reports["dask"]))
        assert seq.height > 0 and seq.equals(dask), table
    # the dask run fitted in a subflow whose task runner was Dask's
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["glmm-ab-fits"])))
    assert [r.state.type.value for r in subflows] == ["COMPLETED"]
    assert subflows[0].parent_task_run_id is not None


def test_a_task_runner_is_named_or_refused():
    assert check_spec("dask://scheduler.internal:8786") == "dask://scheduler.internal:8786"
    for bad in ("threads", "dask://", "dask://host", "tcp://host:8786", ""):
        with pytest.raises(ValueError, match="task runner must be 'sequential', 'dask' or 'dask://HOST:PORT'"):
            RunOptions(task_runner=bad)
    assert type(task_runner("dask://10.0.0.5:8786")).__name__ == "DaskTaskRunner"
