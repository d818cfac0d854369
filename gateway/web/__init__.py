"""The browser client (``web/``, built to ``web/dist``) as an engine extension.

:class:`WebClient` registers the fallback prefix ``/`` (``gateway.extension.FALLBACK_PREFIX``):
it answers the paths that neither the engine (``/api/``, ``/connection/``, ``/health``,
``/metrics``) nor another extension (the chat's ``/v1/``) takes. The composition root
installs it when ``web.enabled``; the files are read once at start (static.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.extension import FALLBACK_PREFIX, Engine, Registration

if TYPE_CHECKING:
    from gateway.http import Answer, RequestHead


class WebClient:
    """Serves the built client's files at ``/``."""

    name = "web"

    def __init__(self) -> None:
        self._root: Path | None = None

    def register(self, engine: Engine) -> Registration:
        """Only the fallback prefix: the client talks to ``/v1/`` and the WebSocket."""
        configured = engine.settings.web.dir
        self._root = Path(configured) if configured else None
        return Registration(http_prefixes={FALLBACK_PREFIX: self._http})

    async def start(self) -> None:
        """Read the files now (and log whether the client is built), not at the first hit."""
        from gateway.web import static

        static.site(self._root)

    async def stop(self) -> None:
        """Nothing to release: the files stay cached for the process."""

    async def _http(self, head: RequestHead, body: bytes) -> Answer:
        from gateway.web import static

        return static.site(self._root).handle(head)
