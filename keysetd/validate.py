"""The rules of DESIGN.md section 4: a keyset breaking any of them is rejected whole.

Each finding is a ``Problem(kid, rule, detail)``; details name members, never values.
Rules: malformed, too-large, empty-keyset, duplicate-kid, kid-reused, missing-kty,
unknown-kty, missing-member, bad-member, invalid-key, point-not-on-curve, alg-none,
unknown-alg, alg-mismatch, rsa-too-small, hmac-too-short, private-in-public,
private-mismatch, active-kid-unknown, missing-active-kid, unsupported-use.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache

from keysetd.crypto import (
    ALGORITHMS,
    HMAC_MIN_BYTES,
    RSA_MIN_BITS,
    KeyMaterialError,
    b64u_decode,
    is_b64u,
    load_private,
    load_public,
)
from keysetd.errors import InvalidKeyset, Problem
from keysetd.formats import decode_partial
from keysetd.formats.jwks import kid_label, short
from keysetd.model import PRIVATE_MEMBERS, PUBLIC_MEMBERS, Key, Keyset

__all__ = ["RULES", "check", "find_problems", "resolve_active", "validate", "weak_secrets"]

RULES = (
    "malformed",
    "too-large",
    "empty-keyset",
    "duplicate-kid",
    "kid-reused",
    "missing-kty",
    "unknown-kty",
    "missing-member",
    "bad-member",
    "invalid-key",
    "point-not-on-curve",
    "alg-none",
    "unknown-alg",
    "alg-mismatch",
    "rsa-too-small",
    "hmac-too-short",
    "private-in-public",
    "private-mismatch",
    "active-kid-unknown",
    "missing-active-kid",
    "unsupported-use",
)
#: Members each kty must carry: its public ones, and for oct the secret.
_REQUIRED: Mapping[str, tuple[str, ...]] = {**PUBLIC_MEMBERS, "oct": PRIVATE_MEMBERS["oct"]}
_KID_MAX = 1024
#: Validated keys remembered per process (a 10,000-key keyset plus churn).
_VERDICT_CACHE = 32768
# Set-level rules that a key dropped while decoding can trigger spuriously.
_SET_RULES = frozenset({"empty-keyset", "active-kid-unknown", "missing-active-kid"})


def resolve_active(keyset: Keyset) -> Keyset:
    """Without ``active_kid``, the only key with private material (if exactly one) is active."""
    if keyset.active_kid is not None:
        return keyset
    signing = [key for key in keyset if key.has_private and key.use == "sig"]
    if len(signing) != 1:
        return keyset
    return dataclasses.replace(keyset, active_kid=signing[0].kid)


def _alg_problems(key: Key) -> list[Problem]:
    alg = key.alg
    if alg.lower() == "none":
        return [Problem(key.kid, "alg-none", 'alg "none" is never accepted')]
    family = ALGORITHMS.get(alg)
    if family is None:
        detail = f"alg {short(alg)} is not supported" if alg else "alg is missing and not inferable"
        return [Problem(key.kid, "unknown-alg", detail)]
    kty, crv = family
    key_crv = key.member("crv")
    if kty != key.kty or (crv is not None and key_crv != crv):
        wants = f"kty {kty} with crv {crv}" if crv else f"kty {kty}"
        has = f"kty {key.kty}" + (f" with crv {short(key_crv)}" if key_crv is not None else "")
        return [Problem(key.kid, "alg-mismatch", f"{alg} needs {wants}; this key has {has}")]
    return []


def _material_problems(key: Key, declared_public: bool) -> list[Problem]:
    """Members present and well-formed, then loaded by cryptography (public, then private)."""
    found: list[Problem] = []

    def add(rule: str, detail: str) -> None:
        found.append(Problem(key.kid, rule, detail))

    for name in _REQUIRED[key.kty]:
        if key.member(name) is None:
            add("missing-member", f"{name} is missing")
    for name, value in (*key.public, *key.private):
        if name != "crv" and not is_b64u(value):
            add("bad-member", f"{name} is not strict base64url (URL-safe alphabet, no padding)")
    if declared_public and key.private:
        what = "an HMAC secret" if key.kty == "oct" else "private members"
        add("private-in-public", f"the document is declared public but holds {what}")
    if found:
        return found
    if key.kty == "oct":
        size = len(b64u_decode(key.member("k") or ""))
        need = HMAC_MIN_BYTES.get(key.alg)
        if need is not None and size < need:
            add("hmac-too-short", f"{key.alg} needs a secret of at least {need} bytes, not {size}")
        return found
    if key.kty == "RSA":
        bits = int.from_bytes(b64u_decode(key.member("n") or ""), "big").bit_length()
        if bits < RSA_MIN_BITS:
            add("rsa-too-small", f"{bits}-bit modulus; at least {RSA_MIN_BITS} bits are required")
    try:
        load_public(key)
        if key.private and not declared_public:
            load_private(key)
    except KeyMaterialError as exc:
        add(exc.rule, exc.detail)
    return found


@lru_cache(maxsize=_VERDICT_CACHE)
def _key_problems(key: Key, declared_public: bool) -> tuple[Problem, ...]:
    """Every problem of one key on its own; memoised, since the same keys come every cycle.

    Loading an RSA private key alone costs ~45 ms (OpenSSL's full check), so a
    refresh that changed one kid must not pay it again for the others.
    """
    return tuple(_uncached_key_problems(key, declared_public))


def forget_verdicts() -> None:
    """Drop the memo of validated keys (benchmarks measure first-sight cost with it)."""
    _key_problems.cache_clear()


def _uncached_key_problems(key: Key, declared_public: bool) -> list[Problem]:
    found: list[Problem] = []
    if not key.kid or not key.kid.isprintable() or len(key.kid) > _KID_MAX:
        detail = f"kid must be 1 to {_KID_MAX} printable characters"
        found.append(Problem(key.kid, "bad-member", detail))
    if not key.kty:
        return [*found, Problem(key.kid, "missing-kty", "kty is missing")]
    if key.kty not in PUBLIC_MEMBERS:
        detail = f"kty {short(key.kty)} is not one of RSA, EC, OKP, oct"
        return [*found, Problem(key.kid, "unknown-kty", detail)]
    if key.use != "sig":
        detail = f"use {short(key.use)}: keysetd distributes signature keys only"
        found.append(Problem(key.kid, "unsupported-use", detail))
    return found + _alg_problems(key) + _material_problems(key, declared_public)


def find_problems(
    keyset: Keyset,
    *,
    history: Mapping[str, str] | None = None,
    declared_public: bool = False,
    require_active: bool = False,
) -> tuple[Problem, ...]:
    """Every rule broken by the keyset, per key in order, then set-wide."""
    found: list[Problem] = []
    for key in keyset:
        found += _key_problems(key, declared_public)
        known = (history or {}).get(key.kid)
        if known is not None and known != key.material_digest():
            detail = "this kid was published before with different key material"
            found.append(Problem(key.kid, "kid-reused", detail))
    for kid, count in Counter(keyset.kids).items():
        if count > 1:
            found.append(Problem(kid, "duplicate-kid", f"{count} keys share this kid"))
    if not keyset.keys:
        found.append(Problem("-", "empty-keyset", "the keyset has no keys"))
    if keyset.active_kid is not None and keyset.get(keyset.active_kid) is None:
        found.append(Problem(keyset.active_kid, "active-kid-unknown", "active_kid names no key"))
    if require_active and resolve_active(keyset).active_kid is None:
        detail = "no active_kid, and not exactly one key with private material to default to"
        found.append(Problem("-", "missing-active-kid", detail))
    return tuple(
        dataclasses.replace(p, kid=kid_label(p.kid)) if len(p.kid) > 128 else p for p in found
    )


def validate(
    keyset: Keyset,
    *,
    history: Mapping[str, str] | None = None,
    declared_public: bool = False,
    require_active: bool = False,
    where: str = "",
) -> None:
    """Raise InvalidKeyset listing every problem; return quietly when there is none.

    ``history`` maps kid -> ``Key.material_digest()`` of what was published before.
    """
    problems = find_problems(
        keyset, history=history, declared_public=declared_public, require_active=require_active
    )
    if problems:
        raise InvalidKeyset(problems, where)


def check(
    data: bytes,
    fmt: str = "auto",
    *,
    hmac_alg: str = "HS256",
    where: str = "",
    history: Mapping[str, str] | None = None,
    declared_public: bool = False,
    require_active: bool = False,
) -> Keyset:
    """Decode, resolve the active kid, validate: the keyset or InvalidKeyset with all problems."""
    decoded, problems = decode_partial(data, fmt, hmac_alg=hmac_alg)
    if decoded is None:
        raise InvalidKeyset(problems, where)
    keyset = resolve_active(decoded)
    found = find_problems(
        keyset, history=history, declared_public=declared_public, require_active=require_active
    )
    if problems:
        found = tuple(p for p in found if p.rule not in _SET_RULES)
    if problems or found:
        raise InvalidKeyset((*problems, *found), where)
    return keyset


#: Secrets seen in tutorials, defaults and leaked configs; compared case-insensitively.
_KNOWN_SECRETS = frozenset(
    {
        "secret", "changeme", "change-me", "password", "default", "test", "example",
        "your-256-bit-secret", "your-secret-key", "supersecret", "super-secret",
        "jwt-secret", "jwtsecret", "keyboard cat", "shhhhh", "mysecret", "my-secret",
        "secretkey", "12345678", "a-string-secret-at-least-256-bits-long",
    }
)  # fmt: skip
_MIN_SECRET_BYTES = 32
_MIN_BITS_PER_CHAR = 3.0


def _bits_per_char(text: bytes) -> float:
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def weak_secrets(keyset: Keyset) -> list[Problem]:
    """HMAC secrets that are short, low in entropy or well-known defaults."""
    found = []
    for key in keyset:
        if key.kty != "oct":
            continue
        try:
            secret = b64u_decode(key.member("k") or "")
        except ValueError:
            continue
        if secret.decode("utf-8", "replace").strip().lower() in _KNOWN_SECRETS:
            found.append(Problem(key.kid, "weak-secret", "a well-known default secret"))
        elif len(secret) < _MIN_SECRET_BYTES:
            found.append(Problem(key.kid, "weak-secret", f"{len(secret)} bytes; use 32 or more"))
        elif _bits_per_char(secret) < _MIN_BITS_PER_CHAR:
            found.append(Problem(key.kid, "weak-secret", "low entropy (repetitive characters)"))
    return found
