"""One authorization request in, one authorization response out.

The server's request is a NATS JWT signed by the server's nkey (``iss`` = ``server_id.id``,
``aud`` = ``nats-authorization-request``, ``sub`` = the callout's issuer account). The
client's token (``connect_opts.auth_token``) is verified with ``Verifier.adecode`` against
the jwks keysetd maintains: signature, ``iss``, ``aud``, ``exp``. The response is a NATS
JWT signed by the issuer account (``sub`` = ``user_nkey``, ``aud`` = the server id) holding
either a user JWT (``aud`` = target account, permissions from the config, ``exp`` =
min(token exp, now + max_ttl)) or an ``error``. A request that cannot be trusted gets an
empty reply, which nats-server takes as a refusal. Nothing here logs or returns a token.

With an xkey (``xkey_seed_file``), nats-server seals the request with its own curve key,
named in the ``Nats-Server-Xkey`` header and in the signed ``server_id.xkey``; the
response is sealed back to that key. An encrypted request without a configured xkey, or
a plain one with it, is refused: the two sides disagree on the server's auth_callout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
import nkeys  # type: ignore[import-untyped,unused-ignore]

from keysetd.plugin import NatsPermissions, NatsSubjects, event, nkey, parse_duration
from keysetd.verifier import MissingKidError, UnknownKidError, UnusableKeyError, Verifier
from keysetd_nats_callout import natsjwt
from keysetd_nats_callout.config import CalloutConfig, Rule
from keysetd_nats_callout.natsjwt import NatsJwtError, NkeySigner
from keysetd_nats_callout.xkey import CurveKey, XkeyError

__all__ = ["REQUEST_AUDIENCE", "Authorizer", "Decision", "Request", "refusal_reason"]

REQUEST_AUDIENCE: Final = "nats-authorization-request"
REQUEST_TYPE: Final = "authorization_request"
RESPONSE_TYPE: Final = "authorization_response"
XKEY_HEADER: Final = "Nats-Server-Xkey"
_NO_LIMIT: Final = -1
_LOGGED_MAX: Final = 200
_NAME_MAX: Final = 256


class BadRequest(ValueError):
    """The server's request cannot be trusted or understood: answered with an empty reply."""


@dataclass(frozen=True, slots=True)
class Request:
    """What the callout uses of a verified authorization request."""

    server_id: str
    user_nkey: str
    token: str | None
    client_host: str | None
    client_id: int | None
    #: The server's curve key (X...) when the request came encrypted: the response is
    #: sealed to it.
    server_xkey: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A granted user (``error`` None) or a refusal; for logs and tests, never the token."""

    error: str | None
    account: str | None = None
    name: str | None = None
    expires: int | None = None
    kid: str | None = None
    #: The token's issuer as it claims it (unverified on a refusal).
    iss: str | None = None


def _short(value: object) -> str | None:
    """A claim from an unverified token, fit for a log line (bounded, a str)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:_LOGGED_MAX]


def _unverified(token: str) -> tuple[str | None, str | None]:
    """(kid, iss) of a token nobody vouched for yet: only for the log."""
    kid = iss = None
    try:
        kid = _short(jwt.get_unverified_header(token).get("kid"))
        iss = _short(jwt.decode(token, options={"verify_signature": False}).get("iss"))
    except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError):
        pass
    return kid, iss


