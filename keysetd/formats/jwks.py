"""The jwks format (RFC 7517 plus ``active_kid``): structural decoding and byte-stable renders.

Also home of the strict JSON reader the JSON formats share: UTF-8 only, no NaN,
duplicate member names recorded (never "last one wins").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from keysetd.crypto import thumbprint
from keysetd.errors import InvalidKeyset, Problem
from keysetd.model import PRIVATE_MEMBERS, PUBLIC_MEMBERS, Key, Keyset

__all__ = [
    "MAX_KEYS",
    "JsonObject",
    "NotForSignatures",
    "decode_jwks",
    "kid_label",
    "load_json",
    "parse_jwks",
    "render_jwks",
    "render_keyset",
]

#: More keys than this in one document is refused as "too-large".
MAX_KEYS = 20_000

_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_ALGS = {"Ed25519": "EdDSA", "Ed448": "EdDSA"}
_SIGNATURE_OPS = frozenset({"sign", "verify"})
#: Member names that hold private material in some key type (also of types keysetd lacks).
_PRIVATE_NAMES = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "priv", "seed", "oth"})


@dataclasses.dataclass(frozen=True, slots=True)
class NotForSignatures(Problem):
    """A key with no private member that is no signature key keysetd knows (unknown kty,
    key_ops without sign/verify): ``keysetd.validate.check`` skips it with a warning.

    A plain ``Problem`` (refusing the set) when the key carries private members.
    """


class JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers member names it saw more than once."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        seen: set[str] = set()
        dups: list[str] = []
        for name, _ in pairs:
            if name in seen and name not in dups:
                dups.append(name)
            seen.add(name)
        self.duplicates = tuple(dups)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def short(text: str, limit: int = 40) -> str:
    """A repr of a document-supplied name, cut so messages stay small."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def kid_label(kid: str) -> str:
    """The kid as problems name it: whole unless absurdly long."""
    return kid if len(kid) <= 128 else kid[:64] + "..."


