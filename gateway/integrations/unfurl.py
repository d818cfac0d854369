"""Link previews (unfurling): Open Graph / oEmbed previews of http(s) links, Prism charts of
``sent://prism/dashboard/<name>`` and file metadata of ``sent://files/<path>``, fetched in the
background after a message's send was acknowledged and attached to it (``message.updated``).

Fetching a URL a user typed is a server-side request forgery risk: the server can reach
what the user cannot (loopback admin ports, the cloud metadata service, the office LAN). So
every hop of a fetch is checked before anything is sent:

- the scheme is http or https, the port one of ``unfurl_ports``, the host not denied;
- the name is resolved by :class:`GuardedResolver`, which refuses the whole answer when any
  address is loopback, private, link-local, multicast, unspecified, reserved, CGNAT or
  otherwise not global (IPv4-mapped IPv6 addresses are judged as the IPv4 they carry), unless
  an ``unfurl_allow`` entry names the host or the address;
- aiohttp connects to exactly the addresses that resolver returned (the resolver *is* the
  connector's DNS), so no second lookup can answer differently (DNS rebinding); IP literals,
  which aiohttp never hands to a resolver, are checked here before the request;
- redirects are followed by hand, at most ``unfurl_max_redirects``, each target checked
  like the first URL; the whole fetch has ``unfurl_timeout`` and the body ``unfurl_max_bytes``
  (counted after decompression); no cookies are stored or sent.

The Prism and file-metadata endpoints are the operator's own configuration (trusted): they
are called directly, with the same time and size limits.
"""

from __future__ import annotations

import asyncio
import codecs
import html.parser
import ipaddress
import logging
import re
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    import aiohttp

    from gateway.config import IntegrationSettings

log = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LINK = re.compile(r"(?:https?://|sent://)[^\s<>\"'`)\]]+", re.IGNORECASE)
_TRAILING = ".,;:!?*_~"
CACHE_ENTRIES = 10_000
TITLE_CHARS, DESCRIPTION_CHARS = 300, 1000
REDIRECTS = (301, 302, 303, 307, 308)
# Known metadata addresses, named in the refusal (they are also non-global, so refused anyway).
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}


class Refused(Exception):
    """A URL (or one of its redirects) that must not be fetched; the message says why."""


def links_in(text: str, limit: int) -> list[str]:
    """The distinct http(s) and sent:// links of a message, in order, at most ``limit``."""
    out: list[str] = []
    for m in _LINK.finditer(text):
        url = m.group(0).rstrip(_TRAILING)
        if len(url) <= 2000 and url not in out:
            out.append(url)
            if len(out) == limit:
                break
    return out


