"""Guessing and reusing credentials against a real `tripwire serve`: wrong admin tokens are
limited per client, a weak token is warned about, `/metrics` needs a token, and a dashboard
session ends when the admin token it was made with is no longer the token (Redis mode too)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.poll import wait_until
from tests.support.redis import RedisServer
from tests.support.server import ADMIN_TOKEN, METRICS_TOKEN, Tripwire, run_tripwire

CONFIG = {"write_keys": ["k"]}


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    with run_tripwire(CONFIG) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_metrics_answer_only_a_bearer_of_the_metrics_or_admin_token(tripwire: Tripwire) -> None:
    assert tripwire.client.get("/metrics").status_code == 401
    assert tripwire.client.get("/metrics", headers=bearer("k")).status_code == 401  # write key
    for token in (METRICS_TOKEN, ADMIN_TOKEN):
        answer = tripwire.client.get("/metrics", headers=bearer(token))
        assert answer.status_code == 200 and "tripwire_ingest_requests_total" in answer.text
    # the metrics token opens nothing admin
    assert tripwire.client.get("/admin/api/campaigns", headers=bearer(METRICS_TOKEN)).status_code \
        in (401, 429)


def test_metrics_are_off_without_any_token() -> None:
    env = {"TRIPWIRE_ADMIN_TOKEN": "", "TRIPWIRE_METRICS_TOKEN": ""}
    with run_tripwire(CONFIG, env=env) as server:
        assert server.client.get("/metrics").status_code == 404


def test_wrong_admin_tokens_are_refused_after_a_few_tries_even_the_right_one() -> None:
    with run_tripwire(CONFIG) as server:
        statuses = [
            server.client.get("/admin/api/campaigns", headers=bearer(f"guess-{n}")).status_code
            for n in range(30)
        ]
        assert statuses[:10] == [401] * 10
        assert set(statuses[10:]) == {429}
        refused = server.client.get("/admin/api/campaigns", headers=bearer(ADMIN_TOKEN))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        login = server.client.post("/admin/login", data={"token": "another-guess"})
        assert login.status_code == 429
        # the tries come back with time: the right token works again within seconds
        wait_until(
            lambda: server.client.get(
                "/admin/api/campaigns", headers=bearer(ADMIN_TOKEN)
            ).status_code == 200,
            timeout=10, interval=0.2, message="the admin token accepted again",
        )


def test_behind_a_proxy_on_loopback_wrong_tokens_are_limited_per_forwarded_client() -> None:
    # a reverse proxy on the same host names each client in X-Forwarded-For: one client's
    # guesses lock out that client, not everyone behind the proxy
    def status(client: str, token: str) -> int:
        headers = {**bearer(token), "X-Forwarded-For": client}
        return server.client.get("/admin/api/campaigns", headers=headers).status_code

    with run_tripwire(CONFIG) as server:
        statuses = [status("203.0.113.7", f"guess-{n}") for n in range(12)]
        assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
        assert status("203.0.113.7", ADMIN_TOKEN) == 429
        assert status("198.51.100.2", ADMIN_TOKEN) == 200  # another client behind the proxy


def test_a_weak_admin_token_is_warned_about_at_start(tripwire: Tripwire) -> None:
    with run_tripwire(CONFIG, env={"TRIPWIRE_ADMIN_TOKEN": "secret"}) as server:
        wait_until(lambda: "TRIPWIRE_ADMIN_TOKEN is easy to guess" in server.output(),
                   message="a warning about the weak token")
    assert "easy to guess" not in tripwire.output()  # the tests' tokens are long enough


def log_in(server: Tripwire, token: str) -> httpx.Cookies:
    answer = server.client.post("/admin/login", data={"token": token})
    assert answer.status_code == 303, answer.text
    cookies = httpx.Cookies()
    cookies.set("tripwire_admin", answer.cookies["tripwire_admin"])
    return cookies


def dashboard_status(server: Tripwire, cookies: httpx.Cookies) -> int:
    with httpx.Client(base_url=server.url, cookies=cookies, trust_env=False) as client:
        return client.get("/admin/").status_code


def test_a_session_ends_when_the_admin_token_changes_in_redis_mode(
    redis_server: RedisServer,
) -> None:
    store = ["--store", redis_server.url]
    first = "first-token-0123456789abcdef"
    second = "second-token-0123456789abcdef"
    with run_tripwire(CONFIG, args=store, env={"TRIPWIRE_ADMIN_TOKEN": first}) as server:
        cookies = log_in(server, first)
        assert dashboard_status(server, cookies) == 200
    # Redis keeps sessions across restarts: the same token keeps the session...
    with run_tripwire(CONFIG, args=store, env={"TRIPWIRE_ADMIN_TOKEN": first}) as server:
        assert dashboard_status(server, cookies) == 200
    # ...a new token ends it
    with run_tripwire(CONFIG, args=store, env={"TRIPWIRE_ADMIN_TOKEN": second}) as server:
        assert dashboard_status(server, cookies) == 303  # to the login page
        assert dashboard_status(server, log_in(server, second)) == 200
