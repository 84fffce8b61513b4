"""The temporary Prefect API a run starts for itself (flows/prefect_api.py): a real server process."""
import os

import httpx
import pytest

from flows import prefect_api
from flows.prefect_api import temporary_api


@pytest.fixture(autouse=True)
def no_configured_api(monkeypatch):
    """Each test starts with no API configured. Other tests of the session run flows under Prefect's
    test harness, which configures its server in this process's settings."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_a_temporary_api_answers_inside_the_block_and_is_gone_after(monkeypatch):
    started = []
    monkeypatch.setattr(prefect_api, "TemporaryApi", _recording(prefect_api.TemporaryApi, started))
    with temporary_api(while_starting=lambda: started.append("imports")) as url:
        assert url and os.environ["PREFECT_API_URL"] == url
        from prefect.settings import PREFECT_API_URL

        assert PREFECT_API_URL.value() == url  # what the flow's client reads
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    server, imports = started
    assert imports == "imports"  # the work to overlap ran while the server started
    assert server.process.poll() is not None and "PREFECT_API_URL" not in os.environ
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


def test_a_configured_api_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    started = []
    monkeypatch.setattr(prefect_api, "TemporaryApi", _recording(prefect_api.TemporaryApi, started))
    with temporary_api() as url:
        assert url is None and os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    assert started == []


def test_a_server_that_does_not_answer_in_time_is_stopped_and_named(monkeypatch):
    monkeypatch.setenv(prefect_api.STARTUP_TIMEOUT_ENV, "0.01")
    started = []
    monkeypatch.setattr(prefect_api, "TemporaryApi", _recording(prefect_api.TemporaryApi, started))
    with pytest.raises(RuntimeError, match="did not answer within 0.01 s.*PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT"):
        with temporary_api():
            pass
    assert started[0].process.poll() is not None and "PREFECT_API_URL" not in os.environ


def _recording(cls, into):
    def make():
        api = cls()
        into.append(api)
        return api
    return make
