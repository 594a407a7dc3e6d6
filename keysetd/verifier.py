"""The hot-reloading JWT verifier: PyJWT's ``decode`` over a keyset file that keysetd maintains.

``Verifier(path, algorithms=[...])`` reads a jwks, keyset or rgs output (any format
``keysetd.formats.decode`` detects) into an immutable map kid -> pre-built key. The hot
path is one dict lookup by kid plus PyJWT's signature check. The file's identity
(device, inode, size, mtime, ctime) is checked at most every ``check_interval``; the file
is re-read and re-parsed only when that identity changed. An unknown kid re-checks at
once, rate-limited to one ``stat`` per ``max(check_interval / 10, 10 ms)``, so a flood of
random kids costs neither parsing nor more than that many syscalls. A reload builds a new
map and swaps one reference; a file that vanishes or turns invalid keeps the last good
map and reports it (``status().last_error``, a warning on the ``keysetd.verifier`` logger).

Errors ``decode`` raises, all PyJWT's (catch ``jwt.InvalidTokenError`` for every refusal)::

    jwt.InvalidTokenError           PyJWT: expired, bad signature, audience, issuer, ...
    └── VerifierError               the keyset could not vouch for the token
        ├── UnknownKidError         .kid is not in the keyset, even after a re-check
        ├── MissingKidError         no kid, and not exactly one usable key to fall back on
        └── UnusableKeyError        .kid is there, but its alg is not allowed or not valid

``KeysetUnavailable`` (a ``keysetd.errors.ConfigError``) is raised by the constructor
alone, when the first load fails: there is no last good keyset to fall back on yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from keysetd import formats
from keysetd.crypto import (
    ALGORITHMS,
    HMAC_MIN_BYTES,
    RSA_MIN_BITS,
    KeyMaterialError,
    b64u_decode,
    load_public,
)
from keysetd.errors import ConfigError, InvalidKeyset
from keysetd.model import Key, Keyset
from keysetd.readfile import read_regular

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "KeysetUnavailable",
    "MissingKidError",
    "UnknownKidError",
    "UnusableKeyError",
    "Verifier",
    "VerifierError",
    "VerifierKey",
    "VerifierStatus",
]

_log = logging.getLogger("keysetd.verifier")

#: Floor of the unknown-kid re-check interval (the other bound is check_interval / 10).
MIN_RECHECK: Final = 0.01
#: Header segments cached (segment -> kid) so the hot path does not parse the header twice.
_HEADER_CACHE_SIZE: Final = 1024
_HEADER_CACHE_MAX_LEN: Final = 1024
_MISSING: Final = object()

_VerifyKey: TypeAlias = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | bytes
)
_SIGNATURE_KEYS: Final = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
_Identity: TypeAlias = tuple[int, int, int, int, int]


class VerifierError(jwt.InvalidTokenError):
    """The keyset could not vouch for the token (a PyJWT ``InvalidTokenError``)."""


class UnknownKidError(VerifierError):
    """The token's kid is not in the keyset, even after re-checking the file."""

    def __init__(self, kid: str, path: str) -> None:
        self.kid = kid
        super().__init__(f"kid {kid!r} is not in the keyset {path}")


class MissingKidError(VerifierError):
    """The token has no kid, and the keyset has not exactly one usable key to fall back on."""

    def __init__(self, usable: int, path: str) -> None:
        self.usable = usable
        super().__init__(
            f"the token has no kid and the keyset {path} has {usable} usable keys:"
            " a token without kid is accepted only when exactly one key can verify it"
        )


class UnusableKeyError(VerifierError):
    """The kid is in the keyset, but this verifier may not use its key (alg, use, material)."""

    def __init__(self, kid: str, reason: str) -> None:
        self.kid = kid
        self.reason = reason
        super().__init__(f"kid {kid!r} cannot verify tokens here: {reason}")


