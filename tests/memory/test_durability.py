"""Memory mode keeps what it accepted: real `tripwire serve` processes, killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml

from collector.delivery.outbox import Envelope
from collector.store import identity
from collector.webhook import WebhookRequest
from tests.support.mounts import fill, tmpfs
from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.redis import RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink

WRITE_KEY = "test-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def config(sink: Sink, *campaigns: dict[str, Any]) -> dict[str, Any]:
    """A config whose campaigns post to the sink."""
    return {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True},
        "campaigns": list(campaigns),
    }


def once_per_user(sink: Sink, id_: str, event: str) -> dict[str, Any]:
    """A published campaign firing at most once per user, posting the visitor to the sink."""
    return {
        "id": id_,
        "status": "published",
        "trigger": {"event": event},
        "frequency": {"per": "user", "max_total": 1},
        "action": {
            "webhook": {
                "url": f"{sink.url}/{id_}",
                "body": {"visitor": "#{visitor_id}", "event": "#{event_id}"},
            }
        },
    }


def track(event: str, anonymous_id: str, **extra: Any) -> dict[str, Any]:
    """One track message with a fresh messageId."""
    return {
        "writeKey": WRITE_KEY,
        "type": "track",
        "event": event,
        "anonymousId": anonymous_id,
        "messageId": uuid.uuid4().hex,
        **extra,
    }


def kill(server: Tripwire) -> None:
    """SIGKILL the server, as a crash or the OOM killer would."""
    server.process.kill()
    server.process.wait()


def test_kill_9_mid_burst_loses_no_webhook_and_fires_no_campaign_twice(tmp_path: Path) -> None:
    sink = Sink().start()
    sink.stop()  # the target is down: every delivery fails while the first server runs
    cfg = config(sink, once_per_user(sink, "welcome", "Signed Up"))
    accepted: dict[str, str] = {}  # visitor -> messageId of a 200-answered event
    with run_tripwire(cfg, data_dir=tmp_path) as server:
        lock = threading.Lock()
        stop = threading.Event()

        def send(worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=5, trust_env=False) as client:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    visitor = f"v{worker}-{i}"
                    message = track("Signed Up", visitor)
                    try:
                        response = client.post("/v1/track", json=message)
                    except httpx.TransportError:
                        return  # killed while this request was in flight: not accepted
                    if response.status_code == 200:
                        with lock:
                            accepted[visitor] = message["messageId"]

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(accepted) >= 300, timeout=30, message="300 accepted events")
        kill(server)  # mid-burst: requests are in flight
        stop.set()
        for thread in threads:
            thread.join()
    assert sink.requests == []
    with sink, run_tripwire(cfg, data_dir=tmp_path) as server:
        # The webhooks the accepted events queued arrive from the outbox the restart recovered.
        def arrived() -> dict[str, str]:
            return {r.json()["visitor"]: r.json()["event"] for r in sink.requests}

        wait_until(
            lambda: accepted.items() <= arrived().items(),
            timeout=60,
            interval=0.2,
            message="the webhook of every accepted event",
        )
        # Every visitor sends the event again: the campaign already fired for each of them.
        fired = {"campaign": "welcome", "outcome": "fired", "reason": ""}
        fired_before = server.metric("tripwire_campaign_decisions_total", **fired)
        for visitor in accepted:
            assert server.post("/v1/track", track("Signed Up", visitor)).status_code == 200
        assert server.metric("tripwire_campaign_decisions_total", **fired) == fired_before
        # at-least-once: a resend carries the same webhook-id
        ids_by_visitor: dict[str, set[str]] = {}
        for request in sink.requests:
            visitor = request.json()["visitor"]
            ids_by_visitor.setdefault(visitor, set()).add(request.headers["webhook-id"])
        assert {v: ids for v, ids in ids_by_visitor.items() if len(ids) > 1} == {}


def test_kill_9_right_after_an_admin_edit_keeps_the_edit(tmp_path: Path) -> None:
    with Sink() as sink:
        cfg = config(sink, once_per_user(sink, "welcome", "Signed Up"))
        edited = {**once_per_user(sink, "welcome", "Subscribed"), "name": "Edited live"}
        added = once_per_user(sink, "added", "Paid")
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            put = server.client.put("/admin/api/campaigns/welcome", json=edited, headers=ADMIN)
            assert put.status_code == 200, put.text
            created = server.client.put("/admin/api/campaigns/added", json=added, headers=ADMIN)
            assert created.status_code in (200, 201), created.text
            kill(server)
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            campaigns = server.admin_get("/admin/api/campaigns").raise_for_status().json()
            listed = {c["id"]: c for c in _campaign_list(campaigns)}
            assert set(listed) == {"welcome", "added"}
            assert listed["welcome"]["trigger"]["event"] == "Subscribed"
            # the dashboard shows which campaigns differ from the file
            page = server.client.get("/admin/", headers=ADMIN)
            rows = {
                row.split('"', 1)[0]: row for row in page.text.split('<tr data-campaign="')[1:]
            }
            assert "edited here" in rows["welcome"] and "edited here" in rows["added"]
            # the edit is what runs, not the file's version
            assert server.post("/v1/track", track("Signed Up", "a")).status_code == 200
            assert server.post("/v1/track", track("Subscribed", "a")).status_code == 200
            (only,) = sink.wait_for(1)
            assert only.path == "/welcome"
            # a deletion is kept too
            deleted = server.client.delete("/admin/api/campaigns/added", headers=ADMIN)
            assert deleted.status_code in (200, 204)
            kill(server)
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            campaigns = server.admin_get("/admin/api/campaigns").raise_for_status().json()
            assert {c["id"] for c in _campaign_list(campaigns)} == {"welcome"}


def _campaign_list(payload: Any) -> list[dict[str, Any]]:
    return list(payload["campaigns"] if isinstance(payload, dict) else payload)


def test_the_delivery_log_survives_a_kill_and_campaign_counts_a_restart(tmp_path: Path) -> None:
    with Sink() as sink:
        cfg = config(sink, once_per_user(sink, "welcome", "Signed Up"))
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            for visitor in ("a", "b", "c"):
                assert server.post("/v1/track", track("Signed Up", visitor)).status_code == 200
            sink.wait_for(3)

            def logged() -> list[Any]:
                entries = deliveries(server)
                return entries if len(entries) >= 3 else []

            wait_until(logged, message="three delivery log entries")
            # an answered request is written with everything staged before it, so once this
            # event (which no campaign takes) is answered, the log entries are on disk too
            assert server.post("/v1/track", track("Viewed", "a")).status_code == 200
            kill(server)
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            assert sorted(e["status"] for e in deliveries(server)) == ["delivered"] * 3
            assert server.post("/v1/track", track("Signed Up", "d")).status_code == 200
            assert server.post("/v1/track", track("Signed Up", "d")).status_code == 200
            stats = _welcome_stats(server)
            assert stats["fired"] >= 1 and stats["suppressed"] == {"frequency": 1}
            server.process.terminate()  # a clean stop: the counts are saved as they are
            assert server.process.wait(30) in (0, -signal.SIGTERM)
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            assert _welcome_stats(server) == stats
            assert len(deliveries(server)) == 4


def deliveries(server: Tripwire) -> list[Any]:
    """The delivery log, newest first."""
    body = server.admin_get("/admin/api/deliveries?limit=100").json()
    entries: list[Any] = body["deliveries"] if isinstance(body, dict) else body
    return entries


def _welcome_stats(server: Tripwire) -> dict[str, Any]:
    payload = server.admin_get("/admin/api/campaigns/welcome").raise_for_status().json()
    stats: dict[str, Any] = payload["stats"]
    return stats


def test_extreme_and_unicode_values_round_trip_across_a_kill(tmp_path: Path) -> None:
    big, small = 2**63 - 1, -(2**63 - 1)
    deep: dict[str, Any] = {"leaf": "🌸 桜 \u0000 end"}
    for level in range(10):
        deep = {f"level-{level}-ü": deep}
    traits = {"big": big, "small": small, "deep": deep, "name": "Zoë 😀", "ratio": 1e308}
    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        message = {
            "writeKey": WRITE_KEY,
            "type": "identify",
            "anonymousId": "värden",
            "userId": "user-ö",
            "traits": traits,
            "messageId": uuid.uuid4().hex,
        }
        assert server.post("/v1/identify", message).status_code == 200
        before = server.user("user-ö")
        kill(server)
    with run_tripwire({"write_keys": [WRITE_KEY]}, data_dir=tmp_path) as server:
        after = server.user("user-ö")
        assert after is not None and before is not None
        assert after["profile"]["traits"] == traits
        assert after == before


def test_a_data_dir_left_by_a_version_before_the_log_is_imported_once(tmp_path: Path) -> None:
    # What versions that saved at a clean stop left: state.msgpack and outbox.msgpack.
    sink = Sink().start()
    cfg = config(sink, once_per_user(sink, "welcome", "Signed Up"))
    now = time.time()
    key = identity.anonymous("returning")
    state = {  # a profile as those versions encoded it: a map of its fields by name
        "key": key,
        "anonymous_ids": ["returning"],
        "traits": {"plan": "pro"},
        "first_seen": now - 3600,
        "last_seen": now - 60,
        "caps": {"welcome": [1, 0, 0, 0, 0]},  # the campaign fired for them before the upgrade
    }
    saved_state = {"users": {key: state}, "index": {key: key}, "seen": [], "recent": {}}
    (tmp_path / "state.msgpack").write_bytes(msgspec.msgpack.encode(saved_state))
    unsent = WebhookRequest(
        webhook_id="msg_before_the_upgrade",
        campaign_id="welcome",
        variant_id=None,
        user_key=key,
        event_id="m-before",
        method="POST",
        url=f"{sink.url}/welcome",
        headers={},
        body={"visitor": "returning", "event": "m-before"},
        created_at=now - 60,
    )
    pending = Envelope(request=unsent, enqueued_at=now - 60, due_at=now - 60)
    saved_outbox = {"version": 1, "pending": [pending], "dead": [], "usage": {}}
    (tmp_path / "outbox.msgpack").write_bytes(msgspec.msgpack.encode(saved_outbox))
    try:
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            wait_until(
                lambda: [r.json()["event"] for r in sink.requests] == ["m-before"],
                message="the webhook the earlier version had not sent",
            )
            profile = server.user("returning")
            assert profile is not None and profile["profile"]["traits"] == {"plan": "pro"}
            kill(server)  # what was imported is in the log already
        assert sorted(path.name for path in tmp_path.glob("*.imported")) == [
            "outbox.msgpack.imported",
            "state.msgpack.imported",
        ]
        with run_tripwire(cfg, data_dir=tmp_path) as server:
            profile = server.user("returning")
            assert profile is not None and profile["profile"]["traits"] == {"plan": "pro"}
            assert server.post("/v1/track", track("Signed Up", "returning")).status_code == 200
            fired = {"campaign": "welcome", "outcome": "fired", "reason": ""}
            assert server.metric("tripwire_campaign_decisions_total", **fired) == 0
        # (a kill may resend a delivery of its last moments; nothing new was sent)
        assert {r.json()["event"] for r in sink.requests} == {"m-before"}
    finally:
        sink.stop()


def test_a_data_dir_that_is_a_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file")
    result = serve_once(not_a_dir)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert str(not_a_dir) in line and "not a directory" in line


def every_event(sink: Sink, id_: str, event: str) -> dict[str, Any]:
    """A published campaign firing on every event, posting the event's id to the sink."""
    return {**once_per_user(sink, id_, event), "frequency": {"per": "event"}}


