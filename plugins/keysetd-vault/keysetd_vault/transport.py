"""hvac's requests session, sent through keysetd's HTTP client: one deadline per fetch.

requests (and urllib3 under it) only bound each socket read, so a server that
drips its answer holds a call for as long as it likes. This adapter hands each
prepared request to :mod:`keysetd.httpclient` instead: ``timeout`` bounds the
whole fetch (:meth:`DeadlineAdapter.begin` starts it; a fetch is a lookup or a login,
a read per key, and after a refusal a login and the reads again, so a deadline per
call would let a slow server hold a fetch for several timeouts), redirects are never
followed, no proxy or ``.netrc`` is used, TLS is
verified against the system store or ``ca_file``, and SIGTERM cuts a call short.
Its failures are :class:`keysetd.HttpFailure`; the source names them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from keysetd.plugin import HttpFailure, HttpRequest, HttpTimeout, HttpTransport, http_send

__all__ = ["DeadlineAdapter", "session"]


class DeadlineAdapter(BaseAdapter):
    """A requests transport adapter whose every send is one ``httpclient`` exchange.

    Every send until the next :meth:`begin` gets only what is left of ``timeout``.
    """

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
        self.deadline: float | None = None

    def begin(self) -> None:
        """Start one fetch: its calls share one deadline, ``timeout`` from now."""
        self.deadline = time.monotonic() + self.timeout

    def _left(self) -> float:
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise HttpTimeout(f"timed out after {self.timeout:g}s")
        return left

    def send(  # noqa: PLR0917 (the requests signature)
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: object = None,
        verify: object = True,
        cert: object = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` within what is left of the fetch (requests' arguments are ignored)."""
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        if body is not None and not isinstance(body, bytes):
            raise HttpFailure("a streamed request body is not supported")
        exchange = HttpRequest(
            request.method or "GET",
            request.url or "",
            timeout=self._left(),
            headers={
                name: value if isinstance(value, str) else value.decode("latin-1")
                for name, value in request.headers.items()
            },
            body=body,
            ca_file=self.ca_file,
            cancellable=True,
        )
        try:
            reply = self.transport(exchange)
        except HttpTimeout:
            # The exchange had what was left; the fetch as a whole had ``timeout``.
            raise HttpTimeout(f"timed out after {self.timeout:g}s") from None
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


def session(adapter: DeadlineAdapter) -> requests.Session:
    """A session for hvac: every URL through ``adapter``, nothing from the environment."""
    http = requests.Session()
    http.trust_env = False  # no proxy variables, no .netrc credentials
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http
