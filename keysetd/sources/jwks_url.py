"""The ``jwks_url`` source: a remote JWK Set, such as a Keycloak realm's certs endpoint.

One GET per fetch through :mod:`keysetd.httpclient`: no redirects, no proxies,
TLS always verified against the system store or ``ca_file``, the whole exchange
from connect to the last body byte bounded by ``timeout``, cut short by SIGTERM.
The document goes to the pipeline's validation as a canonical JWKS (member order
and whitespace do not matter, so a provider re-serialising the same keys changes
nothing). Keys keysetd cannot use -- ``use: enc``, encryption ``key_ops``/``alg``,
ECDH curves, an unknown ``kty``, Ed448, an unknown ``alg``, RSA under 2048 bits --
are skipped there, with a warning and a metric, by the one filter every source goes
through (:mod:`keysetd.validate`); so is the ``x5c``/``x5t`` check, and checked
certificates are kept in the jwks output.

Caching: ETag/Last-Modified are sent back as If-None-Match/If-Modified-Since,
and a 304 returns the previous snapshot (same bytes: the pipeline does
nothing). ``Cache-Control: max-age`` lets a fetch skip the request, but for at
most half of ``refresh_interval``: every scheduled refresh still asks the
provider, so max-age only spares it the extra fetches in between (retries,
planned wakes). SIGHUP rebuilds the source, so "refetch now" skips the cache.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import Field

from keysetd import httpclient
from keysetd.errors import InvalidKeyset, SourceError
from keysetd.extension import Source, SourceConfig, SourceFormat
from keysetd.formats import MAX_DOCUMENT
from keysetd.formats.jwks import JsonObject, load_json
from keysetd.httpcheck import check_headers, check_http_url, is_loopback, safe_url
from keysetd.log import event
from keysetd.model import Snapshot, canonical_json
from keysetd.sources.file import READ_LIMIT
from keysetd.tables import After, positive
from keysetd.units import PositiveDuration

__all__ = ["JwksUrlSource", "JwksUrlSourceConfig", "canonical_jwks"]

#: Request headers keysetd sets itself.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "if-none-match",
        "if-modified-since",
    }
)
_MAX_AGE = re.compile(r'max-age\s*=\s*"?(\d+)"?')


def _jwks_only(fmt: str) -> str:
    if fmt not in ("auto", "jwks"):
        raise ValueError("a jwks_url source is always in the jwks format")
    return fmt


def _http_url(url: str) -> str:
    return check_http_url(url, allow_credentials=False)


def _clean_headers(headers: dict[str, str]) -> dict[str, str]:
    return check_headers(headers, _RESERVED_HEADERS)


class JwksUrlSourceConfig(SourceConfig):
    format: Annotated[SourceFormat, After(_jwks_only)] = "auto"
    url: Annotated[str, After(_http_url)]
    ca_file: Path | None = None
    headers: Annotated[dict[str, str], After(_clean_headers)] = Field(default_factory=dict)
    max_bytes: Annotated[int, positive] = READ_LIMIT
    timeout: PositiveDuration = 10.0

    def __post_init__(self) -> None:
        if self.ca_file is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("ca_file needs an https:// url")


# --- canonical form --------------------------------------------------------------------------


def canonical_jwks(data: bytes) -> bytes:
    """The document as canonical JSON, or unchanged when it is no plain JWK Set.

    Anything that is not (not JSON, no "keys" list, duplicate members, over the size
    limit) is returned as it came, so validation names the problem.
    """
    if len(data) > MAX_DOCUMENT:
        return data
    try:
        doc = load_json(data)
    except InvalidKeyset:  # validation reports the same problem
        return data
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list) or doc.duplicates:
        return data
    if any(isinstance(raw, JsonObject) and raw.duplicates for raw in raw_keys):
        return data
    return canonical_json(doc)


def _lifetime(headers: http.client.HTTPMessage) -> float | None:
    """Seconds the response stays fresh by Cache-Control (minus Age), or None without one."""
    directives = ",".join(headers.get_all("Cache-Control") or []).lower()
    if not directives.strip():
        return None
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    match = _MAX_AGE.search(directives)
    if match is None:
        return 0.0
    try:
        age = int(headers.get("Age", "0"))
    except ValueError:
        age = 0
    return max(0.0, float(int(match.group(1)) - max(age, 0)))


# --- the source -----------------------------------------------------------------------------


class JwksUrlSource(Source):
    """GETs ``url`` at each fetch (unless max-age allows the cached answer)."""

    Config: ClassVar[type[SourceConfig]] = JwksUrlSourceConfig
    public_only: ClassVar[bool] = True

    def __init__(
        self,
        config: JwksUrlSourceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: httpclient.Transport = httpclient.send,
    ) -> None:
        super().__init__(config)
        self.config: JwksUrlSourceConfig = config
        self._clock = clock
        self._transport = transport
        parts = urlsplit(config.url)
        self._snapshot: Snapshot | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._fresh_until = 0.0
        self._lifetime = 0.0
        if parts.scheme != "https" and not is_loopback(parts.hostname):
            event(
                "jwks_url_plain_http",
                logging.WARNING,
                source=self.describe(),
                detail="http:// to a non-loopback host: keys can be swapped in transit"
                " (strict mode refuses this)",
            )

    def describe(self) -> str:
        return f"jwks_url:{safe_url(self.config.url)}"

    def _fail(self, reason: str) -> SourceError:
        return SourceError(self.describe(), reason)

    # -- fetch -------------------------------------------------------------

    def fetch(self) -> Snapshot:
        now = self._clock()
        if self._snapshot is not None and now < self._fresh_until:
            return self._snapshot
        response = self._request()
        if response.status == 304:
            if self._snapshot is None:
                raise self._fail("HTTP 304 Not Modified to an unconditional request")
            self._remember(response.headers, now, keep_lifetime=True)
            return self._snapshot
        snapshot = self._process(response.body)
        self._snapshot = snapshot
        self._etag = self._last_modified = None
        self._remember(response.headers, now, keep_lifetime=False)
        return snapshot

    def _remember(
        self, headers: http.client.HTTPMessage, now: float, *, keep_lifetime: bool
    ) -> None:
        """Validators and freshness of a 200, or as updated by a 304 (RFC 9111 4.3.4)."""
        lifetime = _lifetime(headers)
        if lifetime is None:
            lifetime = self._lifetime if keep_lifetime else 0.0
        self._lifetime = lifetime
        self._fresh_until = now + min(lifetime, float(self.config.refresh_interval) / 2)
        if "no-store" in ",".join(headers.get_all("Cache-Control") or []).lower():
            self._etag = self._last_modified = None
            return
        self._etag = headers.get("ETag") or self._etag
        self._last_modified = headers.get("Last-Modified") or self._last_modified

    def _process(self, body: bytes) -> Snapshot:
        return Snapshot(canonical_jwks(body), origin=self.describe(), format="jwks")

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "keysetd", "Accept": "application/json"}
        headers.update(self.config.headers)
        if self._snapshot is not None and self._etag is not None:
            headers["If-None-Match"] = self._etag
        if self._snapshot is not None and self._last_modified is not None:
            headers["If-Modified-Since"] = self._last_modified
        return headers

    def _request(self) -> httpclient.Response:
        """The answer to one GET: a 2xx or a 304; anything else raises SourceError."""
        request = httpclient.Request(
            "GET",
            self.config.url,
            timeout=float(self.config.timeout),
            headers=self._headers(),
            max_body=self.config.max_bytes,
            ca_file=self.config.ca_file,
            cancellable=True,
        )
        try:
            response = self._transport(request)
        except httpclient.HttpFailure as exc:
            raise self._fail(exc.reason) from exc
        if response.status != 304 and not response.ok:
            raise self._fail(response.problem())
        return response
