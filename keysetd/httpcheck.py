"""Checks shared by the config of everything that speaks HTTP (jwks_url source, http notifier)."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit, urlunsplit

__all__ = ["check_headers", "check_http_url", "is_loopback", "safe_url"]


def is_loopback(host: str | None) -> bool:
    """localhost or a loopback address: where plain http:// is acceptable."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_url(url: str) -> str:
    """scheme://host[:port]/path: no credentials, query or fragment (they may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_http_url(url: str, *, allow_credentials: bool = True) -> str:
    """An http(s) URL with a host and a valid port; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL with a host")
    if not allow_credentials and (parts.username is not None or parts.password is not None):
        raise ValueError("url must not hold credentials; use headers = {Authorization = ...}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("url has an invalid port") from None
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise ValueError("url must not contain spaces or control characters")
    outside_host = parts.netloc.rpartition("@")[0] + parts.path + parts.query + parts.fragment
    if not outside_host.isascii():
        raise ValueError("url must be ASCII outside the host name (percent-encode the path)")
    if not _resolvable(parts.hostname):
        raise ValueError("url has an invalid host name (an empty label, or one over 63 characters)")
    return url


def _resolvable(host: str) -> bool:
    """An IP address, or a name the resolver can encode (socket encodes names with IDNA)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        pass
    else:
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def check_headers(headers: dict[str, str], reserved: Collection[str]) -> dict[str, str]:
    """Header names that are tokens, values of visible ASCII, none keysetd sets itself."""
    for name, value in headers.items():
        if not name or not all(33 <= ord(c) < 127 and c != ":" for c in name):
            # Not quoted: a name this malformed may be a pasted "Authorization: Bearer ...".
            raise ValueError("a header name is not a token (no spaces, ':' or control characters)")
        if not all(32 <= ord(c) < 127 or c == "\t" for c in value):
            # Never quoted: the value is often a credential.
            raise ValueError(
                f"header {name} must hold only visible ASCII characters and spaces"
                " (no control characters, line breaks or non-ASCII characters)"
            )
        if name.lower() in reserved:
            raise ValueError(f"header {name} is set by keysetd")
    return headers
