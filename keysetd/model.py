"""Keyset and Key: immutable values, no I/O.

A Key keeps its public JWK members apart from its private ones so that the
private half never leaks through ``repr``, equality-based logging or a
public render by accident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "PRIVATE_MEMBERS",
    "PUBLIC_MEMBERS",
    "Key",
    "Keyset",
    "Snapshot",
    "canonical_json",
]

#: Public members per ``kty`` beyond kty/kid/alg/use (RFC 7518 section 6).
PUBLIC_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
    "oct": (),
}
#: Private members per ``kty``; for ``oct`` the secret itself.
PRIVATE_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("d", "p", "q", "dp", "dq", "qi"),
    "EC": ("d",),
    "OKP": ("d",),
    "oct": ("k",),
}


def canonical_json(value: object) -> bytes:
    """Deterministic compact JSON (sorted keys) for hashing and byte-stable outputs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True, repr=False)
class Key:
    """One JWK. ``public`` and ``private`` hold base64url members as sorted pairs."""

    kid: str
    kty: str
    alg: str
    public: tuple[tuple[str, str], ...]
    private: tuple[tuple[str, str], ...] = field(default=(), compare=True)
    use: str = "sig"
    #: Checked X.509 members kept for verifier outputs (standard base64 DER chain, leaf
    #: thumbprints); metadata, not key material: outside ``material_digest``.
    x5c: tuple[str, ...] = ()
    x5t: str = ""
    x5t_s256: str = ""
    _digest: str = field(default="", compare=False, init=False)

    def __post_init__(self) -> None:
        # Computed once: fingerprints and history look it up on every cycle.
        if self.kty == "oct":
            material: object = {"kty": "oct", "k": self.member("k") or ""}
        else:
            material = {"kty": self.kty, **dict(self.public)}
        object.__setattr__(self, "_digest", hashlib.sha256(canonical_json(material)).hexdigest())

    @property
    def has_private(self) -> bool:
        return bool(self.private)

    @property
    def is_symmetric(self) -> bool:
        return self.kty == "oct"

    def member(self, name: str) -> str | None:
        """A public or private member by name, or None."""
        for key, value in (*self.public, *self.private):
            if key == name:
                return value
        return None

    def public_jwk(self) -> dict[str, str]:
        """The public JWK: kty, kid, alg, use and the public members only."""
        jwk = {"kty": self.kty, "kid": self.kid, "alg": self.alg, "use": self.use}
        jwk.update(self.public)
        return jwk

    def private_jwk(self) -> dict[str, str]:
        """The full JWK, private members included."""
        jwk = self.public_jwk()
        jwk.update(self.private)
        return jwk

    def material_digest(self) -> str:
        """SHA-256 (hex) identifying the key material: public members, or the secret for oct.

        Used to detect a kid reused for other material and in fingerprints; it
        reveals nothing an attacker could sign with.
        """
        return self._digest

    def x509_members(self) -> dict[str, object]:
        """``x5c``, ``x5t``, ``x5t#S256`` as far as the key has them (JWK member names)."""
        members: dict[str, object] = {}
        if self.x5c:
            members["x5c"] = list(self.x5c)
        if self.x5t:
            members["x5t"] = self.x5t
        if self.x5t_s256:
            members["x5t#S256"] = self.x5t_s256
        return members

    def without_private(self) -> Key:
        return Key(
            kid=self.kid,
            kty=self.kty,
            alg=self.alg,
            public=self.public,
            use=self.use,
            x5c=self.x5c,
            x5t=self.x5t,
            x5t_s256=self.x5t_s256,
        )

    def __repr__(self) -> str:
        return (
            f"Key(kid={self.kid!r}, kty={self.kty!r}, alg={self.alg!r}, private={self.has_private})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Keyset:
    """An ordered, validated-or-not set of keys with the kid signers should use."""

    keys: tuple[Key, ...]
    active_kid: str | None = None

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(key.kid for key in self.keys)

    def get(self, kid: str) -> Key | None:
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    @property
    def active(self) -> Key | None:
        return self.get(self.active_kid) if self.active_kid is not None else None

    def ordered(self) -> tuple[Key, ...]:
        """Active key first, then the rest by kid: the order every output uses."""
        return tuple(sorted(self.keys, key=lambda k: (k.kid != self.active_kid, k.kid)))

    def fingerprint(self) -> str:
        """SHA-256 (hex) over the active kid and each key's kid, alg and material digest."""
        body = {
            "active_kid": self.active_kid,
            "keys": [
                {
                    "kid": k.kid,
                    "kty": k.kty,
                    "alg": k.alg,
                    "use": k.use,
                    "material": k.material_digest(),
                    "private": k.has_private,
                }
                for k in sorted(self.keys, key=lambda k: k.kid)
            ],
        }
        return hashlib.sha256(canonical_json(body)).hexdigest()

    def public_only(self) -> Keyset:
        """The same keys without private members; oct keys are dropped (no public half)."""
        return Keyset(
            keys=tuple(k.without_private() for k in self.keys if k.kty != "oct"),
            active_kid=self.active_kid,
        )

    def __repr__(self) -> str:
        return f"Keyset(active_kid={self.active_kid!r}, kids={list(self.kids)!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Snapshot:
    """What a source returned: raw bytes plus the format they are in, if the source knows."""

    data: bytes
    origin: str
    format: str | None = None

    def __repr__(self) -> str:
        return f"Snapshot(origin={self.origin!r}, format={self.format!r}, size={len(self.data)})"
