"""The ``jwks_url`` source: a remote JWK Set, such as a Keycloak realm's certs endpoint.

One GET per fetch through :mod:`keysetd.httpclient`: no redirects, no proxies,
TLS always verified against the system store or ``ca_file``, the whole exchange
from connect to the last body byte bounded by ``timeout``, cut short by SIGTERM.
Keys that are not for signatures (``use`` other than "sig", encryption
``key_ops``/``alg``, ECDH curves) and keys of an unknown ``kty`` are skipped
with a warning; the rest go to the pipeline's validation as a canonical JWKS.
A key's ``x5c`` certificate must carry the key itself.

Caching: ETag/Last-Modified are sent back as If-None-Match/If-Modified-Since,
and a 304 returns the previous snapshot (same bytes: the pipeline does
nothing). ``Cache-Control: max-age`` lets a fetch skip the request, but for at
most half of ``refresh_interval``: every scheduled refresh still asks the
provider, so max-age only spares it the extra fetches in between (retries,
planned wakes). SIGHUP rebuilds the source, so "refetch now" skips the cache.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from keysetd import httpclient
from keysetd.crypto import KeyMaterialError, load_public
from keysetd.errors import InvalidKeyset, SourceError
from keysetd.extension import Source, SourceConfig, SourceFormat
from keysetd.formats import MAX_DOCUMENT
from keysetd.formats.jwks import JsonObject, kid_label, load_json, short
from keysetd.httpcheck import check_headers, check_http_url, is_loopback, safe_url
from keysetd.log import event
from keysetd.model import PUBLIC_MEMBERS, Key, Snapshot, canonical_json
from keysetd.schema import positive
from keysetd.sources.file import READ_LIMIT
from keysetd.units import PositiveDuration

__all__ = ["JwksUrlSource", "JwksUrlSourceConfig", "filter_jwks"]

_KNOWN_KTY = frozenset({"RSA", "EC", "OKP", "oct"})
#: RFC 7518 section 4.1: key management algorithms, i.e. encryption keys.
_JWE_ALGS = frozenset(
    {
        "RSA1_5",
        "RSA-OAEP",
        "RSA-OAEP-256",
        "RSA-OAEP-384",
        "RSA-OAEP-512",
        "A128KW",
        "A192KW",
        "A256KW",
        "dir",
        "ECDH-ES",
        "ECDH-ES+A128KW",
        "ECDH-ES+A192KW",
        "ECDH-ES+A256KW",
        "A128GCMKW",
        "A192GCMKW",
        "A256GCMKW",
        "PBES2-HS256+A128KW",
        "PBES2-HS384+A192KW",
        "PBES2-HS512+A256KW",
    }
)
_ECDH_CURVES = frozenset({"X25519", "X448"})
_SIGNATURE_OPS = frozenset({"sign", "verify"})
#: Members dropped from kept keys once checked: certificates and hints verifiers do not need.
_STRIPPED = ("x5c", "x5t", "x5t#S256", "key_ops")
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
    format: Annotated[SourceFormat, _jwks_only] = "auto"
    url: Annotated[str, _http_url]
    ca_file: Path | None = None
    headers: Annotated[dict[str, str], _clean_headers] = field(default_factory=dict)
    max_bytes: Annotated[int, positive] = READ_LIMIT
    timeout: PositiveDuration = 10.0

    def __post_init__(self) -> None:
        if self.ca_file is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("ca_file needs an https:// url")


# --- filtering ------------------------------------------------------------------------------


def _skip_reason(raw: Mapping[str, Any]) -> str | None:
    """Why a key is no signature key keysetd can use, or None to keep it for validation."""
    use = raw.get("use")
    if isinstance(use, str) and use != "sig":
        return f"use {short(use)}: not a signature key"
    ops = raw.get("key_ops")
    if isinstance(ops, list) and not _SIGNATURE_OPS.intersection(
        o for o in ops if isinstance(o, str)
    ):
        return "key_ops has neither sign nor verify"
    kty = raw.get("kty")
    if isinstance(kty, str) and kty not in _KNOWN_KTY:
        return f"kty {short(kty)} is not one of RSA, EC, OKP, oct"
    alg = raw.get("alg")
    if isinstance(alg, str) and alg in _JWE_ALGS:
        return f"alg {short(alg)} is an encryption algorithm"
    crv = raw.get("crv")
    if kty == "OKP" and isinstance(crv, str) and crv in _ECDH_CURVES:
        return f"crv {short(crv)} is a key agreement curve"
    return None


def _kid_of(raw: Mapping[str, Any], index: int) -> str:
    kid = raw.get("kid")
    return kid_label(kid) if isinstance(kid, str) else f"keys[{index}]"


def _check_x5c(raw: Mapping[str, Any], kid: str) -> str | None:
    """None when the first x5c certificate holds the key's public key, else why not.

    Only the binding of certificate and key is checked, not a chain or expiry:
    Keycloak publishes self-signed realm certificates that nobody renews, and
    the trust in the key comes from the TLS connection to the provider.
    """
    chain = raw.get("x5c")
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        return "x5c is not a list of base64 certificates"
    try:
        der = base64.b64decode(chain[0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
        cert_key = certificate.public_key()
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return "x5c[0] is not a base64 DER certificate"
    kty = raw.get("kty")
    members = PUBLIC_MEMBERS.get(kty, ()) if isinstance(kty, str) else ()
    public = tuple(sorted((m, raw[m]) for m in members if isinstance(raw.get(m), str)))
    try:
        jwk_key = load_public(Key(kid=kid, kty=str(kty), alg="", public=public))
    except KeyMaterialError:
        return None  # the key itself is broken: validation names the rule
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        same = cert_key.public_bytes(*spki) == jwk_key.public_bytes(*spki)
    except ValueError:
        same = False
    return None if same else "x5c certificate does not match the key"


def filter_jwks(data: bytes) -> tuple[bytes, list[tuple[str, str]], list[tuple[str, str]]]:
    """(document for the pipeline, skipped (kid, reason), x5c failures (kid, reason)).

    Anything that is not a plain JWK Set (not JSON, no "keys" list, duplicate
    members, over the size limit) is returned unchanged, so validation names it.
    oct keys are kept: an HMAC secret on a public endpoint is a leak, and
    validation refuses it (private-in-public) rather than keysetd hiding it.
    """
    if len(data) > MAX_DOCUMENT:
        return data, [], []
    try:
        doc = load_json(data)
    except InvalidKeyset:  # validation reports the same problem
        return data, [], []
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list) or doc.duplicates:
        return data, [], []
    if any(isinstance(raw, JsonObject) and raw.duplicates for raw in raw_keys):
        return data, [], []
    kept: list[object] = []
    skipped: list[tuple[str, str]] = []
    broken: list[tuple[str, str]] = []
    for index, raw in enumerate(raw_keys):
        if not isinstance(raw, dict):
            kept.append(raw)
            continue
        kid = _kid_of(raw, index)
        reason = _skip_reason(raw)
        if reason is not None:
            skipped.append((kid, reason))
            continue
        if "x5c" in raw and (problem := _check_x5c(raw, kid)) is not None:
            broken.append((kid, problem))
        kept.append({name: value for name, value in raw.items() if name not in _STRIPPED})
    return canonical_json({**doc, "keys": kept}), skipped, broken


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
        self._skipped: frozenset[tuple[str, str]] = frozenset()
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
        data, skipped, broken = filter_jwks(body)
        if broken:
            detail = "; ".join(f"kid {kid!r}: {reason}" for kid, reason in broken)
            raise self._fail(detail)
        for kid, reason in skipped:
            if (kid, reason) not in self._skipped:
                event(
                    "jwks_key_skipped",
                    logging.WARNING,
                    source=self.describe(),
                    kid=kid,
                    reason=reason,
                )
        self._skipped = frozenset(skipped)
        return Snapshot(data, origin=self.describe(), format="jwks")

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
