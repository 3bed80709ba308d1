"""Webhook delivery end to end: a real dispatcher sending to real HTTP sinks on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from collector import __version__
from collector.config.schema import WebhookSettings
from collector.delivery.breaker import BreakerPolicy
from collector.delivery.dispatcher import Backoff, Dispatcher
from collector.delivery.log import DeliveryAttempt, DeliveryLog
from collector.delivery.outbox import OutboxClosed
from collector.delivery.sender import parse_retry_after
from collector.memory.disk import Disk
from collector.memory.outbox import MemoryOutbox
from collector.webhook import WebhookRequest
from tests.support.poll import wait_until_async
from tests.support.sink import HANG, Reply, Sink

SECRET_OLD = "whsec_" + base64.b64encode(b"tripwire test secret: old one").decode()
SECRET_NEW = "whsec_" + base64.b64encode(b"tripwire test secret: new one").decode()


def webhook(
    url: str,
    *,
    method: str = "POST",
    body: Any = None,
    headers: dict[str, str] | None = None,
    campaign: str = "cart-followup",
) -> WebhookRequest:
    """A rendered webhook as the engine would put it on the outbox."""
    return WebhookRequest(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        campaign_id=campaign,
        variant_id=None,
        user_key="user:u-1",
        event_id=str(uuid.uuid4()),
        method=method,
        url=url,
        headers=headers or {},
        body={"user_id": "u-1", "viewed_path": "/cart"} if body is None else body,
        created_at=time.time(),
    )


class Harness:
    """A started dispatcher with its outbox, log and metrics registry."""

    def __init__(self, data_dir: Path, settings: WebhookSettings, **options: Any) -> None:
        self.disk = Disk(data_dir)
        self.disk.open()
        self.outbox = MemoryOutbox(self.disk)
        self.log = DeliveryLog()
        self.registry = CollectorRegistry()
        self.dispatcher = Dispatcher(self.outbox, settings, self.log, self.registry, **options)

    async def send(self, *requests: WebhookRequest) -> None:
        await self.outbox.put(requests)

    async def wait_log(
        self, *, count: int = 1, timeout: float = 10.0, **filters: Any
    ) -> list[DeliveryAttempt]:
        """Wait until the log holds `count` matching attempts; return them oldest first."""

        async def found() -> list[DeliveryAttempt]:
            entries = await self.log.query(limit=100_000, **filters)
            return entries[::-1] if len(entries) >= count else []

        return await wait_until_async(
            found, timeout, message=f"{count} log entries matching {filters}"
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    harnesses: list[Harness] = []

    async def _start(
        *,
        data_dir: Path | None = None,
        backoff: Backoff | None = None,
        breaker: BreakerPolicy | None = None,
        **settings: Any,
    ) -> Harness:
        values: dict[str, Any] = {
            "signing_secrets": [SECRET_NEW],
            "timeout": 5.0,
            "allow_private_networks": True,
            **settings,
        }
        harness = Harness(
            data_dir or tmp_path,
            WebhookSettings(**values),
            backoff=backoff or Backoff(base=0.05, cap=0.5),
            breaker=breaker,
        )
        harness.disk.start()
        await harness.dispatcher.start()
        harnesses.append(harness)
        return harness

    yield _start
    for harness in harnesses:
        await harness.dispatcher.stop(grace=0.5)
        await harness.disk.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


async def test_every_delivery_verifies_with_either_secret_during_rotation(
    start: Start, sink: Sink
) -> None:
    harness = await start(signing_secrets=[SECRET_OLD, SECRET_NEW])
    methods = ["POST", "PUT", "PATCH", "DELETE", "GET"]
    await harness.send(*(webhook(f"{sink.url}/hook", method=m) for m in methods))
    received = await sink.wait_for_async(len(methods))
    assert sorted(r.method for r in received) == sorted(methods)
    for request in received:
        for secret in (SECRET_OLD, SECRET_NEW):
            signed = request.body or json.dumps(request.target).encode()  # a GET: its target
            Webhook(secret).verify(signed, request.headers)
        assert request.headers["user-agent"] == f"Tripwire/{__version__}"
    await harness.wait_log(status="delivered", count=len(methods))


async def test_transient_failures_are_retried_with_one_webhook_id(start: Start) -> None:
    with Sink(503, 503, Reply(429, headers={"Retry-After": "1"}), 200) as sink:
        harness = await start()
        request = webhook(f"{sink.url}/hook")
        await harness.send(request)
        attempts = await sink.wait_for_async(4)
        entries = await harness.wait_log(delivery_id=request.webhook_id, status="delivered")
    assert {a.headers["webhook-id"] for a in attempts} == {request.webhook_id}
    for attempt in attempts:
        Webhook(SECRET_NEW).verify(attempt.body, attempt.headers)
    assert attempts[3].received_mono - attempts[2].received_mono >= 0.95  # Retry-After: 1
    history = await harness.log.query(delivery_id=request.webhook_id)
    assert [e.status for e in reversed(history)] == ["retrying"] * 3 + ["delivered"]
    assert [e.status_code for e in reversed(history)] == [503, 503, 429, 200]
    assert [e.attempt for e in reversed(history)] == [1, 2, 3, 4]
    assert len(entries) == 1
    assert harness.metric("tripwire_webhook_deliveries_total", outcome="retrying") == 3
    assert harness.outbox.depth() == 0


@pytest.mark.parametrize(
    "reply",
    [
        Reply(400, body="bad field: email\n" * 500),
        Reply(302, headers={"Location": "/elsewhere"}, body="moved\n" * 1000),
    ],
)
async def test_a_client_error_or_redirect_gets_exactly_one_attempt(
    start: Start, reply: Reply
) -> None:
    with Sink(default=reply) as sink:
        harness = await start()
        request = webhook(f"{sink.url}/hook")
        await harness.send(request)
        (entry,) = await harness.wait_log(status="failed")
        assert [r.path for r in sink.requests] == ["/hook"]  # no retry, redirect not followed
    assert entry.status_code == reply.status
    assert entry.response is not None and len(entry.response) == 4096
    assert entry.response.startswith(str(reply.body)[:5])
    assert harness.outbox.depth() == 0  # nothing scheduled: no second attempt
    (letter,) = await harness.outbox.dead_letters()
    assert (letter.delivery_id, letter.status, letter.attempts) == (request.webhook_id, "failed", 1)


async def test_a_retry_that_would_land_past_max_age_dead_letters_at_once(start: Start) -> None:
    with Sink(default=Reply(503, headers={"Retry-After": "3600"})) as sink:
        harness = await start(max_age=60.0)
        await harness.send(webhook(f"{sink.url}/hook"))
        (entry,) = await harness.wait_log(status="dead")
        assert len(sink.requests) == 1
    assert (entry.attempt, entry.status_code) == (1, 503)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None


async def test_a_receiver_down_for_five_seconds_gets_the_delivery_when_it_comes_up(
    start: Start,
) -> None:
    sink = Sink().start()
    sink.stop()  # its port is now closed: connections are refused
    harness = await start(
        backoff=Backoff(base=0.5, cap=4.0),
        breaker=BreakerPolicy(threshold=3, cooldown=1.0, max_cooldown=4.0),
    )
    began = time.monotonic()
    request = webhook(f"{sink.url}/hook")
    await harness.send(request)
    failures = await harness.wait_log(status="retrying", count=2)
    assert all("ConnectError" in (entry.error or "") for entry in failures)
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - began)))  # the receiver's downtime
    with sink:
        (received,) = await sink.wait_for_async(1, timeout=20)
        await harness.wait_log(status="delivered")
    assert received.headers["webhook-id"] == request.webhook_id
    assert received.received_mono - began >= 5.0


async def test_a_hanging_endpoint_neither_delays_others_nor_loses_its_deliveries(
    start: Start, tmp_path: Path
) -> None:
    with Sink(default=HANG) as hanging, Sink() as healthy:
        harness = await start(timeout=30.0, concurrency_per_endpoint=8)
        stuck = [webhook(f"{hanging.url}/slow") for _ in range(40)]
        await harness.send(*stuck)
        await hanging.wait_for_async(8)  # every connection it allows is now held
        await harness.send(*(webhook(f"{healthy.url}/fast") for _ in range(200)))
        # All 200 arrive while the hanging endpoint still holds its 8 requests, which only its
        # 30 s timeout would end: nothing waited behind it. (How fast: benchmarks.bench_delivery.)
        await healthy.wait_for_async(200, timeout=20)
        logged = await harness.log.query(limit=1000)
        assert all("/slow" not in entry.url for entry in logged)  # none of them ended yet
        assert len(hanging.requests) == 8

        # Shutdown: in-flight requests get the grace period, then all 40 are kept on disk.
        await harness.dispatcher.stop(grace=0.2)
        with pytest.raises(OutboxClosed):
            await harness.outbox.put([webhook(f"{healthy.url}/late")])
        await harness.disk.close()

        hanging.set_default(200)
        hanging.release()
        restarted = await start()
        assert restarted.outbox.depth() == 40
        wanted = {request.webhook_id for request in stuck}
        await hanging.wait_until_async(
            lambda got: wanted <= {r.headers["webhook-id"] for r in got[8:]}, timeout=15
        )
        await restarted.wait_log(status="delivered", count=40)


async def test_loopback_targets_are_refused_unless_private_networks_are_allowed(
    start: Start,
) -> None:
    with Sink() as v4, Sink(host="::1") as v6:
        harness = await start(allow_private_networks=False)
        targets = [
            f"http://127.0.0.1:{v4.port}/hook",
            f"http://[::1]:{v6.port}/hook",
            f"http://localhost:{v4.port}/hook",
            f"http://[::ffff:127.0.0.1]:{v4.port}/hook",
            f"http://2130706433:{v4.port}/hook",
        ]
        await harness.send(*(webhook(url) for url in targets))
        refused = await harness.wait_log(status="refused", count=len(targets))
        test_fire = await harness.dispatcher.send_now(webhook(f"http://127.0.0.1:{v4.port}/t"))
        assert v4.requests == [] and v6.requests == []
    assert all("loopback" in (entry.error or "") for entry in refused)
    assert test_fire.status == "refused"
    assert harness.outbox.depth() == 0  # refusals are not retried
    assert harness.metric("tripwire_webhook_deliveries_total", outcome="refused") == 6
    letters = await harness.outbox.dead_letters()
    assert {letter.status for letter in letters} == {"refused"}


async def test_get_puts_the_body_in_the_query_and_others_send_json(
    start: Start, sink: Sink
) -> None:
    harness = await start()
    body = {"user_id": "u-1", "spent": 42, "vip": True, "tags": ["a", "b"], "src": "body"}
    await harness.send(
        webhook(f"{sink.url}/get?src=url&list=1", method="GET", body=body),
        webhook(f"{sink.url}/post", body={"n": 1}),
        webhook(
            f"{sink.url}/put", method="PUT", body={"n": 2}, headers={"CONTENT-TYPE": "text/x-ok"}
        ),
    )
    received = {r.path: r for r in await sink.wait_for_async(3)}
    got = received["/get"]
    assert got.params == {
        "src": ["body"],
        "list": ["1"],
        "user_id": ["u-1"],
        "spent": ["42"],
        "vip": ["true"],
        "tags": ["a", "b"],
    }
    assert got.body == b"" and "content-type" not in got.headers
    assert Webhook(SECRET_NEW).verify(json.dumps(got.target), got.headers) == got.target
    with pytest.raises(WebhookVerificationError):  # the query is signed: it cannot be altered
        Webhook(SECRET_NEW).verify(json.dumps(got.target.replace("u-1", "u-2")), got.headers)
    assert received["/post"].headers["content-type"] == "application/json"
    assert received["/post"].json() == {"n": 1}
    assert received["/put"].headers["content-type"] == "text/x-ok"
    assert received["/put"].json() == {"n": 2}


async def test_a_header_with_cr_or_lf_is_refused_without_harm(start: Start, sink: Sink) -> None:
    harness = await start()
    evil = webhook(f"{sink.url}/hook", headers={"X-Note": "ok\r\nX-Injected: 1"})
    await harness.send(evil)
    (entry,) = await harness.wait_log(status="failed")
    assert "CR, LF" in (entry.error or "")
    await harness.send(webhook(f"{sink.url}/next", headers={"X-Note": "fine"}))
    (received,) = await sink.wait_for_async(1)
    assert received.path == "/next" and received.headers["x-note"] == "fine"


async def test_a_header_with_user_data_in_any_language_is_sent_as_utf8(
    start: Start, sink: Sink
) -> None:
    harness = await start()
    await harness.send(webhook(f"{sink.url}/hook", headers={"X-Name": "山田 太郎"}))
    (received,) = await sink.wait_for_async(1)
    assert received.headers["x-name"].encode("latin-1").decode("utf-8") == "山田 太郎"


async def test_410_pauses_the_campaigns_endpoint_and_says_so(start: Start, sink: Sink) -> None:
    sink.set_default(410)
    harness = await start()
    await harness.send(webhook(f"{sink.url}/hook", campaign="gone"))
    (first,) = await harness.wait_log(status="paused")
    assert first.status_code == 410
    (paused,) = harness.dispatcher.paused()
    assert paused.campaign_id == "gone" and paused.endpoint == f"http://127.0.0.1:{sink.port}"
    assert harness.metric("tripwire_webhook_endpoints_paused") == 1
    sink.set_default(200)
    await harness.send(webhook(f"{sink.url}/again", campaign="gone"))
    await harness.send(webhook(f"{sink.url}/other", campaign="other"))
    await harness.wait_log(status="paused", count=2)
    assert [r.path for r in await sink.wait_for_async(2)] == ["/hook", "/other"]
    assert "410 Gone" in paused.reason
    assert harness.dispatcher.resume("gone") == 1
    await harness.send(webhook(f"{sink.url}/resumed", campaign="gone"))
    await sink.wait_until_async(lambda got: got[-1].path == "/resumed")


async def test_the_monthly_quota_suppresses_deliveries_once_reached(
    start: Start, sink: Sink
) -> None:
    harness = await start(monthly_quota=2)
    await harness.send(*(webhook(f"{sink.url}/hook") for _ in range(3)))
    await harness.wait_log(status="delivered", count=2)
    (suppressed,) = await harness.wait_log(status="quota_exceeded")
    assert "quota" in (suppressed.error or "")
    assert len(sink.requests) == 2
    assert harness.metric("tripwire_webhook_deliveries_total", outcome="quota_exceeded") == 1

    await harness.dispatcher.stop()  # the month's count survives a restart
    restarted = await start(monthly_quota=2)
    await restarted.send(webhook(f"{sink.url}/hook"))
    await restarted.wait_log(status="quota_exceeded")
    assert len(sink.requests) == 2


async def test_dead_letters_can_be_replayed_one_by_one(start: Start) -> None:
    with Sink(*[500] * 6) as sink:
        harness = await start(max_attempts=2)
        request = webhook(f"{sink.url}/one", campaign="a")
        await harness.send(request)
        (dead,) = await harness.wait_log(status="dead")
        assert dead.attempt == 2 and dead.status_code == 500
        others = [webhook(f"{sink.url}/b", campaign="b"), webhook(f"{sink.url}/c", campaign="c")]
        await harness.send(*others)
        await harness.wait_log(status="dead", count=3)
        assert len(sink.requests) == 6

        replayed = await harness.dispatcher.replay(request.webhook_id)
        assert replayed.delivery_ids == [request.webhook_id]
        await harness.wait_log(status="delivered", delivery_id=request.webhook_id)
        assert sink.requests[-1].headers["webhook-id"] == request.webhook_id
        assert (await harness.dispatcher.replay(request.webhook_id)).count == 0  # not dead now

        assert (await harness.dispatcher.replay(others[1].webhook_id + "x")).count == 0
        again = await harness.dispatcher.replay(others[0].webhook_id)
        assert again.delivery_ids == [others[0].webhook_id]
        await harness.wait_log(status="delivered", count=2)
    assert [r.path for r in sink.requests[6:]] == ["/one", "/b"]
    (left,) = await harness.outbox.dead_letters()
    assert left.request.campaign_id == "c"


async def test_the_log_masks_secrets_and_answers_queries(start: Start, sink: Sink) -> None:
    harness = await start()
    url = f"http://admin:hunter2@127.0.0.1:{sink.port}/hook?token=s3cret&src=tw"
    await harness.send(webhook(url, campaign="a"), webhook(f"{sink.url}/x", campaign="b"))
    await harness.wait_log(status="delivered", count=2)
    (entry,) = await harness.log.query(campaign="a", status="delivered", limit=5)
    assert entry.url == f"http://***@127.0.0.1:{sink.port}/hook?token=***&src=***"
    assert "hunter2" not in repr(entry) and "s3cret" not in repr(entry)
    assert entry.latency_ms is not None and entry.user_key == "user:u-1"
    assert len(await harness.log.query(limit=1)) == 1
    assert await harness.log.query(status="dead") == []


async def test_a_test_fire_sends_once_and_reports_the_answer(start: Start) -> None:
    with Sink(default=Reply(202, body="thanks")) as sink:
        harness = await start()
        result = await harness.dispatcher.send_now(webhook(f"{sink.url}/test"))
        assert len(sink.requests) == 1
    assert (result.status, result.status_code, result.response) == ("delivered", 202, "thanks")
    assert await harness.log.query() == [result]


async def test_putting_the_same_webhook_twice_queues_it_once() -> None:
    outbox = MemoryOutbox()
    await outbox.open()
    request = webhook("http://127.0.0.1:9/hook")
    await outbox.put([request, request])
    await outbox.put([request])
    assert outbox.depth() == 1