def test_a_full_disk_answers_503_then_recovers_losing_nothing() -> None:
    padding = "x" * 16_000  # each event grows the database by about this much
    with tmpfs("4m") as disk, Sink() as sink:
        cfg = config(sink, every_event(sink, "every", "Clicked"))
        with run_tripwire(cfg, data_dir=disk / "data") as server:
            early = track("Clicked", "early")
            assert server.post("/v1/track", early).status_code == 200
            filler = fill(disk)
            answered: dict[str, int] = {early["messageId"]: 200}
            refused: list[dict[str, Any]] = []
            retry_after: set[str | None] = set()
            for i in range(2000):
                message = track("Clicked", f"v{i}", properties={"padding": padding})
                response = server.post("/v1/track", message)
                answered[message["messageId"]] = response.status_code
                if response.status_code == 503:
                    refused.append(message)
                    retry_after.add(response.headers.get("retry-after"))
                    if len(refused) == 5:
                        break
            assert set(answered.values()) <= {200, 503}
            assert len(refused) == 5
            assert retry_after and None not in retry_after
            ready = server.client.get("/readyz")
            assert ready.status_code == 503
            assert "disk full" in ready.json()["reason"]
            filler.unlink()  # space is back: it recovers by itself
            wait_until(lambda: server.client.get("/readyz").status_code == 200, timeout=15)
            for message in refused:  # the client retries what was refused
                assert server.post("/v1/track", message).status_code == 200
            accepted = {m for m, status in answered.items() if status == 200}
            accepted |= {m["messageId"] for m in refused}
            wait_until(
                lambda: accepted <= {r.json()["event"] for r in sink.requests},
                timeout=30,
                message="a webhook for every accepted event",
            )
            kill(server)
        with run_tripwire(cfg, data_dir=disk / "data") as server:
            for i in range(len(answered) - 1):
                assert server.user(f"v{i}") is not None, f"profile v{i} lost"


