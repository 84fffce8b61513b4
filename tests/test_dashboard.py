"""The dashboard: Streamlit's AppTest on the published copy, and end to end in headless Chromium
(Debian's package, installed here when missing) while a nightly run replaces the copy underneath."""
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from flows.warehouse.duckdb_publish import default_bi_path
from pipeline_helpers import EXE, copy_one_experiment, copy_warehouse, debian_package, free_port, sql

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def app_test(bi: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GLMM_AB_BI_PATH", str(bi))
    return AppTest.from_file(APP, default_timeout=60)


def latest_row(bi, experiment, metric, variant):
    return sql(bi, "SELECT * FROM rpt_experiment_results_latest WHERE experiment_id = ? AND metric_id = ? AND variant = ?",
               [experiment, metric, variant]).row(0, named=True)


def test_app_shows_lift_decision_diagnostics_pictures_and_health(demo_run, monkeypatch):
    bi = default_bi_path(demo_run[0])
    at = app_test(bi, monkeypatch).run()
    assert not at.exception
    assert at.sidebar.selectbox(key="experiment").options == ["checkout_button", "onboarding_flow", "pricing_copy"]
    assert at.header[0].value == "checkout_button · add_to_cart"
    row = latest_row(bi, "checkout_button", "add_to_cart", "treatment")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Relative lift"] == f"{row['relative_lift_median']:+.1%}"  # the median leads
    assert metrics["P(beat control)"] == f"{row['prob_beat_control']:.1%}"
    badges = [m for m in at.markdown.values if "-badge[" in m]
    decision = {"ship": "Ship", "keep_control": "Keep control", "inconclusive": "Inconclusive", "invalid": "Invalid"}
    assert any(f"Decision: {decision[row['decision']]}" in b for b in badges)
    assert any("R-hat" in b for b in badges) and any("SRM p" in b for b in badges)
    assert any("Health: " in b for b in badges)
    charts = at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart")
    assert len(charts) == 5  # history, rate density, trace, per-user predictive, predictive check
    planted = {"user_in_several_variants", "duplicate_event_id", "events_before_exposure"}  # the demo's dirty rows
    assert planted <= set(at.dataframe[1].value["issue"])
    assert at.dataframe[2].value.shape[0] == 12  # the health panel: every experiment x metric
    # it opens on every experiment's decision, newest experiment first, as rpt_experiment_decisions has it
    overview = at.dataframe[0].value
    decisions = sql(bi, "SELECT * FROM rpt_experiment_decisions ORDER BY experiment_start_at DESC, variant")
    assert overview["experiment"].tolist() == decisions["experiment_id"].to_list()
    assert overview["experiment"].tolist()[0] == "pricing_copy"  # the newest of the demo's three
    labels = {"blocked_by_guardrail": "Blocked by a guardrail", **decision}
    assert overview["decision"].tolist() == [labels[d] for d in decisions["decision"]]
    assert overview["primary_lift"].tolist() == [
        f"{d['primary_relative_lift_mean']:+.1%} [{d['primary_relative_lift_low']:+.1%}, {d['primary_relative_lift_high']:+.1%}]"
        for d in decisions.iter_rows(named=True)]
    # the page opened on a guardrail: its chance of dropping beyond the tolerance
    assert f"Guardrail: P(drop beyond its tolerated 5%) {row['prob_drop_beyond_tolerance']:.1%}" in \
        [c.value for c in at.caption]
    # a count metric, adjusted for its users' pre-period counts: what that did to the interval
    assert row["covariate"] == "pre_period" and 0 < row["covariate_sd_ratio"] < 1.5
    assert any("pre-period covariate" in c.value and f"posterior sd x {row['covariate_sd_ratio']:.2f}" in c.value
               for c in at.caption)

    # a three-arm experiment: one lift block per treatment
    at.sidebar.selectbox(key="experiment").select("onboarding_flow").run()
    at.sidebar.selectbox(key="metric").select("purchases").run()
    assert not at.exception
    assert at.header[0].value == "onboarding_flow · purchases"
    assert [s.value for s in at.subheader][:2] == ["short_form vs control", "video_intro vs control"]
    # three arms: P(best) of each arm, read from the same row the report holds
    best = {v: latest_row(bi, "onboarding_flow", "purchases", v) for v in ("short_form", "video_intro")}
    captions = " ".join(c.value for c in at.caption)
    assert f"P(best of 3 arms) {best['short_form']['prob_best_control']:.1%}" in captions  # the control's
    for row in best.values():
        assert f"P(best of 3 arms) {row['prob_best']:.1%}" in captions

    at.sidebar.selectbox(key="metric").select("converted").run()
    assert not at.exception and any("A conversion metric" in c.value for c in at.caption)
    assert "Segments" in [s.value for s in at.subheader]
    assert any("No segment breakdown" in c.value for c in at.caption)  # a secondary metric: none

    # the primary metric of the experiment with platforms: its segments, as rpt_segment_lift_latest has them
    at.sidebar.selectbox(key="experiment").select("checkout_button").run()
    at.sidebar.selectbox(key="metric").select("purchases").run()
    assert not at.exception
    segments = sql(bi, "SELECT * FROM rpt_segment_lift_latest WHERE experiment_id = 'checkout_button' "
                       "AND metric_id = 'purchases' ORDER BY segment")
    assert segments["segment"].to_list() == ["(none)", "android", "ios", "web"]
    shown = next(d.value for d in at.dataframe if "segment" in d.value.columns)
    assert shown["segment"].tolist() == segments["segment"].to_list()
    assert shown["relative_lift"].tolist() == pytest.approx(segments["relative_lift_mean"].to_list())
    spread = segments.row(0, named=True)
    assert any(f"median {spread['effect_spread_median']:.2f}" in c.value and "platform" in c.value
               for c in at.caption)


def test_ids_from_raw_data_are_shown_as_text_not_rendered_as_markdown(demo_run, monkeypatch, tmp_path):
    """A variant or experiment id is raw data: an image link, emphasis or a colour directive in it stays text."""
    bi = copy_warehouse(default_bi_path(demo_run[0]), tmp_path)
    hostile = "![x](http://tracker.invalid/p.png) **now** :red[alarm] $x$"
    con = duckdb.connect(str(bi))
    try:
        con.execute("UPDATE main.rpt_experiment_results_latest SET variant = ? "
                    "WHERE experiment_id = 'checkout_button' AND metric_id = 'add_to_cart'", [hostile])
    finally:
        con.close()
    at = app_test(bi, monkeypatch).run()
    assert not at.exception
    shown = at.subheader[0].value
    assert shown.endswith(" vs control")
    for active in ("![", "](", "**", ":red[", "$x$"):  # each would render as markdown unescaped
        assert active not in shown, active
    assert shown.replace("\\", "") == f"{hostile} vs control"  # escapes only: the id reads as it is


def test_app_says_plainly_when_nothing_is_published(tmp_path, monkeypatch):
    at = app_test(tmp_path / "nothing.duckdb", monkeypatch).run()
    assert not at.exception
    assert "no published results" in at.error[0].value and "glmm-ab demo" in at.error[0].value


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium: installed with apt-get by the test setup when the machine lacks it."""
    return debian_package("chromium", "chromium")


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer at {url} within {timeout} s")


def test_dashboard_in_chromium_while_a_nightly_run_replaces_the_copy(demo_run, chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    warehouse = copy_one_experiment(demo_run[0], tmp_path / "wh")  # the run replaces pricing_copy's answers
    bi = default_bi_path(demo_run[0])
    bi_copy = copy_warehouse(bi, tmp_path / "wh")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GLMM_AB_BI_PATH": ""}
    server = subprocess.Popen([EXE, "dashboard", "--published", str(bi_copy), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    nightly_run = None
    try:
        wait_healthy(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            def rendered() -> str:
                """Load the page, wait until everything is drawn; the run id it says it shows."""
                page.goto(url, wait_until="domcontentloaded")
                caption = page.get_by_text(re.compile(r"^Published run \S+ at"))
                caption.wait_for(timeout=60_000)
                page.locator("[data-testid='stMetricValue']").first.wait_for(timeout=60_000)
                page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 5",
                                       timeout=60_000)
                assert page.locator("[data-testid='stException']").count() == 0
                return caption.inner_text().split()[2]

            old_run = sql(bi_copy, "SELECT run_id FROM bi_publication")["run_id"][0]
            assert rendered() == old_run
            row = latest_row(bi_copy, "checkout_button", "add_to_cart", "treatment")
            values = page.locator("[data-testid='stMetricValue']").all_inner_texts()
            assert values[:2] == [f"{row['relative_lift_median']:+.1%}", f"{row['prob_beat_control']:.1%}"]
            for heading in ("Chance to win over time", "Estimated rate by arm", "Trace plot", "Per-user predictive", "Health"):
                assert page.get_by_role("heading", name=heading).count() == 1, heading

            # the picker: choose another experiment in the sidebar
            page.locator("[data-testid='stSelectbox']").first.click()
            page.get_by_role("option", name="pricing_copy").click()
            page.get_by_text("pricing_copy · add_to_cart").wait_for(timeout=30_000)
            page.get_by_text("new_copy vs old_copy").wait_for(timeout=30_000)

            # a nightly run publishes a new copy while the dashboard keeps answering from the old one
            nightly_run = subprocess.Popen(
                [EXE, "run", "--warehouse", str(warehouse), "--publish-to", str(bi_copy),
                 "--chains", "2", "--warmup", "200", "--samples", "300", "--no-segments"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"})
            shown = []
            while nightly_run.poll() is None:
                shown.append(rendered())
            output = nightly_run.stdout.read()
            assert nightly_run.returncode == 0, output[-3000:]
            new_run = sql(bi_copy, "SELECT run_id FROM bi_publication")["run_id"][0]
            assert new_run != old_run and shown and set(shown) <= {old_run, new_run}
            assert rendered() == new_run
            ARTIFACTS.mkdir(exist_ok=True)
            page.set_viewport_size({"width": 1400, "height": 2400})
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            browser.close()
    finally:
        if nightly_run is not None and nightly_run.poll() is None:
            nightly_run.kill()
        server.terminate()
        server.wait(timeout=30)
    # terminating `glmm-ab dashboard` stops the server itself: nothing keeps the port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 50_000