class KeysetUnavailable(ConfigError):
    """The first load failed: no keyset to verify with yet (missing, unreadable or invalid)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"verifier keyset {path}: {reason}")


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """What the verifier knows about one kid: never its material."""

    kid: str
    kty: str
    alg: str
    #: None when the key verifies tokens here; else why it does not.
    unusable: str | None = None

    @property
    def usable(self) -> bool:
        return self.unusable is None


@dataclass(frozen=True, slots=True)
class VerifierStatus:
    """A snapshot of the verifier's state for health checks and logs."""

    path: str
    #: Wall-clock time the keyset in use was loaded.
    loaded_at: float
    fingerprint: str
    kids: tuple[str, ...]
    keys: tuple[VerifierKey, ...]
    #: None while the file is fine; else why the last check or reload failed (the last
    #: good keyset keeps serving meanwhile).
    last_error: str | None
    last_error_at: float | None
    #: How many times the file was stat'ed, and read and parsed (including failures).
    checks: int
    parses: int


@dataclass(frozen=True, slots=True)
class _Entry:
    info: VerifierKey
    #: The key object PyJWT verifies with (b"" when unusable: never handed to PyJWT).
    key: _VerifyKey
    #: The algs a token for this kid may use: empty when the key is unusable.
    algorithms: tuple[str, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class _KeyMap:
    """One loaded keyset: never mutated after it is published (swapped whole)."""

    by_kid: dict[str, _Entry]
    #: The only usable key, for tokens without kid; None unless exactly one is usable.
    sole: _Entry | None
    usable: int
    loaded_at: float
    fingerprint: str


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: Key algs that name a token alg by another name: oidc-provider publishes Ed25519 keys
#: with ``alg: "Ed25519"`` (the fully specified name of RFC 9864); tokens say ``EdDSA``.
_TOKEN_ALG = {"Ed25519": "EdDSA"}


def _token_alg(key: Key) -> str:
    """The alg a token signed by ``key`` carries in its header."""
    return _TOKEN_ALG.get(key.alg, key.alg)


def _unusable_reason(key: Key, allowed: frozenset[str]) -> str | None:
    """Why ``key`` may not verify here (alg none, alg not allowed or not fitting), or None."""
    if key.use != "sig":
        return f"use is {key.use!r}, not 'sig'"
    family = ALGORITHMS.get(key.alg)
    if family is None:
        return f"alg {key.alg!r} is not a signature algorithm keysetd accepts"
    if _token_alg(key) not in allowed:
        listed = ", ".join(sorted(allowed))
        return f"alg {key.alg} is not among the verifier's algorithms ({listed})"
    kty, crv = family
    if key.kty != kty or (crv is not None and key.member("crv") != crv):
        return f"alg {key.alg} does not fit a {key.kty} key"
    return None


def _build_key(key: Key) -> _VerifyKey:
    """The key object PyJWT verifies with; KeyMaterialError when the members do not form one."""
    if key.kty == "oct":
        secret = b64u_decode(key.member("k") or "")
        if len(secret) < HMAC_MIN_BYTES.get(key.alg, 0):
            raise KeyMaterialError("hmac-too-short", f"the secret is shorter than {key.alg} needs")
        return secret
    public = load_public(key)
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < RSA_MIN_BITS:
        raise KeyMaterialError("rsa-too-small", f"RSA key under {RSA_MIN_BITS} bits")
    if isinstance(public, _SIGNATURE_KEYS):
        return public
    raise KeyMaterialError("invalid-key", f"kty {key.kty} cannot verify signatures")


def _build_map(keyset: Keyset, allowed: frozenset[str], previous: _KeyMap | None) -> _KeyMap:
    """A new map; entries whose kid and material did not change are reused as they are."""
    by_kid: dict[str, _Entry] = {}
    for key in keyset:
        digest = key.material_digest()
        old = previous.by_kid.get(key.kid) if previous is not None else None
        if old is not None and old.digest == digest and old.info.alg == key.alg:
            by_kid[key.kid] = old
            continue
        reason = _unusable_reason(key, allowed)
        built: _VerifyKey = b""
        if reason is None:
            try:
                built = _build_key(key)
            except (KeyMaterialError, ValueError) as exc:
                reason = f"{getattr(exc, 'rule', 'invalid-key')}: {exc}"
        info = VerifierKey(kid=key.kid, kty=key.kty, alg=key.alg, unusable=reason)
        algorithms = (_token_alg(key),) if reason is None else ()
        by_kid[key.kid] = _Entry(info=info, key=built, algorithms=algorithms, digest=digest)
    usable = [entry for entry in by_kid.values() if entry.algorithms]
    return _KeyMap(
        by_kid=by_kid,
        sole=usable[0] if len(usable) == 1 else None,
        usable=len(usable),
        loaded_at=time.time(),
        fingerprint=keyset.fingerprint(),
    )


class Verifier:
    """Verify JWTs with PyJWT against a keyset file that may change at any time.

    Safe to share between threads: readers never take a lock; reloads are serialized.
    In asyncio code use ``await verifier.adecode(...)``: file checks run in a thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        algorithms: Sequence[str],
        check_interval: float = 1.0,
        *,
        hmac_alg: str = "HS256",
    ) -> None:
        """Load ``path`` now (blocking; KeysetUnavailable when that fails).

        ``algorithms``: what tokens may use; a key verifies only tokens of its own alg,
        and only when that alg is listed here. ``hmac_alg``: the alg of rgs secrets.
        """
        if isinstance(algorithms, str):
            raise TypeError("algorithms must be a list of alg names, not a string")
        unknown = [alg for alg in algorithms if alg not in ALGORITHMS]
        if unknown:
            raise ValueError(
                f"unknown or refused algorithms {unknown!r}; use some of {', '.join(ALGORITHMS)}"
            )
        if not algorithms:
            raise ValueError("algorithms must name at least one alg")
        if check_interval < 0:
            raise ValueError("check_interval must be >= 0 seconds")
        if hmac_alg not in HMAC_MIN_BYTES:
            raise ValueError(f"hmac_alg must be one of {', '.join(HMAC_MIN_BYTES)}")
        self._path = os.fspath(path)
        self._allowed = frozenset(algorithms)
        self._interval = float(check_interval)
        self._min_recheck = max(self._interval / 10, MIN_RECHECK)
        self._hmac_alg = hmac_alg
        self._lock = threading.Lock()
        self._headers: dict[str | bytes, str | None] = {}
        # Written under the lock only; read without it (single attribute reads are atomic).
        self._seen: _Identity | None = None
        # The first unknown kid re-checks at once, whenever it comes.
        self._last_stat = float("-inf")
        self._next_check = time.monotonic() + self._interval
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._checks = 0
        self._parses = 0
        self._background = False
        with self._lock:
            self._checks += 1
            keymap = self._load_locked(None)
        if keymap is None:
            raise KeysetUnavailable(self._path, self._last_error or "not loaded")
        self._map: _KeyMap = keymap

    # -- public API ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def loaded_at(self) -> float:
        """Wall-clock time the keyset in use was loaded."""
        return self._map.loaded_at

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._map.by_kid)

    @property
    def last_error(self) -> str | None:
        """None while the file is fine; else why the last check failed (the last good keeps on)."""
        return self._last_error

    def status(self) -> VerifierStatus:
        keymap = self._map
        return VerifierStatus(
            path=self._path,
            loaded_at=keymap.loaded_at,
            fingerprint=keymap.fingerprint,
            kids=tuple(keymap.by_kid),
            keys=tuple(entry.info for entry in keymap.by_kid.values()),
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            checks=self._checks,
            parses=self._parses,
        )

    def refresh(self) -> bool:
        """Check the file now, ignoring the intervals (e.g. on SIGHUP); True when it reloaded."""
        with self._lock:
            return self._check_locked()

    def key_for(self, token: str | bytes) -> VerifierKey:
        """The key ``decode`` would verify ``token`` with (re-checking for an unknown kid).

        Raises like ``decode`` does before the signature check; verifies nothing.
        """
        return self._entry(token, time.monotonic()).info

    def decode(
        self,
        token: str | bytes,
        *,
        options: Options | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        subject: str | None = None,
        leeway: float | timedelta = 0,
    ) -> dict[str, Any]:
        """The verified claims; PyJWT's exceptions (``jwt.InvalidTokenError`` and subclasses)."""
        entry = self._entry(token, time.monotonic())
        return _pyjwt_decode(
            token,
            entry,
            options=options,
            audience=audience,
            issuer=issuer,
            subject=subject,
            leeway=leeway,
        )

    def decode_complete(
        self,
        token: str | bytes,
        *,
        options: Options | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        leeway: float | timedelta = 0,
    ) -> dict[str, Any]:
        """As ``jwt.decode_complete``: ``{"header", "payload", "signature"}``, verified."""
        entry = self._entry(token, time.monotonic())
        return jwt.decode_complete(
            token,
            entry.key,
            entry.algorithms,
            options=options,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
        )

    async def adecode(
        self,
        token: str | bytes,
        *,
        options: Options | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        subject: str | None = None,
        leeway: float | timedelta = 0,
    ) -> dict[str, Any]:
        """``decode`` for asyncio: file I/O never runs on the event loop.

        A due periodic check is started in a worker thread and not awaited (the current
        keyset serves meanwhile); an unknown kid awaits its re-check in a worker thread.
        The signature check runs inline: it is CPU work of tens of microseconds.
        """
        now = time.monotonic()
        if now >= self._next_check and not self._background:
            self._background = True
            asyncio.get_running_loop().run_in_executor(None, self._background_check)
        kid = self._kid(token)
        entry = self._pick(kid, self._map)
        if entry is None:
            assert kid is not None
            if now - self._last_stat >= self._min_recheck:
                entry = self._pick(kid, await asyncio.to_thread(self._recheck, now))
            if entry is None:
                raise UnknownKidError(kid, self._path)
        entry = self._usable(entry)
        return _pyjwt_decode(
            token,
            entry,
            options=options,
            audience=audience,
            issuer=issuer,
            subject=subject,
            leeway=leeway,
        )

    def __repr__(self) -> str:
        return f"Verifier(path={self._path!r}, kids={list(self._map.by_kid)!r})"

    # -- the hot path ----------------------------------------------------------------------

    def _entry(self, token: str | bytes, now: float) -> _Entry:
        if now >= self._next_check:
            self._periodic_check()
        kid = self._kid(token)
        entry = self._pick(kid, self._map)
        if entry is None:
            assert kid is not None
            entry = self._pick(kid, self._recheck(now))
            if entry is None:
                raise UnknownKidError(kid, self._path)
        return self._usable(entry)

    def _kid(self, token: str | bytes) -> str | None:
        """The header's kid; the header segment -> kid cache spares a second header parse."""
        head: str | bytes = (
            token.partition(".")[0] if isinstance(token, str) else token.partition(b".")[0]
        )
        cached = self._headers.get(head, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        kid: str | None = jwt.get_unverified_header(token).get("kid")  # PyJWT checks: a str
        if len(head) <= _HEADER_CACHE_MAX_LEN:
            if len(self._headers) >= _HEADER_CACHE_SIZE:
                self._headers.clear()  # bounded; a flood of new headers only costs re-parses
            self._headers[head] = kid
        return kid

    def _pick(self, kid: str | None, keymap: _KeyMap) -> _Entry | None:
        """The entry for ``kid``; None when the kid is unknown (worth a re-check)."""
        if kid is None:
            if keymap.sole is None:
                raise MissingKidError(keymap.usable, self._path)
            return keymap.sole
        return keymap.by_kid.get(kid)

    @staticmethod
    def _usable(entry: _Entry) -> _Entry:
        if not entry.algorithms:
            raise UnusableKeyError(entry.info.kid, entry.info.unusable or "unusable")
        return entry

    # -- checks and reloads ----------------------------------------------------------------

    def _periodic_check(self) -> None:
        """The interval's check, by whichever thread gets the lock first; others go on."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() >= self._next_check:
                self._check_locked()
        finally:
            self._lock.release()

    def _background_check(self) -> None:
        try:
            self._periodic_check()
        finally:
            self._background = False

    def _recheck(self, asked_at: float) -> _KeyMap:
        """An unknown kid's check: at most one stat per ``_min_recheck``; the map after it."""
        if asked_at - self._last_stat < self._min_recheck:
            return self._map
        with self._lock:
            if self._last_stat < asked_at:  # nobody checked since this kid was looked up
                self._check_locked()
        return self._map

    def _check_locked(self) -> bool:
        """Stat the file; read and parse it only when its identity changed. Lock held."""
        now = time.monotonic()
        self._last_stat = now
        self._next_check = now + self._interval
        self._checks += 1
        try:
            identity = _identity(os.stat(self._path))
        except OSError as exc:
            self._seen = None
            self._failed(f"cannot stat the file: {exc.strerror or exc}")
            return False
        if identity == self._seen:
            return False
        keymap = self._load_locked(self._map)
        if keymap is None:
            return False
        self._map = keymap
        return True

    def _load_locked(self, previous: _KeyMap | None) -> _KeyMap | None:
        """Read, parse and build; None (with last_error set) when the file is unusable."""
        self._parses += 1
        try:
            # Non-blocking and regular files only: a FIFO at the path never hangs a request.
            data, st = read_regular(self._path, formats.MAX_DOCUMENT + 1)
        except OSError as exc:
            self._seen = None
            self._failed(f"cannot read the file: {exc.strerror or exc}")
            return None
        except ValueError as exc:
            self._seen = None
            self._failed(f"cannot read the file: {exc}")
            return None
        # The identity of what was read, not of what the path names a moment later.
        self._seen = _identity(st)
        try:
            keyset = formats.decode(data, "auto", hmac_alg=self._hmac_alg, where=self._path)
        except InvalidKeyset as exc:
            problems = "; ".join(str(problem) for problem in exc.problems[:3])
            self._failed(f"invalid keyset ({len(exc.problems)} problem(s)): {problems}")
            return None
        keymap = _build_map(keyset, self._allowed, previous)
        if keymap.usable == 0:
            self._failed(f"no usable key among {len(keymap.by_kid)}: {_reasons(keymap)}")
            return None
        if self._last_error is not None:
            _log.info("verifier keyset %s loaded again: kids %s", self._path, list(keymap.by_kid))
        self._last_error = None
        self._last_error_at = None
        return keymap

    def _failed(self, reason: str) -> None:
        # Before the first load the constructor raises instead: nothing is kept, nothing to log.
        if reason != self._last_error and hasattr(self, "_map"):
            _log.warning(
                "verifier keyset %s: %s; keeping the keyset loaded before", self._path, reason
            )
        self._last_error = reason
        self._last_error_at = time.time()


def _reasons(keymap: _KeyMap) -> str:
    return "; ".join(f"{kid}: {entry.info.unusable}" for kid, entry in keymap.by_kid.items())


def _pyjwt_decode(
    token: str | bytes,
    entry: _Entry,
    *,
    options: Options | None,
    audience: str | Iterable[str] | None,
    issuer: str | Sequence[str] | None,
    subject: str | None,
    leeway: float | timedelta,
) -> dict[str, Any]:
    """jwt.decode with the entry's pre-built key; ``subject`` only when given (older PyJWT)."""
    extra: dict[str, Any] = {} if subject is None else {"subject": subject}
    claims: dict[str, Any] = jwt.decode(
        token,
        entry.key,
        entry.algorithms,
        options=options,
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        **extra,
    )
    return claims
