"""keysetd-nats-callout: a NATS auth callout that verifies clients' JWTs with keysetd's jwks.

A client connects with its JWT (from Keycloak or any OIDC issuer) as the auth token;
nats-server asks this service on ``$SYS.REQ.USER.AUTH``; the token is checked with
``keysetd.verifier`` against the jwks output keysetd keeps current, and the answer is a
NATS user JWT signed by the issuer account nkey, or a refusal.
"""

from __future__ import annotations

from keysetd_nats_callout.authorizer import Authorizer, Decision, Request
from keysetd_nats_callout.config import CalloutConfig, Rule, load_config
from keysetd_nats_callout.natsjwt import NatsJwtError, NkeySigner
from keysetd_nats_callout.service import SUBJECT, CalloutError, serve

__all__ = [
    "SUBJECT",
    "Authorizer",
    "CalloutConfig",
    "CalloutError",
    "Decision",
    "NatsJwtError",
    "NkeySigner",
    "Request",
    "Rule",
    "load_config",
    "serve",
]
