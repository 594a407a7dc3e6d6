"""The rules of DESIGN.md section 4, and the one filter every source goes through.

Each finding is a ``Problem(kid, rule, detail)``; details name members, never values.
Rules: malformed, too-large, empty-keyset, duplicate-kid, kid-reused, missing-kty,
unknown-kty, missing-member, bad-member, invalid-key, point-not-on-curve, alg-none,
unknown-alg, alg-mismatch, rsa-too-small, hmac-too-short, private-in-public,
private-mismatch, active-kid-unknown, missing-active-kid, unsupported-use, x5c-mismatch.

Skipping keys keysetd cannot use
--------------------------------
Identity providers publish keys keysetd has no use for next to the signing keys it
needs: encryption keys (a Keycloak realm's ``use: enc`` RSA-OAEP key), key agreement
curves (X25519), types or algorithms keysetd does not support (Ed448, an ``alg`` it does
not know, an old 1024-bit RSA key). One such key must not block every update, so
``check`` -- which every source's snapshot goes through (the pipeline's validation, the
file, command, env and jwks_url sources alike, ``keysetd validate``, ``plan``,
``rotate``) -- sets it aside, logs ``jwks_key_skipped`` (source, kid, rule, reason;
never key material) and counts it (``skipped_counts``, exported as
``keysetd_keys_skipped_total``). The filter lives here, not in a source, so that a
certs document saved to a file, printed by a command or put in the environment is read
exactly as the same document fetched from its URL.

A key is skipped only when (a) it is declared not for signatures (``use`` other than
"sig", ``key_ops`` without sign/verify, an encryption ``alg``, an ECDH curve, an unknown
``kty``), or (b) every rule it breaks only says keysetd cannot use it (unknown-alg,
alg-mismatch, rsa-too-small, an unsupported curve) -- never when it is broken
(bad-member, invalid-key, point-not-on-curve, x5c-mismatch, alg-none...), which may
be corruption or tampering and keeps refusing the set, so the last-known-good stays.

A key holding private members is never skipped, in any source: it is refused with the
rule it breaks. In a local source (file, command, env) a private key is one the
operator put there to sign with; dropping it, even with a warning, would publish a set
without it and leave signers on an old key or none, which is worse than a refused
cycle that names it. In a remote JWKS a private member is a leak that
private-in-public refuses anyway (an HMAC secret or the private half of an
encryption key must not be hidden by keysetd). So the stricter rule is the same
everywhere, and only public keys -- what a provider's JWKS is made of -- are skipped.

The set is refused when no usable signing key remains (empty-keyset, with each
skipped kid and its rule), or when ``active_kid`` names a skipped key.

Certificates: ``x5c`` (every entry a base64 DER certificate, the first holding the key
itself), ``x5t`` and ``x5t#S256`` (SHA-1/SHA-256 of that certificate) are checked for
every source (x5c-mismatch) and then kept for the jwks output, so tokens naming their
key by ``x5t`` (ADFS) can still be matched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache

from keysetd.crypto import (
    ALGORITHMS,
    HMAC_MIN_BYTES,
    RSA_MIN_BITS,
    KeyMaterialError,
    b64u_decode,
    check_x509,
    is_b64u,
    load_private,
    load_public,
)
from keysetd.errors import InvalidKeyset, Problem
from keysetd.formats import decode_partial
from keysetd.formats.jwks import NotForSignatures, kid_label, short
from keysetd.log import event
from keysetd.model import PRIVATE_MEMBERS, PUBLIC_MEMBERS, Key, Keyset

__all__ = [
    "RULES",
    "check",
    "check_report",
    "find_problems",
    "resolve_active",
    "skipped_counts",
    "validate",
    "weak_secrets",
]

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
    "x5c-mismatch",
)
#: Members each kty must carry: its public ones, and for oct the secret.
_REQUIRED: Mapping[str, tuple[str, ...]] = {**PUBLIC_MEMBERS, "oct": PRIVATE_MEMBERS["oct"]}
_KID_MAX = 1024
#: Validated keys remembered per process (a 10,000-key keyset plus churn).
_VERDICT_CACHE = 32768
# Set-level rules that a key dropped while decoding can trigger spuriously.
_SET_RULES = frozenset({"empty-keyset", "active-kid-unknown", "missing-active-kid"})
#: Rules that only say keysetd cannot use a key (not that it is broken): a public key
#: breaking nothing else is skipped (module docstring).
_UNUSABLE_RULES = frozenset({"unknown-alg", "alg-mismatch", "rsa-too-small"})
#: RFC 7518 section 4.1: key management algorithms, i.e. encryption keys.
_JWE_ALGS = frozenset(
    {
        "RSA1_5", "RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512",
        "A128KW", "A192KW", "A256KW", "dir",
        "ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW",
        "A128GCMKW", "A192GCMKW", "A256GCMKW",
        "PBES2-HS256+A128KW", "PBES2-HS384+A192KW", "PBES2-HS512+A256KW",
    }
)  # fmt: skip
_ECDH_CURVES = frozenset({"X25519", "X448"})
#: Origins whose skipped keys were last warned about (a warning per change, not per cycle).
_WARNED_MAX = 256


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
    try:
        check_x509(key)
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
            detail = (
                "this kid was published before with different key material (taken once the "
                "old material is past retention and signers left it, or after keysetd forget)"
            )
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


def _not_for_signatures(key: Key) -> str | None:
    """Why a key is declared for something other than signatures, or None."""
    if key.use != "sig":
        return f"use {short(key.use)}: not a signature key"
    if key.alg in _JWE_ALGS:
        return f"alg {short(key.alg)} is an encryption algorithm"
    crv = key.member("crv")
    if key.kty == "OKP" and crv in _ECDH_CURVES:
        return f"crv {short(crv or '')} is a key agreement curve"
    return None


def _unusable(problem: Problem) -> bool:
    """The problem says keysetd cannot use the key, not that the key is broken."""
    if problem.rule in _UNUSABLE_RULES:
        return True
    # crypto names curves it does not load "unsupported ... curve" (secp256k1, X448...).
    return problem.rule == "invalid-key" and problem.detail.startswith("unsupported ")


def _skip(key: Key, declared_public: bool) -> tuple[Problem, ...]:
    """Why a key is skipped (the first problem names the rule), or () to keep it.

    A key kept is validated as usual, and refuses the set if it is bad.
    """
    if key.has_private:  # never dropped: refused with its rule (module docstring)
        return ()
    kid = kid_label(key.kid)
    reason = _not_for_signatures(key)
    if reason is not None:
        return (Problem(kid, "unsupported-use", reason),)
    problems = _key_problems(key, declared_public)
    if problems and all(_unusable(p) for p in problems):
        return tuple(dataclasses.replace(p, kid=kid) for p in problems)
    return ()


class _Skips:
    """Counts of skipped keys by rule, and what was last warned about per origin."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.warned: dict[str, frozenset[Problem]] = {}

    def record(self, where: str, skipped: tuple[Problem, ...]) -> None:
        with self.lock:
            for problem in skipped:
                self.counts[problem.rule] += 1
            before = self.warned.get(where, frozenset())
            if len(self.warned) >= _WARNED_MAX and where not in self.warned:
                self.warned.clear()
            self.warned[where] = frozenset(skipped)
        for problem in skipped:
            if problem not in before:
                event(
                    "jwks_key_skipped",
                    logging.WARNING,
                    source=where or None,
                    kid=problem.kid,
                    rule=problem.rule,
                    reason=problem.detail,
                )


