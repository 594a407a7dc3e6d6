"""The ``http`` notifier: POST ``{fingerprint, active_kid, outputs}`` to a reload endpoint.

Success is a 2xx answer. Redirects are not followed (a 3xx is a failure),
TLS is always verified (against ``ca_file`` when given), environment proxies
are ignored (reload endpoints are local), and errors quote at most a short,
redacted piece of the response body.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import field
from pathlib import Path
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from keysetd.errors import NotifyError
from keysetd.httpcheck import check_headers, check_http_url, safe_url
from keysetd.plugin import Notifier, NotifierConfig, NotifyEvent
from keysetd.proc import redact
from keysetd.units import PositiveDuration

__all__ = ["HttpNotifier", "HttpNotifierConfig"]

_BODY_EXCERPT = 200
_DRAIN_LIMIT = 65536


def _clean_headers(headers: dict[str, str]) -> dict[str, str]:
    return check_headers(headers, ("content-type", "content-length", "host"))


class HttpNotifierConfig(NotifierConfig):
    url: Annotated[str, check_http_url]
    timeout: PositiveDuration = 5.0
    headers: Annotated[dict[str, str], _clean_headers] = field(default_factory=dict)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.ca_file is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("ca_file needs an https:// url")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every 3xx into an HTTPError instead of following it."""

    def redirect_request(  # noqa: PLR0917 (the stdlib signature)
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> None:
        return None


class HttpNotifier(Notifier):
    """POSTs the event as JSON to ``url``; one attempt per call."""

    Config: ClassVar[type[NotifierConfig]] = HttpNotifierConfig

    def __init__(self, config: HttpNotifierConfig) -> None:
        super().__init__(config)
        self.config: HttpNotifierConfig = config

    def _fail(self, reason: str) -> NotifyError:
        return NotifyError(self.name, f"POST {safe_url(self.config.url)}: {reason}")

    def _reason(self, reason: object) -> str:
        """A connection failure in a few words: timeout, errno text, or the error itself."""
        if isinstance(reason, TimeoutError):
            return f"timed out after {self.config.timeout:g}s"
        if isinstance(reason, OSError) and not isinstance(reason, ssl.SSLError) and reason.strerror:
            return reason.strerror
        return str(reason)

    def _opener(self) -> urllib.request.OpenerDirector:
        try:
            # Built per call so a rotated ca_file is picked up.
            context = ssl.create_default_context(
                cafile=str(self.config.ca_file) if self.config.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise self._fail(f"cannot load ca_file {self.config.ca_file}: {exc}") from exc
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=context),
            _NoRedirect(),
        )

    def notify(self, event: NotifyEvent) -> None:
        body = json.dumps(
            {
                "fingerprint": event.fingerprint,
                "active_kid": event.active_kid,
                "outputs": list(event.outputs),
            },
            sort_keys=True,
        ).encode()
        request = urllib.request.Request(  # noqa: S310 (scheme checked by the config)
            self.config.url,
            data=body,
            method="POST",
            headers={
                "User-Agent": "keysetd",
                **self.config.headers,
                "Content-Type": "application/json",
            },
        )
        opener = self._opener()
        try:
            with opener.open(request, timeout=self.config.timeout) as response:
                status: int = response.status
                response.read(_DRAIN_LIMIT)
        except urllib.error.HTTPError as exc:
            with exc:
                excerpt = _excerpt(exc)
            reason = redact(" ".join(str(exc.reason).split()))[:60]  # the server chose it
            raise self._fail(f"HTTP {exc.code} {reason}{excerpt}") from None
        except urllib.error.URLError as exc:
            raise self._fail(self._reason(exc.reason)) from exc
        except TimeoutError as exc:
            raise self._fail(self._reason(exc)) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise self._fail(f"HTTP {status} (only 2xx is success)")


def _excerpt(exc: urllib.error.HTTPError) -> str:
    """At most ``_BODY_EXCERPT`` redacted characters of an error response body."""
    try:
        raw = exc.read(_BODY_EXCERPT * 4)
    except (OSError, http.client.HTTPException):
        return ""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    text = redact(text)[:_BODY_EXCERPT]
    return f": {text}" if text else ""