def refusal_reason(exc: jwt.InvalidTokenError) -> str:
    """A short reason for a refused token: logged, and sent to nats-server (its log)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "audience not accepted"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "issuer not accepted"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"claim {exc.claim} missing"
    if isinstance(exc, UnknownKidError):
        return "unknown kid"
    if isinstance(exc, MissingKidError):
        return "token has no kid"
    if isinstance(exc, UnusableKeyError):
        return f"key not usable here: {exc.reason}"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return f"invalid token ({type(exc).__name__})"


def _claim(claims: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path (``realm_access.roles``), or None."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _matches(rule: Rule, claims: Mapping[str, Any]) -> bool:
    value = _claim(claims, rule.claim)
    if rule.contains is not None:
        if isinstance(value, list):
            return rule.contains in value
        if isinstance(value, str):  # a space-separated claim such as scope
            return rule.contains in value.split()
        return False
    return value == rule.equals and type(value) is type(rule.equals)


def _subjects(value: list[str] | NatsSubjects | None) -> dict[str, list[str]]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {"allow": list(value)} if value else {}
    out: dict[str, list[str]] = {}
    if value.allow:
        out["allow"] = list(value.allow)
    if value.deny:
        out["deny"] = list(value.deny)
    return out


def user_permissions(perms: NatsPermissions | None) -> dict[str, Any]:
    """The ``pub``, ``sub`` and ``resp`` members of a user JWT (empty: all of the account)."""
    out: dict[str, Any] = {"pub": {}, "sub": {}}
    if perms is None:
        return out
    out["pub"] = _subjects(perms.publish)
    out["sub"] = _subjects(perms.subscribe)
    responses = perms.allow_responses
    if responses is True:
        out["resp"] = {"max": 1, "ttl": 0}  # ttl 0: the server's default expiry
    elif responses is not None and responses is not False:
        ttl = parse_duration(responses.expires) if responses.expires else 0.0
        out["resp"] = {"max": responses.max, "ttl": int(ttl * 1_000_000_000)}
    return out


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value, its name matched without case (nats-py keeps the server's case)."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value.strip() or None
    return None


def _valid_public(text: object, prefix: int) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return nkey.decode_public(text)[0] == prefix
    except ValueError:
        return False


class Authorizer:
    """Verifies clients' tokens and signs NATS user JWTs for one issuer account."""

    def __init__(
        self,
        config: CalloutConfig,
        verifier: Verifier,
        signer: NkeySigner,
        xkey: CurveKey | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.signer = signer
        #: The callout's curve key (``xkey_seed_file``): requests must come sealed to it.
        self.xkey = xkey
        self._default = user_permissions(config.permissions)
        self._rules = [(rule, user_permissions(rule.permissions)) for rule in config.rules]

    # -- the request -------------------------------------------------------------------------

    def _open(self, data: bytes, headers: Mapping[str, str] | None) -> tuple[bytes, str | None]:
        """(the request JWT, the server's xkey or None); BadRequest on any disagreement."""
        server_xkey = _header(headers, XKEY_HEADER)
        if server_xkey is None:
            if self.xkey is not None:
                raise BadRequest(
                    "plain request but xkey_seed_file is set: add the public key of"
                    " xkey_seed_file as xkey to the server's auth_callout, or unset it"
                )
            return data, None
        if self.xkey is None:
            raise BadRequest(
                f"encrypted request ({XKEY_HEADER} header) but no xkey_seed_file is set:"
                " set it to the seed of the auth_callout xkey"
            )
        try:
            return self.xkey.open(data, server_xkey), server_xkey
        except XkeyError as exc:
            raise BadRequest(
                f"encrypted request does not open ({exc}): is the server's auth_callout"
                " xkey the public key of xkey_seed_file?"
            ) from None

    def parse_request(self, data: bytes, headers: Mapping[str, str] | None, now: float) -> Request:
        """The verified request; BadRequest (no key or token in the message) otherwise."""
        data, server_xkey = self._open(data, headers)
        try:
            claims = natsjwt.decode(
                data,
                expect_type=REQUEST_TYPE,
                issuer_prefix=nkeys.PREFIX_BYTE_SERVER,
                now=now,
            )
        except NatsJwtError as exc:
            raise BadRequest(f"request JWT: {exc}") from None
        if claims.get("aud") != REQUEST_AUDIENCE:
            raise BadRequest("request JWT: not addressed to an authorization service")
        if claims.get("sub") != self.signer.public_key:
            raise BadRequest(
                "request JWT: for another issuer account (the server's auth_callout issuer"
                " is not the public key of issuer_account_seed_file)"
            )
        nats = claims["nats"]
        server = nats.get("server_id")
        server_id = server.get("id") if isinstance(server, dict) else None
        if server_id != claims["iss"]:
            raise BadRequest("request JWT: not signed by the server it names")
        # The header is not signed; the claim is. A request re-sealed under another key
        # must not get the user JWT sent to that key.
        if server_xkey is not None and server.get("xkey") != server_xkey:
            raise BadRequest(f"request JWT: server_id.xkey is not the {XKEY_HEADER} header")
        user_nkey = nats.get("user_nkey")
        if not _valid_public(user_nkey, nkeys.PREFIX_BYTE_USER):
            raise BadRequest("request JWT: user_nkey is not a user public nkey")
        opts = nats.get("connect_opts")
        token = opts.get("auth_token") if isinstance(opts, dict) else None
        client = nats.get("client_info")
        client = client if isinstance(client, dict) else {}
        host, cid = client.get("host"), client.get("id")
        return Request(
            server_id=server_id,
            user_nkey=user_nkey,
            token=token if isinstance(token, str) and token else None,
            client_host=host if isinstance(host, str) else None,
            client_id=cid if isinstance(cid, int) else None,
            server_xkey=server_xkey,
        )

    # -- the token ---------------------------------------------------------------------------

    async def decide(self, request: Request, now: float) -> tuple[Decision, str | None]:
        """The decision, and the user JWT when granted."""
        token = request.token
        if token is None:
            return Decision(error="no token: connect with the JWT as the auth token"), None
        cfg = self.config
        try:
            claims = await self.verifier.adecode(
                token,
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            kid, iss = _unverified(token)
            return Decision(error=refusal_reason(exc), kid=kid, iss=iss), None
        kid = _short(jwt.get_unverified_header(token).get("kid"))
        account, perms = cfg.account, self._default
        for rule, rule_perms in self._rules:
            if _matches(rule, claims):
                account = rule.account or account
                perms = rule_perms if rule.permissions is not None else perms
                break
        expires = min(int(claims["exp"]), int(now + cfg.max_ttl))
        if expires <= now:
            return Decision(error="token expired", kid=kid), None
        name = claims.get(cfg.name_claim)
        if not isinstance(name, str) or not name:
            name = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        name = name[:_NAME_MAX] if name else None
        user: dict[str, Any] = {
            "sub": request.user_nkey,
            "aud": account,
            "exp": expires,
            "nats": {
                **perms,
                "subs": _NO_LIMIT,
                "data": _NO_LIMIT,
                "payload": _NO_LIMIT,
                "type": "user",
            },
        }
        if name:
            user["name"] = name
        user_jwt = natsjwt.encode(user, self.signer, now=int(now))
        return Decision(error=None, account=account, name=name, expires=expires, kid=kid), user_jwt

    # -- the response ------------------------------------------------------------------------

    def response(
        self, request: Request, decision: Decision, user_jwt: str | None, now: float
    ) -> bytes:
        nats: dict[str, Any] = {"type": RESPONSE_TYPE}
        if user_jwt is not None:
            nats["jwt"] = user_jwt
        else:
            nats["error"] = decision.error or "refused"
        claims = {"sub": request.user_nkey, "aud": request.server_id, "nats": nats}
        token = natsjwt.encode(claims, self.signer, now=int(now)).encode("ascii")
        if request.server_xkey is None:
            return token
        assert self.xkey is not None  # parse_request opened it with this key
        return self.xkey.seal(token, request.server_xkey)

    async def handle(self, data: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        """The reply to one request message: a response JWT, or b"" (refused, no reason)."""
        now = time.time()
        try:
            request = self.parse_request(data, headers, now)
        except BadRequest as exc:
            event("callout_bad_request", logging.WARNING, reason=str(exc), size=len(data))
            return b""
        decision, user_jwt = await self.decide(request, now)
        if decision.error is None:
            event(
                "callout_authorized",
                user=decision.name,
                account=decision.account,
                kid=decision.kid,
                expires=decision.expires,
                client=request.client_id,
                host=request.client_host,
                encrypted=request.server_xkey is not None,
            )
        else:
            event(
                "callout_refused",
                logging.WARNING,
                reason=decision.error,
                kid=decision.kid,
                iss=decision.iss,
                client=request.client_id,
                host=request.client_host,
                encrypted=request.server_xkey is not None,
            )
        return self.response(request, decision, user_jwt, now)
