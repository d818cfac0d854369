"""The built web client (``web/dist``) served at ``/``.

Files are read into memory once at start (a Vite build is a few files, ~150 KB): hashed
assets under ``/assets/`` are cached for a year (a new build has new names), ``index.html``
is revalidated on every load so a deploy is picked up at once. Every answer carries a
strict Content-Security-Policy: scripts, styles and connections from this origin only, no
inline code, no framing. Text files are gzipped once at load when that saves bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import mimetypes
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from gateway.http import Answer, RequestHead

log = logging.getLogger("sentchat.web")

# The repository's build output (an editable install runs from the checkout).
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "web" / "dist"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Worth compressing; images and fonts are compressed already.
_TEXT = ("text/", "application/javascript", "application/json", "image/svg+xml", "application/manifest+json")
_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
          ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
          ".ico": "image/x-icon", ".woff2": "font/woff2", ".webmanifest": "application/manifest+json",
          ".txt": "text/plain; charset=utf-8", ".map": "application/json"}
MAX_FILE = 8 * 1024 * 1024


class _File(NamedTuple):
    body: bytes
    gz: bytes | None
    ctype: str
    etag: str
    cache: str


def _content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class StaticSite:
    """The files of one build directory, answering GET and HEAD."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or DEFAULT_ROOT
        self.files: dict[str, _File] = {}
        index = self.root / "index.html"
        if not index.is_file():
            log.warning("web client not built (%s missing): / answers 404; build it with "
                        "`npm ci --prefix web && npm run build --prefix web`", index)
            return
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE:
                continue
            rel = "/" + path.relative_to(self.root).as_posix()
            body = path.read_bytes()
            ctype = _content_type(path)
            gz = None
            if ctype.startswith(_TEXT) and len(body) > 512:
                packed = gzip.compress(body, compresslevel=9, mtime=0)
                gz = packed if len(packed) < len(body) * 0.9 else None
            cache = IMMUTABLE if rel.startswith("/assets/") else REVALIDATE
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self.files[rel] = _File(body, gz, ctype, etag, cache)
        log.info("web client: serving %d files from %s at /", len(self.files), self.root)

    @property
    def available(self) -> bool:
        return "/index.html" in self.files

    def handle(self, head: RequestHead) -> Answer:
        """Answer a request for a path no other route took."""
        if not self.available:
            return 404, b"Not Found", "text/plain; charset=utf-8"
        path = head.path
        if ".." in PurePosixPath(path).parts or "\\" in path or "\x00" in path:
            return 400, b"Bad Request", "text/plain; charset=utf-8"
        if path == "/":
            path = "/index.html"
        f = self.files.get(path)
        if f is None:
            # No fallback to index.html: the client routes in the fragment (#/c/<id>), so
            # an unknown path is a real 404, as everywhere else on this port.
            return 404, b"Not Found", "text/plain; charset=utf-8"
        if head.method not in ("GET", "HEAD"):  # after the 404: a path that is not ours is not found
            return 405, b"Method Not Allowed", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"}
        headers = dict(SECURITY_HEADERS)
        headers["Cache-Control"] = f.cache
        headers["ETag"] = f.etag
        headers["Vary"] = "Accept-Encoding"
        if head.headers.get("if-none-match") == f.etag:
            return 304, b"", f.ctype, headers
        body = f.body
        if f.gz is not None and _accepts_gzip(head.headers.get("accept-encoding", "")):
            body = f.gz
            headers["Content-Encoding"] = "gzip"
        return 200, body, f.ctype, headers


def _accepts_gzip(value: str) -> bool:
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


_sites: dict[Path, StaticSite] = {}


def site(root: Path | None = None) -> StaticSite:
    """The site of ``root`` (default: ``$SENTCHAT_WEB_DIR`` or the repository's web/dist),
    loaded once per process."""
    import os

    path = root or Path(os.environ.get("SENTCHAT_WEB_DIR") or DEFAULT_ROOT)
    found = _sites.get(path)
    if found is None:
        found = _sites[path] = StaticSite(path)
    return found


def reload(root: Path | None = None) -> StaticSite:
    """Read the files again (tests build the client after a server started)."""
    import os

    path = root or Path(os.environ.get("SENTCHAT_WEB_DIR") or DEFAULT_ROOT)
    _sites.pop(path, None)
    return site(path)