def test_a_save_failing_at_stop_exits_non_zero_with_a_message() -> None:
    with tmpfs("4m") as disk, Sink() as sink:
        cfg = config(sink, every_event(sink, "every", "Clicked"))
        with run_tripwire(cfg, data_dir=disk / "data") as server:
            filler = fill(disk)
            refused = None
            for i in range(2000):
                message = track("Clicked", f"v{i}", properties={"padding": "x" * 16_000})
                if server.post("/v1/track", message).status_code == 503:
                    refused = message
                    break
            assert refused is not None, "the full disk was never noticed"
            server.process.terminate()
            assert server.process.wait(30) == 1
            assert "tripwire: the last changes could not be saved" in server.output()
        filler.unlink()
        with run_tripwire(cfg, data_dir=disk / "data") as server:
            assert server.post("/v1/track", refused).status_code == 200
            wait_until(lambda: refused["messageId"] in {r.json()["event"] for r in sink.requests})


def test_an_unwritable_data_dir_stops_the_start_with_one_line() -> None:
    with tmpfs("1m", read_only=True) as read_only:
        for data_dir, problem in (
            (read_only, "not writable"),
            (read_only / "data", "cannot be created"),
        ):
            result = serve_once(data_dir)
            assert result.returncode != 0
            (line,) = result.stderr.strip().splitlines()
            assert str(data_dir) in line and problem in line


def serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `tripwire serve` with this data directory, expecting it to refuse to start."""
    with tempfile.TemporaryDirectory() as work:
        config_file = Path(work) / "tripwire.json"
        config_file.write_text('{"write_keys": ["k"]}')
        command = [sys.executable, "-m", "collector.cli", "serve", "--config", str(config_file)]
        command += ["--port", str(free_port()), "--data-dir", str(data_dir)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def export(*args: str) -> str:
    """`tripwire export` with these options: the YAML it prints."""
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "export", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def edit_campaigns(server: Tripwire, sink: Sink) -> None:
    """Edit one campaign of the file, delete the other, add a third."""
    edited = {**once_per_user(sink, "welcome", "Subscribed"), "name": "Edited live"}
    put = server.client.put("/admin/api/campaigns/welcome", json=edited, headers=ADMIN)
    assert put.status_code == 200, put.text
    gone = server.client.delete("/admin/api/campaigns/nudge", headers=ADMIN)
    assert gone.status_code in (200, 204)
    added = once_per_user(sink, "added", "Paid")
    created = server.client.put("/admin/api/campaigns/added", json=added, headers=ADMIN)
    assert created.status_code in (200, 201), created.text


def check_export(text: str, tmp_path: Path) -> None:
    """The exported file is a valid config holding the live campaigns."""
    exported = yaml.safe_load(text)
    assert [c["id"] for c in exported["campaigns"]] == ["welcome", "added"]
    assert exported["campaigns"][0]["name"] == "Edited live"
    assert exported["campaigns"][0]["trigger"] == {"event": "Subscribed"}
    assert exported["write_keys"] == [WRITE_KEY]
    path = tmp_path / "exported.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "2 campaigns" in checked.stdout


def test_export_writes_the_live_campaigns_back_to_yaml(tmp_path: Path) -> None:
    with Sink() as sink:
        cfg = config(
            sink, once_per_user(sink, "welcome", "Signed Up"), once_per_user(sink, "nudge", "Left")
        )
        config_file = tmp_path / "tripwire.yaml"
        config_file.write_text(yaml.safe_dump(cfg))
        data_dir = tmp_path / "data"
        with run_tripwire(cfg, data_dir=data_dir) as server:
            edit_campaigns(server, sink)
            # while it runs
            text = export("--config", str(config_file), "--data-dir", str(data_dir))
        check_export(text, tmp_path)


def test_redis_mode_keeps_campaign_edits_across_a_restart_and_exports_them(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with Sink() as sink:
        cfg = config(
            sink, once_per_user(sink, "welcome", "Signed Up"), once_per_user(sink, "nudge", "Left")
        )
        store = ["--store", redis_server.url]
        with run_tripwire(cfg, args=store) as server:
            edit_campaigns(server, sink)
            kill(server)
        with run_tripwire(cfg, args=store) as server:
            campaigns = server.admin_get("/admin/api/campaigns").raise_for_status().json()
            listed = {c["id"]: c for c in _campaign_list(campaigns)}
            assert set(listed) == {"welcome", "added"}
            assert listed["welcome"]["trigger"]["event"] == "Subscribed"
        config_file = tmp_path / "tripwire.yaml"
        config_file.write_text(yaml.safe_dump(cfg))
        check_export(export("--config", str(config_file), "--store", redis_server.url), tmp_path)


def test_redis_mode_counts_every_process_and_keeps_the_counts(redis_server: RedisServer) -> None:
    with Sink() as sink:
        cfg = config(sink, once_per_user(sink, "welcome", "Signed Up"))
        store = ["--store", redis_server.url]
        with run_tripwire(cfg, args=store) as first, run_tripwire(cfg, args=store) as second:
            for n, server in enumerate((first, second, first)):
                assert server.post("/v1/track", track("Signed Up", f"v{n}")).status_code == 200
            assert second.post("/v1/track", track("Signed Up", "v0")).status_code == 200
            wanted = {"fired": 3, "suppressed": {"frequency": 1}}
            for server in (first, second):
                wait_until(
                    lambda server=server: _welcome_stats(server) == wanted,  # type: ignore[misc]
                    timeout=5,
                    message="every process's counts",
                )
        with run_tripwire(cfg, args=store) as server:
            assert _welcome_stats(server) == wanted
