"""The connection to Redis or Redis Cluster shared by the store, outbox, log and campaign sync.

The mode is found from the server the URL names: `INFO cluster` says `cluster_enabled:1` on a
cluster node, and then redis-py's cluster client is used. Connecting is lazy and repeated, so a
process whose Redis is down starts anyway, reports not ready, answers 503, and carries on when
Redis is back. Every Redis error is translated here into `collector.errors.Unavailable`.

This module and the Redis store are the only ones that import `redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from collector.errors import Unavailable
from collector.redis import scripts
from collector.redis.keys import CLUSTER_SHARDS, Keys
from collector.store.turns import Gathering

log = logging.getLogger("tripwire.redis")

Client = aioredis.Redis | RedisCluster
Command = tuple[Any, ...]  # ("METHOD", *args) as sent by `execute_command`

RETRY_AFTER = 2  # seconds a client is asked to wait while Redis is unavailable
_TIMEOUT = 5.0  # socket timeout; blocking reads block for less


class RedisConnection:
    """One lazily opened client for a redis:// URL, in single or cluster mode."""

    def __init__(self, url: str, **client_options: Any) -> None:
        self.url = url
        self._options = client_options
        self._client: Client | None = None
        self._pipelines: Pipelines | None = None  # a single server's (a cluster's: redis-py's)
        self._lock = asyncio.Lock()
        self.keys = Keys(1)
        self.cluster = False
        self.round_trips = 0  # pipelines and single commands sent (for tests and metrics)

    async def client(self) -> Client:
        """The connected client; connects (and detects the mode) on first use or after a failure."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                with translate("connecting to Redis"):
                    self._client = await self._connect()
        return self._client

    async def _connect(self) -> Client:
        options: dict[str, Any] = {
            "socket_timeout": _TIMEOUT,
            "socket_connect_timeout": 2.0,
            **self._options,
        }
        probe = aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **options)
        try:
            info = await probe.info("cluster")
        finally:
            await probe.aclose()
        client: Client
        if info.get("cluster_enabled") in (1, "1"):
            client = RedisCluster.from_url(self.url, retry=Retry(NoBackoff(), 2), **options)
            await client.initialize()
            self.cluster = True
            self.keys = Keys(CLUSTER_SHARDS)
        else:
            client = aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 1), **options)
            self._pipelines = Pipelines(client)
        self.round_trips += 1
        for script in scripts.ALL:
            await client.script_load(script.source)
        log.info("connected to %s (%s)", self.url, "cluster" if self.cluster else "single server")
        return client

    async def names(self) -> Keys:
        """The key names for the mode of the server (connecting first if need be)."""
        await self.client()
        return self.keys

    async def close(self) -> None:
        """Close every connection."""
        client, self._client = self._client, None
        pipelines, self._pipelines = self._pipelines, None
        if pipelines is not None:
            await pipelines.close()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> bool:
        """True when Redis answers."""
        try:
            client = await self.client()
            self.round_trips += 1
            return bool(await client.ping())
        except (Unavailable, RedisError, OSError):
            return False

    async def pipeline(self, commands: Sequence[Command], what: str) -> list[Any]:
        """Send commands in one round trip (per cluster node, in parallel); return their results.

        Results that are errors are returned, not raised, except connection errors, which raise
        `Unavailable`. Scripts the server forgot are loaded and their commands sent again.
        """
        if not commands:
            return []
        client = await self.client()
        with translate(what):
            results = await self._send(client, commands)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in scripts.ALL:
                    await client.script_load(script.source)
                again = await self._send(client, [commands[i] for i in missing])
                for index, result in zip(missing, again, strict=True):
                    results[index] = result
        return results

    async def _send(self, client: Client, commands: Sequence[Command]) -> list[Any]:
        self.round_trips += 1
        if self._pipelines is not None:
            results = await self._pipelines.send(commands)
        else:
            pipe = client.pipeline()
            for command in commands:
                pipe.execute_command(*command)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, RedisError) and not isinstance(result, ResponseError):
                raise result
        return results

    async def call(self, *command: Any, what: str) -> Any:
        """Send one command and return its result."""
        client = await self.client()
        with translate(what):
            self.round_trips += 1
            try:
                return await client.execute_command(*command)
            except NoScriptError:
                for script in scripts.ALL:
                    await client.script_load(script.source)
                return await client.execute_command(*command)


class Pipelines:
    """Pipelines to a single server, the pipelines of concurrent requests sent together.

    redis-py's pipeline encoded every argument in Python, took its connection from the pool
    under a lock with a probe of the socket, and set a timer per write and per reply: together
    most of what a request cost this process. Here each command is packed by hiredis in one
    call, the connections are kept in a plain list (a connection goes back only with every
    reply read, else it is dropped), and one watchdog disconnects the connections whose
    exchange outlasts the socket timeout. Connections are made and set up (auth, database,
    protocol) by redis-py, with the client's options, and a lost connection is retried as the
    client's `Retry` says.

    The pipelines sent during one turn of the event loop go out together at its end, in one
    write on one connection, their replies read back in one go (group commit, as the data
    directory does): under load a round trip to Redis — a write, a wake-up, a read, most of
    it in the kernel — is shared by every request that needed one meanwhile, instead of each
    paying its own. Each pipeline's commands stay together and in order; as before, another
    pipeline's may run between two of them (a pipeline is not a transaction).
    """

    def __init__(self, client: aioredis.Redis) -> None:
        pool = client.connection_pool
        options = dict(pool.connection_kwargs)
        self._timeout = options.get("socket_timeout") or _TIMEOUT
        options["socket_timeout"] = None  # the watchdog times every exchange out as a whole
        self._options = options
        self._class: type[AbstractConnection] = pool.connection_class
        self._idle: list[AbstractConnection] = []
        self._callbacks: dict[str, Any] = {}  # command name -> the client's reply callback
        self._client = client
        self._closed = False
        self._busy: dict[AbstractConnection, float] = {}  # connection -> when its exchange began
        self._watchdog: asyncio.Task[None] | None = None
        # the pipelines of a turn, sent at its end
        self._turn: Gathering[Sequence[Command], list[Any]] = Gathering(self._send_group)

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in one pipeline and return their replies (error replies
        included), sent with the other pipelines of this turn of the event loop."""
        return await self._turn.add(commands)

    async def _send_group(self, group: list[Sequence[Command]]) -> list[list[Any]]:
        """Send a group of pipelines in one write on one connection; each one's replies."""
        commands = [command for pipeline in group for command in pipeline]
        packed = b"".join([pack_command(command) for command in commands])
        connection = self._idle.pop() if self._idle else self._class(**self._options)
        replies: list[Any] = await connection.retry.call_with_retry(
            lambda: self._exchange(connection, packed, commands),
            lambda _: connection.disconnect(),
        )
        if self._closed:
            await connection.disconnect()
        else:
            self._idle.append(connection)
        each: list[list[Any]] = []
        start = 0
        for pipeline in group:
            each.append(replies[start : start + len(pipeline)])
            start += len(pipeline)
        return each

    async def _exchange(
        self, connection: AbstractConnection, packed: bytes, commands: Sequence[Command]
    ) -> list[Any]:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="tripwire-redis-watchdog")
        self._busy[connection] = time.monotonic()
        try:
            await connection.send_packed_command(packed, check_health=False)
            results: list[Any] = []
            for command in commands:
                try:
                    reply = await connection.read_response()
                except ResponseError as error:
                    results.append(error)
                    continue
                callback = self._callback(command[0])
                results.append(reply if callback is None else callback(reply))
            return results
        except BaseException:
            await connection.disconnect(nowait=True)  # replies may be left unread
            raise
        finally:
            del self._busy[connection]

    async def _watch(self) -> None:
        """Disconnect connections whose exchange has lasted longer than the timeout: the reads
        waiting on them fail, as a socket timeout would make them (one timer for all rather
        than one per exchange, which cost as much as the exchange)."""
        while not self._closed:
            await asyncio.sleep(self._timeout / 4)
            overdue = time.monotonic() - self._timeout
            for connection, began in list(self._busy.items()):
                if began < overdue:
                    log.warning("no answer from Redis within %s s: reconnecting", self._timeout)
                    await connection.disconnect(nowait=True)

    def _callback(self, name: str) -> Any:
        """The client's callback shaping a command's reply (as its pipeline would), or None."""
        try:
            return self._callbacks[name]
        except KeyError:
            callback = self._callbacks[name] = self._client.response_callbacks.get(name)
            return callback

    async def close(self) -> None:
        """Disconnect the idle connections, and the others as their exchange ends."""
        self._closed = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()


def evalsha(script: scripts.Script, keys: Sequence[str], args: Sequence[Any]) -> Command:
    """The command running a script by SHA."""
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn any Redis error raised inside into `Unavailable` (503 with Retry-After)."""
    try:
        yield
    except Unavailable:
        raise
    except (RedisError, OSError) as exc:
        log.warning("Redis unavailable while %s: %s", what, exc)
        raise Unavailable(
            f"the state store is unavailable ({what}); retry shortly", retry_after=RETRY_AFTER
        ) from exc


def is_error(result: Any) -> bool:
    """True when a pipelined result is an error reply."""
    return isinstance(result, RedisError)


def error_text(result: Any) -> str:
    """The message of a pipelined error reply."""
    return str(result)


def raise_errors(results: Sequence[Any]) -> None:
    """Fail the request on an error reply (a script bug or a key of the wrong type)."""
    for result in results:
        if is_error(result):
            log.error("Redis refused a store command: %s", result)
            raise Unavailable("the state store refused a command", retry_after=RETRY_AFTER)
