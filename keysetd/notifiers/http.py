"""The ``http`` notifier: POST ``{fingerprint, active_kid, outputs}`` to a reload endpoint.

Success is a complete 2xx answer within ``timeout`` (the whole exchange, headers
and body included). Through :mod:`keysetd.httpclient`: redirects are not followed
(a 3xx is a failure), TLS is always verified (against ``ca_file`` when given), no
proxy is used (reload endpoints are local), and errors quote at most a short,
redacted piece of the response body. SIGTERM does not cut a notification short:
the consumer is told about outputs already written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import Field

from keysetd import httpclient
from keysetd.errors import NotifyError
from keysetd.extension import Notifier, NotifierConfig, NotifyEvent
from keysetd.httpcheck import check_headers, check_http_url, safe_url
from keysetd.tables import After
from keysetd.units import PositiveDuration

__all__ = ["HttpNotifier", "HttpNotifierConfig"]

#: Bytes of a success body read (and dropped): a reload endpoint has nothing to say.
_DRAIN_LIMIT = 65536


def _clean_headers(headers: dict[str, str]) -> dict[str, str]:
    return check_headers(headers, ("content-type", "content-length", "host", "connection"))


class HttpNotifierConfig(NotifierConfig):
    url: Annotated[str, After(check_http_url)]
    timeout: PositiveDuration = 5.0
    headers: Annotated[dict[str, str], After(_clean_headers)] = Field(default_factory=dict)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.ca_file is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("ca_file needs an https:// url")


class HttpNotifier(Notifier):
    """POSTs the event as JSON to ``url``; one attempt per call."""

    Config: ClassVar[type[NotifierConfig]] = HttpNotifierConfig

    def __init__(
        self, config: HttpNotifierConfig, *, transport: httpclient.Transport = httpclient.send
    ) -> None:
        super().__init__(config)
        self.config: HttpNotifierConfig = config
        self._transport = transport

    def _fail(self, reason: str) -> NotifyError:
        return NotifyError(self.name, f"POST {safe_url(self.config.url)}: {reason}")

    def notify(self, event: NotifyEvent) -> None:
        body = json.dumps(
            {
                "fingerprint": event.fingerprint,
                "active_kid": event.active_kid,
                "outputs": list(event.outputs),
            },
            sort_keys=True,
        ).encode()
        request = httpclient.Request(
            "POST",
            self.config.url,
            timeout=float(self.config.timeout),
            headers={
                "User-Agent": "keysetd",
                **self.config.headers,
                "Content-Type": "application/json",
            },
            body=body,
            # A longer answer is still a success: the rest is not read, the connection closes.
            max_body=_DRAIN_LIMIT,
            ca_file=self.config.ca_file,
        )
        try:
            response = self._transport(request)
        except httpclient.HttpTooLarge:
            return
        except httpclient.HttpFailure as exc:
            raise self._fail(exc.reason) from exc
        if not response.ok:
            raise self._fail(response.problem())