def refusal(ip: IpAddress) -> str | None:
    """Why an address must not be fetched (None: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:10.0.0.1 and 2002:0a00:0001:: reach the IPv4 host they embed.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return refusal(embedded)
    if ip in METADATA:
        return "cloud metadata address"
    for name in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{name}"):
            return f"{name.replace('_', '-')} address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "CGNAT address"
    if not ip.is_global:
        return "non-global address"
    return None


class Policy:
    """Which hosts, addresses and ports may be fetched (``[integrations] unfurl_*``)."""

    def __init__(self, settings: IntegrationSettings) -> None:
        self.ports = frozenset(settings.unfurl_ports)
        self.static = {k.lower(): ipaddress.ip_address(v) for k, v in settings.unfurl_resolve.items()}
        self.allow_hosts, self.allow_nets = _split(settings.unfurl_allow)
        self.deny_hosts, self.deny_nets = _split(settings.unfurl_deny)

    def check_url(self, url: str) -> tuple[str, int]:
        """Scheme, port and deny list of one hop; its (host, port)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise Refused(f"scheme {parts.scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise Refused("credentials in the URL")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise Refused("no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Refused("bad port") from None
        if port not in self.ports:
            raise Refused(f"port {port} is not in unfurl_ports")
        if _host_in(host, self.deny_hosts):
            raise Refused(f"{host} is denied")
        literal = _ip(host)
        if literal is not None:
            self.check_ip(host, literal)
        return host, port

    def check_ip(self, host: str, ip: IpAddress) -> None:
        """Refuse a non-public (or denied) address unless the host or address is allowed."""
        if any(ip in net for net in self.deny_nets):
            raise Refused(f"{ip} is denied")
        why = refusal(ip)
        if why is None:
            return
        if _host_in(host, self.allow_hosts) or any(ip in net for net in self.allow_nets):
            return
        raise Refused(f"{host} resolves to a {why} ({ip})")


def _ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _split(entries: list[str]) -> tuple[list[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    hosts, nets = [], []
    for entry in entries:
        if "/" in entry or _ip(entry) is not None:
            nets.append(ipaddress.ip_network(entry, strict=False))
        else:
            hosts.append(entry.lower().rstrip("."))
    return hosts, nets


def _host_in(host: str, entries: list[str]) -> bool:
    # ".example.com" covers every subdomain; "example.com" only itself.
    return any(host == e or (e.startswith(".") and host.endswith(e)) for e in entries)


class GuardedResolver(AbstractResolver):
    """aiohttp's DNS for preview fetches: resolves, refuses a non-public answer, and hands
    the connector exactly the addresses it checked (nothing resolves the name again)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        name = host.lower().rstrip(".")
        static = self.policy.static.get(name)
        if static is not None:
            answers: list[IpAddress] = [static]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
            answers = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not answers:
            raise OSError(f"{name}: no address")
        # One refused address refuses the name: an answer mixing a public and a private
        # address is how a rebinding attacker would pass a check of "any".
        for ip in answers:
            self.policy.check_ip(name, ip)
        return [ResolveResult(hostname=host, host=str(ip), port=port,
                              family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for ip in dict.fromkeys(answers)]

    async def close(self) -> None:
        """Nothing to close."""


class _Meta(html.parser.HTMLParser):
    """Open Graph / Twitter / plain meta tags, the title, and an oEmbed discovery link."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.title = ""
        self.oembed = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            key = (a.get("property") or a.get("name") or "").lower()
            if key and "content" in a:
                self.meta.setdefault(key, a["content"].strip())
        elif tag == "link" and "alternate" in a.get("rel", "").lower() \
                and a.get("type", "").lower() == "application/json+oembed":
            self.oembed = self.oembed or a.get("href", "")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and len(self.title) < TITLE_CHARS:
            self.title += data


def _http_url(value: Any, base: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    url = urljoin(base, value.strip())
    return url if url.startswith(("http://", "https://")) and len(url) <= 2000 else None


class Unfurler:
    """Previews of the links in messages, cached per URL; ``fetch_session`` is the guarded
    HTTP client for users' links, ``trusted`` the plain one for configured endpoints."""

    def __init__(self, settings: IntegrationSettings, trusted: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        self.trusted = trusted
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[str, tuple[float, dict[str, Any] | None]] = OrderedDict()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy),
                                             use_dns_cache=False, limit=50)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                headers={"User-Agent": "SENTchat-Unfurl/1 (link previews)",
                         "Accept": "text/html,application/xhtml+xml,application/json;q=0.9"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def previews(self, text: str) -> list[dict[str, Any]]:
        """Previews of the message's links that could be made (others are skipped)."""
        links = links_in(text, self.settings.unfurl_max_links)
        found = await asyncio.gather(*(self.preview(url) for url in links))
        return [p for p in found if p is not None]

    async def preview(self, url: str) -> dict[str, Any] | None:
        """One link's preview (None: refused, failed, or nothing to show), cached per URL
        for ``unfurl_cache_ttl``, failures included (a slow page is not retried per message)."""
        now = time.monotonic()
        hit = self._cache.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            async with asyncio.timeout(self.settings.unfurl_timeout):
                result = await self._make(url)
        except Refused as exc:
            log.info("unfurl %s refused: %s", url, exc)
            result = None
        except Exception as exc:  # timeout, too large, unreachable, not HTML: no preview
            log.info("unfurl %s failed: %r", url, exc)
            result = None
        self._cache[url] = (now + self.settings.unfurl_cache_ttl, result)
        self._cache.move_to_end(url)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return result

    async def _make(self, url: str) -> dict[str, Any] | None:
        if url.lower().startswith("sent://"):
            return await self._sent_link(url)
        host = (urlsplit(url).hostname or "").lower()
        if self.settings.files_url and _host_in(host, self.settings.file_hosts):
            return await self._file(url, urlsplit(url).path.lstrip("/"))
        final, ctype, body = await self.fetch(url)
        if "html" not in ctype:
            return None
        parser = _Meta()
        parser.feed(body.decode(_charset(ctype), "replace"))
        m = parser.meta
        preview: dict[str, Any] = {
            "type": "link", "url": url,
            "title": (m.get("og:title") or m.get("twitter:title") or parser.title.strip())[:TITLE_CHARS],
            "description": (m.get("og:description") or m.get("twitter:description")
                            or m.get("description") or "")[:DESCRIPTION_CHARS],
            "image": _http_url(m.get("og:image") or m.get("twitter:image"), final),
            "site_name": (m.get("og:site_name") or "")[:TITLE_CHARS]}
        oembed = _http_url(parser.oembed, final)
        if not m.get("og:title") and oembed is not None:
            await self._oembed(oembed, preview)
        return preview if preview["title"] or preview["description"] else None

    async def _oembed(self, url: str, preview: dict[str, Any]) -> None:
        """Fill a preview from the page's oEmbed JSON (fetched under the same checks)."""
        _, _, body = await self.fetch(url)
        data = orjson.loads(body)
        if not isinstance(data, dict):
            return
        if isinstance(data.get("title"), str):
            preview["title"] = data["title"][:TITLE_CHARS]
        if isinstance(data.get("provider_name"), str):
            preview["site_name"] = data["provider_name"][:TITLE_CHARS]
        if isinstance(data.get("author_name"), str) and not preview["description"]:
            preview["description"] = data["author_name"][:DESCRIPTION_CHARS]
        preview["image"] = preview["image"] or _http_url(data.get("thumbnail_url"), url)

    async def fetch(self, url: str) -> tuple[str, str, bytes]:
        """GET a user-supplied URL under the SSRF rules: (final URL, content type, body)."""
        import aiohttp

        for _ in range(self.settings.unfurl_max_redirects + 1):
            self.policy.check_url(url)
            async with self.session.get(url, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=self.settings.unfurl_timeout)) as resp:
                if resp.status in REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise Refused("redirect without Location")
                    url = urljoin(url, location)
                    continue
                if resp.status != 200:
                    raise Refused(f"HTTP {resp.status}")
                return url, resp.headers.get("Content-Type", "").lower(), await self._body(resp)
        raise Refused(f"more than {self.settings.unfurl_max_redirects} redirects")

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.unfurl_max_bytes
        if (resp.content_length or 0) > limit:
            raise Refused(f"body of {resp.content_length} bytes (limit {limit})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise Refused(f"body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # ---- sent:// links (configured, trusted endpoints) ---------------------------------

    async def _sent_link(self, url: str) -> dict[str, Any] | None:
        rest = url[len("sent://"):]
        m = re.fullmatch(r"prism/dashboard/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})", rest)
        if m is not None and self.settings.prism_url:
            return await self._chart(url, m.group(1))
        if rest.startswith("files/") and len(rest) > 6 and self.settings.files_url:
            return await self._file(url, rest[len("files/"):])
        return None

    async def _trusted_json(self, url: str) -> Any:
        import aiohttp

        async with self.trusted.get(url, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=self.settings.unfurl_timeout)) as resp:
            if resp.status != 200:
                raise Refused(f"{url}: HTTP {resp.status}")
            return orjson.loads(await self._body(resp))

    async def _chart(self, url: str, name: str) -> dict[str, Any] | None:
        """A Prism dashboard as a mini chart: title, series (name + numeric points), link."""
        data = await self._trusted_json(self.settings.prism_url.replace("{name}", quote(name, safe="")))
        if not isinstance(data, dict) or not isinstance(data.get("series"), list):
            return None
        series = []
        for one in data["series"][:10]:
            if not isinstance(one, dict) or not isinstance(one.get("points"), list):
                continue
            points = [p for p in one["points"][:500]
                      if isinstance(p, list) and len(p) == 2
                      and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)]
            series.append({"name": str(one.get("name") or "")[:100], "points": points})
        return {"type": "chart", "url": url, "dashboard": name,
                "title": str(data.get("title") or name)[:TITLE_CHARS], "series": series,
                "link": _http_url(data.get("link"), self.settings.prism_url),
                "refresh_interval": self.settings.prism_refresh_interval}

    async def _file(self, url: str, path: str) -> dict[str, Any] | None:
        """A stored file's name, size and type (never its bytes)."""
        data = await self._trusted_json(self.settings.files_url.replace("{path}", quote(path)))
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        size = data.get("size")
        return {"type": "file", "url": url, "name": data["name"][:TITLE_CHARS],
                "size": size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
                "mime_type": str(data.get("type") or "application/octet-stream")[:100],
                "link": _http_url(data.get("link"), self.settings.files_url)}


def _charset(ctype: str) -> str:
    m = re.search(r"charset=([\w-]+)", ctype)
    if m is not None:
        try:
            return codecs.lookup(m.group(1)).name
        except LookupError:
            pass
    return "utf-8"


__all__ = ["GuardedResolver", "Policy", "Refused", "Unfurler", "links_in", "refusal"]
