"""Delivery of the event outbox (``integ_outbox``) to apps' events URLs.

Chat writes only insert outbox rows inside their own transaction; this sender, a task of
its own, does the network part, so a slow or dead app never delays a send. Per (app,
channel) only the oldest pending event is in flight: a later event of the same channel
waits until the earlier one is delivered or dead-lettered, so an app that was down gets
everything, in order per channel, once it is back. Failures retry after
``event_backoff * 2^attempts`` seconds (capped at ``event_backoff_max``); after
``event_max_attempts`` the event is dead-lettered and listed for admins
(``GET /v1/apps/{id}/outbox?state=dead``). Several nodes may run the sender: a lease on the
row keeps an event from going out twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from storage.apps import AppQueries

if TYPE_CHECKING:
    from gateway.integrations.service import IntegrationService

log = logging.getLogger(__name__)

BATCH = 200
"""Heads read per scan (distinct (app, channel) queues)."""
LEASE_SECONDS = 60.0


class Outbox:
    """The sender task."""

    def __init__(self, service: IntegrationService) -> None:
        self.service = service
        self.settings = service.settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away for a moment: retried next period
                log.warning("outbox scan failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.event_poll_interval)
            self._wake.clear()

    async def scan(self) -> int:
        """Start delivering every due head; returns how many started."""
        db = self.service.chat.db
        async with db.read() as q:
            heads = await AppQueries(q.c).due_heads(BATCH)
            started = 0
            for head in heads:
                if not await AppQueries(q.c).lease(head["id"], LEASE_SECONDS):
                    continue  # another node took it
                task = asyncio.get_running_loop().create_task(self._deliver(head))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                started += 1
        return started

    def envelope(self, row: Any) -> bytes:
        """Slack's Events API envelope around a queued event."""
        event = orjson.loads(row["event"])
        from gateway.integrations.service import TEAM_ID

        return orjson.dumps({
            "token": "", "team_id": TEAM_ID, "api_app_id": row["app_id"], "event": event,
            "type": "event_callback", "event_id": f"Ev{row['id']:010d}",
            "event_time": int(row["created_at"].timestamp()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": f"bot.{row['app_id'].lower()}",
                                "is_bot": True, "enterprise_id": None, "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": f"{row['app_id']}-{row['channel_id']}"})

    async def _deliver(self, row: Any) -> None:
        error = ""
        ok = False
        if not row["enabled"]:
            error = "app disabled"
        elif not row["events_url"]:
            error = "no events URL"
        else:
            try:
                status, _ = await self.service.call_app(
                    row["app_id"], row["events_url"], self.envelope(row), "application/json",
                    self.settings.event_timeout)
                ok = 200 <= status < 300
                error = "" if ok else f"HTTP {status}"
            except TimeoutError:
                error = "timeout"
            except Exception as exc:  # refused, reset, DNS: the app is down
                error = f"{type(exc).__name__}: {exc}"[:300]
        async with self.service.chat.db.read() as q:
            a = AppQueries(q.c)
            if ok:
                await a.delivered(row["id"])
            else:
                delay = min(self.settings.event_backoff * 2 ** row["attempts"], self.settings.event_backoff_max)
                state = await a.failed(row["id"], error=error, retry_in=delay,
                                       max_attempts=self.settings.event_max_attempts)
                if state == "dead":
                    log.warning("event %s for app %s dead-lettered after %s attempts: %s",
                                row["id"], row["app_id"], row["attempts"] + 1, error)
        # The next event of this queue (or the retry's turn) needs a scan.
        if ok:
            self.wake()
        else:
            asyncio.get_running_loop().call_later(
                min(self.settings.event_backoff * 2 ** row["attempts"], self.settings.event_backoff_max) + 0.01,
                self.wake)
