"""A database connection for synchronous code, such as an ``on_committed`` hook."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


class SyncReader:
    """A connection usable from synchronous code (an ``on_committed`` hook): it runs on its
    own event loop in a thread, so blocking on it does not need the caller's loop."""

    def __init__(self, dsn: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection = self._call(asyncpg.connect(dsn))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def fetchval(self, query: str, *args: object) -> Any:
        """Run ``query`` on the reader's connection and wait for its value."""
        return self._call(self._conn.fetchval(query, *args))

    def close(self) -> None:
        """Close the connection and stop the thread."""
        self._call(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
