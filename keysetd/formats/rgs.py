"""The rgs format: ``{"active_kid": "k2", "keys": {"k1": "secret", ...}}`` of HMAC secrets.

A secret is a UTF-8 string; the key's ``k`` is the base64url of its UTF-8 bytes. Without
``active_kid``, a kid named ``default`` is the active one, as open-rgs reads the format
(its ``RGS_JWT_ACTIVE_KID`` defaults to ``default``). ``parse_keyset_spec`` reads open-rgs's
other form, the ``kid:secret,kid:secret`` of ``RGS_JWT_KEYSET``.
"""

from __future__ import annotations

from collections.abc import Mapping

from keysetd.crypto import b64u_decode, b64u_encode
from keysetd.errors import InvalidKeyset, Problem
from keysetd.formats.jwks import MAX_KEYS, active_kid, dump, kid_label, short, text_ok
from keysetd.model import Key, Keyset

__all__ = ["OPEN_RGS_DEFAULT_KID", "decode_rgs", "parse_keyset_spec", "parse_rgs", "render_rgs"]

#: The active kid open-rgs assumes when none is named (``RGS_JWT_ACTIVE_KID``'s default).
OPEN_RGS_DEFAULT_KID = "default"


def parse_rgs(
    doc: Mapping[str, object], *, hmac_alg: str = "HS256"
) -> tuple[Keyset, tuple[Problem, ...]]:
    """The keys that could be built plus every structural problem found."""
    problems: list[Problem] = [
        Problem("-", "malformed", f"member {short(dup)} appears more than once")
        for dup in getattr(doc, "duplicates", ())
    ]
    table = doc.get("keys")
    if not isinstance(table, dict):
        problems.append(Problem("-", "malformed", 'an rgs document needs a "keys" object'))
        return Keyset(()), tuple(problems)
    if len(table) > MAX_KEYS:
        problems.append(Problem("-", "too-large", f"more than {MAX_KEYS} keys"))
        return Keyset(()), tuple(problems)
    problems.extend(
        Problem(kid_label(dup), "duplicate-kid", "the kid appears more than once")
        for dup in getattr(table, "duplicates", ())
    )
    active = active_kid(doc, problems)
    if doc.get("active_kid") is None and OPEN_RGS_DEFAULT_KID in table:
        active = OPEN_RGS_DEFAULT_KID
    keys: list[Key] = []
    for kid, secret in table.items():
        if not text_ok(kid):
            problems.append(Problem("-", "bad-member", f"kid {short(kid)} is not valid text"))
        elif not text_ok(secret):
            problems.append(Problem(kid_label(kid), "bad-member", "the secret is not a string"))
        else:
            k = b64u_encode(secret.encode("utf-8"))
            keys.append(Key(kid=kid, kty="oct", alg=hmac_alg, public=(), private=(("k", k),)))
    return Keyset(tuple(keys), active), tuple(problems)


def parse_keyset_spec(spec: str) -> dict[str, str]:
    """open-rgs's ``RGS_JWT_KEYSET`` (``kid:secret,kid:secret``) as a kid -> secret map.

    Read as open-rgs reads it: entries split on ",", each on its first ":" (a secret may
    hold ":", never ","), kid and secret trimmed, empty entries skipped. Unlike open-rgs,
    a kid given twice is refused (open-rgs silently keeps the last). ValueError names the
    entry by position and kid, never by its text: that holds the secret.
    """
    keys: dict[str, str] = {}
    for position, entry in enumerate(spec.split(","), start=1):
        if not entry.strip():
            continue
        kid, colon, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not colon:
            raise ValueError(f"entry {position} is not kid:secret (no ':')")
        if not kid:
            raise ValueError(f"entry {position} has an empty kid")
        if not secret:
            raise ValueError(f"entry {position} (kid {short(kid)}) has an empty secret")
        if kid in keys:
            raise ValueError(f"kid {short(kid)} appears more than once")
        keys[kid] = secret
    if not keys:
        raise ValueError("no kid:secret entry")
    return keys


def decode_rgs(doc: Mapping[str, object], *, hmac_alg: str = "HS256") -> Keyset:
    """A Keyset of oct keys from a decoded rgs document; InvalidKeyset on structural problems."""
    keyset, problems = parse_rgs(doc, hmac_alg=hmac_alg)
    if problems:
        raise InvalidKeyset(problems)
    return keyset


def secret_text(key: Key) -> str:
    """The secret of an oct key as the string rgs carries; ValueError names the kid only."""
    try:
        return b64u_decode(key.member("k") or "").decode("utf-8")
    except ValueError:
        # UnicodeDecodeError is a ValueError; its text would quote secret bytes.
        raise ValueError(
            f"kid {key.kid!r}: the secret is not UTF-8 text, rgs cannot hold it"
        ) from None


def render_rgs(keyset: Keyset) -> bytes:
    """The oct keys as an rgs document, active first; ValueError if there is nothing to write."""
    octs = [key for key in keyset.ordered() if key.kty == "oct"]
    if not octs:
        raise ValueError("the keyset has no HMAC (oct) keys for an rgs document")
    active = keyset.active
    if active is not None and active.kty != "oct":
        raise ValueError(f"active kid {active.kid!r} is not an HMAC key")
    doc: dict[str, object] = {}
    if keyset.active_kid is not None:
        doc["active_kid"] = keyset.active_kid
    doc["keys"] = {key.kid: secret_text(key) for key in octs}
    return dump(doc)
