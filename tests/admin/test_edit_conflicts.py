"""Two editors, two processes, one Redis: an edit sent with `If-Match` applies only to the
version it was made on, checked where the write happens, so of two edits made on the same
version one wins and the other gets 412 — never both. Memory mode alike."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import yaml

from tests.support.redis import RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire

CONFIG: dict[str, Any] = {
    "write_keys": ["k"],
    "campaigns": [{
        "id": "welcome",
        "status": "published",
        "trigger": {"event": "Signed Up"},
        "action": {"webhook": {"url": "http://127.0.0.1:9/hook", "body": {"n": 0}}},
    }],
}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def etag(server: Tripwire) -> str:
    answer = server.admin_get("/admin/api/campaigns/welcome")
    assert answer.status_code == 200, answer.text
    return answer.headers["etag"]


def patch(server: Tripwire, tag: str, name: str) -> int:
    headers = {**AUTH, "If-Match": tag, "Content-Type": "application/merge-patch+json"}
    answer = server.client.patch(
        "/admin/api/campaigns/welcome", content=f'{{"name": "{name}"}}', headers=headers
    )
    return answer.status_code


def race(servers: list[Tripwire], rounds: int) -> None:
    """Each round, one edit per server on the version they all read: exactly one wins."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for round_ in range(rounds):
            tag = etag(servers[0])
            names = [f"edit {round_}.{n}" for n in range(len(servers))]
            statuses = list(pool.map(patch, servers, [tag] * len(servers), names))
            assert sorted(statuses) == [200] + [412] * (len(servers) - 1), statuses


def test_two_processes_never_both_win_an_edit_of_one_version(redis_server: RedisServer) -> None:
    store = ["--store", redis_server.url]
    with run_tripwire(CONFIG, args=store) as first, run_tripwire(CONFIG, args=store) as second:
        race([first, second], rounds=8)
        # a stale version sent to the process that did not make the change: 412 at once
        old = etag(first)
        assert patch(first, old, "fresh") == 200
        assert patch(second, old, "stale") == 412


def test_two_editors_on_one_memory_mode_process_never_both_win() -> None:
    with run_tripwire(CONFIG) as server:
        race([server, server], rounds=4)


def save_in_dashboard(server: Tripwire, version: str, name: str) -> int:
    """Save the campaign through the dashboard's editor form (logged in with the token)."""
    with httpx.Client(base_url=server.url, trust_env=False) as browser:
        login = browser.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert login.status_code == 303
        source = yaml.safe_dump({**CONFIG["campaigns"][0], "name": name})
        answer = browser.post(
            "/admin/campaigns/welcome",
            data={"source": source, "version": version},
            headers={"Origin": server.url},
        )
        return answer.status_code


def test_two_dashboard_editors_on_two_processes_never_both_win(
    redis_server: RedisServer,
) -> None:
    store = ["--store", redis_server.url]
    with (
        run_tripwire(CONFIG, args=store) as first,
        run_tripwire(CONFIG, args=store) as second,
        ThreadPoolExecutor(2) as pool,
    ):
        for round_ in range(6):
            version = etag(first)
            statuses = list(pool.map(
                save_in_dashboard, [first, second], [version] * 2,
                [f"dashboard {round_}.{n}" for n in range(2)],
            ))
            assert sorted(statuses) == [303, 400], statuses  # saved; refused, text kept