def load_json(data: bytes) -> JsonObject:
    """Strict JSON object from bytes; InvalidKeyset ("malformed") for anything else."""

    def malformed(detail: str) -> InvalidKeyset:
        return InvalidKeyset([Problem("-", "malformed", detail)])

    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise malformed("not UTF-8 text") from None
    if not text.strip():
        raise malformed("empty document")
    try:
        value = json.loads(text, object_pairs_hook=JsonObject, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise malformed(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):
        raise malformed("not valid JSON (NaN/Infinity, an overlong number, or too deep)") from None
    if not isinstance(value, JsonObject):
        raise malformed("the top level is not a JSON object")
    return value


def text_ok(value: object) -> TypeGuard[str]:
    """A str that encodes to UTF-8 (JSON escapes can smuggle in lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def active_kid(doc: Mapping[str, object], problems: list[Problem]) -> str | None:
    """The optional top-level ``active_kid``; a non-string is a problem."""
    value = doc.get("active_kid")
    if value is None:
        return None
    if not text_ok(value):
        problems.append(Problem("-", "bad-member", "active_kid is not a string"))
        return None
    return value


def _infer_alg(kty: str, crv: str | None, hmac_alg: str) -> str:
    if kty == "EC":
        return _EC_ALGS.get(crv or "", "")
    if kty == "OKP":
        return _OKP_ALGS.get(crv or "", "")
    return hmac_alg if kty == "oct" else "RS256"


def _strings(
    raw: Mapping[str, object], names: tuple[str, ...], bad: Callable[[str, str], None]
) -> dict[str, str]:
    """The members of ``names`` present in ``raw``; one that is not a string is bad."""
    found: dict[str, str] = {}
    for name in names:
        if name not in raw:
            continue
        value = raw[name]
        if text_ok(value):
            found[name] = value
        else:
            bad("bad-member", f"{name} is not a string")
    return found


def _not_signing_ops(raw: Mapping[str, object]) -> bool:
    """``key_ops`` is present and allows neither sign nor verify (RFC 7517 4.3)."""
    ops = raw.get("key_ops")
    return isinstance(ops, list) and not _SIGNATURE_OPS.intersection(
        op for op in ops if isinstance(op, str)
    )


def _decode_key(raw: object, index: int, hmac_alg: str, problems: list[Problem]) -> Key | None:
    """One JWK, or None after recording why it cannot be built."""
    label = f"keys[{index}]"
    if not isinstance(raw, dict):
        problems.append(Problem("-", "malformed", f"{label} is not a JSON object"))
        return None
    kid_raw = raw.get("kid")
    name = kid_label(kid_raw) if isinstance(kid_raw, str) and text_ok(kid_raw) else "-"
    found: list[Problem] = []

    def bad(rule: str, detail: str) -> None:
        found.append(Problem(name, rule, f"{label}: {detail}"))

    for dup in getattr(raw, "duplicates", ()):
        bad("bad-member", f"member {short(dup)} appears more than once")
    kty = raw.get("kty")
    if kty is None:
        bad("missing-kty", "kty is missing")
    elif not text_ok(kty):
        bad("bad-member", "kty is not a string")
    elif kty not in PUBLIC_MEMBERS:
        detail = f"{label}: kty {short(kty)} is not one of RSA, EC, OKP, oct"
        kind = Problem if _PRIVATE_NAMES.intersection(raw) else NotForSignatures
        found.append(kind(name, "unknown-kty", detail))
    if found or not isinstance(kty, str):
        problems.extend(found)
        return None
    public = _strings(raw, PUBLIC_MEMBERS[kty], bad)
    private = _strings(raw, PRIVATE_MEMBERS[kty], bad)
    if kty == "RSA" and "oth" in raw:
        bad("invalid-key", "multi-prime RSA keys (oth) are not supported")
    extras = _strings(raw, ("kid", "alg", "use", "x5t", "x5t#S256"), bad)
    chain = _x5c(raw, bad)
    alg = extras.get("alg", _infer_alg(kty, public.get("crv"), hmac_alg))
    key = Key(
        kid=extras.get("kid", ""),
        kty=kty,
        alg=alg,
        public=tuple(sorted(public.items())),
        private=tuple(sorted(private.items())),
        use=extras.get("use", "sig"),
        # Thumbprints without the certificate they hash cannot be checked: not carried.
        x5c=chain,
        x5t=extras.get("x5t", "") if chain else "",
        x5t_s256=extras.get("x5t#S256", "") if chain else "",
    )
    if _not_signing_ops(raw):
        detail = f"{label}: key_ops has neither sign nor verify"
        if private:
            found.append(Problem(name, "unsupported-use", detail))
        else:  # not for signatures at all: its other findings do not matter
            problems.append(NotForSignatures(name, "unsupported-use", detail))
            return None
    if "kid" not in raw and not found:
        if kty == "oct":
            # A thumbprint of a secret would publish a hash of it: insist on a kid.
            bad("missing-member", "kid is required for oct keys")
        else:
            try:
                key = dataclasses.replace(key, kid=thumbprint(key))
            except ValueError:
                bad("missing-member", "kid is missing and no RFC 7638 thumbprint can be computed")
    if found:
        problems.extend(found)
        return None
    return key


def _x5c(raw: Mapping[str, object], bad: Callable[[str, str], None]) -> tuple[str, ...]:
    """The ``x5c`` chain as strings (checked against the key by validation), or ()."""
    if "x5c" not in raw:
        return ()
    chain = raw["x5c"]
    if (
        not isinstance(chain, list)
        or not chain
        or not all(text_ok(entry) and entry for entry in chain)
    ):
        bad("bad-member", "x5c is not a non-empty list of base64 certificates")
        return ()
    return tuple(chain)


def parse_jwks(
    doc: Mapping[str, object], *, hmac_alg: str = "HS256"
) -> tuple[Keyset, tuple[Problem, ...]]:
    """The keys that could be built plus every structural problem found."""
    problems: list[Problem] = [
        Problem("-", "malformed", f"member {short(dup)} appears more than once")
        for dup in getattr(doc, "duplicates", ())
    ]
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        problems.append(Problem("-", "malformed", 'a JWK Set needs a "keys" list'))
        return Keyset(()), tuple(problems)
    if len(raw_keys) > MAX_KEYS:
        problems.append(Problem("-", "too-large", f"more than {MAX_KEYS} keys"))
        return Keyset(()), tuple(problems)
    active = active_kid(doc, problems)
    keys = [_decode_key(raw, i, hmac_alg, problems) for i, raw in enumerate(raw_keys)]
    return Keyset(tuple(k for k in keys if k is not None), active), tuple(problems)


def decode_jwks(doc: Mapping[str, object], *, hmac_alg: str = "HS256") -> Keyset:
    """A Keyset from a decoded JWK Set; InvalidKeyset lists every structural problem."""
    keyset, problems = parse_jwks(doc, hmac_alg=hmac_alg)
    if problems:
        raise InvalidKeyset(problems)
    return keyset


def _ordered_jwk(key: Key, *, private: bool) -> dict[str, object]:
    """kty, kid, alg, use, the public and (if asked) private members in RFC order, then the
    checked x5c, x5t and x5t#S256 when the source had them."""
    jwk: dict[str, object] = {"kty": key.kty, "kid": key.kid, "alg": key.alg, "use": key.use}
    names = PUBLIC_MEMBERS.get(key.kty, ()) + (PRIVATE_MEMBERS.get(key.kty, ()) if private else ())
    for name in names:
        value = key.member(name)
        if value is not None:
            jwk[name] = value
    jwk.update(key.x509_members())
    return jwk


def dump(doc: object) -> bytes:
    """Indented, ASCII-only JSON with a trailing newline: the byte-stable file form."""
    return (json.dumps(doc, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _dump_keyset(head: dict[str, str], keys: list[dict[str, object]]) -> bytes:
    """Like ``dump`` but one key per line: as readable, and C-encoded (indent= is pure Python)."""
    lines = ["{"]
    lines += [f"  {json.dumps(name)}: {json.dumps(value)}," for name, value in head.items()]
    if not keys:
        lines.append('  "keys": []')
    else:
        lines.append('  "keys": [')
        body = [json.dumps(key, ensure_ascii=True, separators=(", ", ": ")) for key in keys]
        lines.append(",\n".join(f"    {line}" for line in body))
        lines.append("  ]")
    lines.append("}\n")
    return "\n".join(lines).encode("ascii")


def render_jwks(keyset: Keyset) -> bytes:
    """``{"keys": [...]}`` with public members only, active first; oct keys are skipped."""
    keys = [_ordered_jwk(k, private=False) for k in keyset.ordered() if k.kty != "oct"]
    return _dump_keyset({}, keys)


def render_keyset(keyset: Keyset) -> bytes:
    """The native format for signers: private members and ``active_kid``."""
    head = {"active_kid": keyset.active_kid} if keyset.active_kid is not None else {}
    return _dump_keyset(head, [_ordered_jwk(k, private=True) for k in keyset.ordered()])
