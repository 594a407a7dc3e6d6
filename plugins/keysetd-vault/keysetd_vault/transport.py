"""hvac's requests session, sent through keysetd's HTTP client: a total deadline per Vault call.

requests (and urllib3 under it) only bound each socket read, so a server that
drips its answer holds a call for as long as it likes. This adapter hands each
prepared request to :mod:`keysetd.httpclient` instead: ``timeout`` bounds the
whole call, redirects are never followed, no proxy or ``.netrc`` is used, TLS is
verified against the system store or ``ca_file``, and SIGTERM cuts a call short.
Its failures are :class:`keysetd.HttpFailure`; the source names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from keysetd.plugin import HttpFailure, HttpRequest, HttpTransport, http_send

__all__ = ["DeadlineAdapter", "session"]


class DeadlineAdapter(BaseAdapter):
    """A requests transport adapter whose every send is one ``httpclient`` exchange."""

    def __init__(
        self,
        *,
        timeout: float,
        ca_file: Path | None,
        transport: HttpTransport = http_send,
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.ca_file = ca_file
        self.transport = transport

    def send(  # noqa: PLR0917 (the requests signature)
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: object = None,
        verify: object = True,
        cert: object = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` within the configured timeout (requests' own arguments are ignored)."""
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is not None and not isinstance(body, bytes):
            raise HttpFailure("a streamed request body is not supported")
        reply = self.transport(
            HttpRequest(
                request.method or "GET",
                request.url or "",
                timeout=self.timeout,
                headers={
                    name: value if isinstance(value, str) else value.decode("latin-1")
                    for name, value in request.headers.items()
                },
                body=body,
                ca_file=self.ca_file,
                cancellable=True,
            )
        )
        response = requests.Response()
        response.status_code = reply.status
        response.reason = reply.reason
        response.headers = CaseInsensitiveDict(reply.headers.items())
        response.encoding = get_encoding_from_headers(response.headers)
        response._content = reply.body  # how requests holds a body it has read
        response._content_consumed = True
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        """Nothing to close: each exchange has its own connection."""


def session(timeout: float, ca_file: Path | None) -> requests.Session:
    """A session for hvac: every URL through a DeadlineAdapter, nothing from the environment."""
    adapter = DeadlineAdapter(timeout=timeout, ca_file=ca_file)
    http = requests.Session()
    http.trust_env = False  # no proxy variables, no .netrc credentials
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http