_SKIPS = _Skips()


def skipped_counts() -> dict[str, int]:
    """Keys skipped by ``check`` in this process so far, by rule (for the metrics)."""
    with _SKIPS.lock:
        return dict(_SKIPS.counts)


def check_report(
    data: bytes,
    fmt: str = "auto",
    *,
    hmac_alg: str = "HS256",
    where: str = "",
    history: Mapping[str, str] | None = None,
    declared_public: bool = False,
    require_active: bool = False,
) -> tuple[Keyset, tuple[Problem, ...]]:
    """Like ``check``, plus the keys it skipped (each as the Problem it was skipped for).

    Skipped keys are logged (once per change per ``where``) and counted here.
    """
    decoded, problems = decode_partial(data, fmt, hmac_alg=hmac_alg)
    if decoded is None:
        raise InvalidKeyset(problems, where)
    # Each skipped key: the problems it breaks, the first naming the rule it is skipped for.
    set_aside: list[tuple[Problem, ...]] = [
        (Problem(p.kid, p.rule, p.detail),) for p in problems if isinstance(p, NotForSignatures)
    ]
    problems = tuple(p for p in problems if not isinstance(p, NotForSignatures))
    kept: list[Key] = []
    for key in decoded:
        reasons = _skip(key, declared_public)
        if reasons:
            set_aside.append(reasons)
        else:
            kept.append(key)
    skipped = [reasons[0] for reasons in set_aside]
    keyset = resolve_active(dataclasses.replace(decoded, keys=tuple(kept)))
    found = find_problems(
        keyset, history=history, declared_public=declared_public, require_active=require_active
    )
    if problems:
        found = tuple(p for p in found if p.rule not in _SET_RULES)
    if skipped:
        found = _explain_skips(keyset, found, skipped)
    if problems or found:
        refused = (*problems, *found)
        if skipped and any(p.rule in _SET_RULES for p in found):
            # The set fails for want of the skipped keys: name each and what it breaks.
            refused = (*refused, *(p for reasons in set_aside for p in reasons))
        raise InvalidKeyset(refused, where)
    _SKIPS.record(where, tuple(skipped))
    return keyset, tuple(skipped)


def _explain_skips(
    keyset: Keyset, found: tuple[Problem, ...], skipped: list[Problem]
) -> tuple[Problem, ...]:
    """Set-level problems that exist because keys were skipped, said so."""
    skipped_kids = {p.kid for p in skipped}
    explained: list[Problem] = []
    for problem in found:
        detail = problem.detail
        if problem.rule == "empty-keyset":
            detail = f"no usable signing key remains: {len(skipped)} key(s) skipped"
        elif problem.rule == "active-kid-unknown" and keyset.active_kid in skipped_kids:
            detail = "active_kid names a key keysetd cannot use (skipped)"
        explained.append(dataclasses.replace(problem, detail=detail))
    return tuple(explained)


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
    """Decode, skip keys keysetd cannot use, resolve the active kid, validate.

    The keyset, or InvalidKeyset with all problems. See the module docstring for which
    keys are skipped (with a warning) and when the set is refused instead.
    """
    keyset, _ = check_report(
        data,
        fmt,
        hmac_alg=hmac_alg,
        where=where,
        history=history,
        declared_public=declared_public,
        require_active=require_active,
    )
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
