"""Decode keyset documents (jwks, rgs, pem) from bytes; renders live in the submodules.

Any bytes give a Keyset or an InvalidKeyset, never another exception: the size
is checked before parsing, and every parser error becomes a "malformed" problem.
"""

from __future__ import annotations

from keysetd.errors import InvalidKeyset, Problem
from keysetd.formats.jwks import MAX_KEYS, JsonObject, load_json, parse_jwks
from keysetd.formats.pem import parse_pem
from keysetd.formats.rgs import parse_rgs
from keysetd.model import Keyset

__all__ = ["FORMATS", "MAX_DOCUMENT", "MAX_KEYS", "decode", "decode_partial", "detect"]

#: Documents over this many bytes are refused unread ("too-large").
MAX_DOCUMENT = 16 * 1024 * 1024
FORMATS = ("auto", "jwks", "rgs", "pem")


def _too_large(data: bytes) -> InvalidKeyset | None:
    if len(data) <= MAX_DOCUMENT:
        return None
    detail = f"{len(data)} bytes is over the {MAX_DOCUMENT // (1024 * 1024)} MiB limit"
    return InvalidKeyset([Problem("-", "too-large", detail)])


def _looks_json(data: bytes) -> bool:
    return data.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{")


def _classify(data: bytes, fmt: str) -> tuple[str, JsonObject | None]:
    """The format and, for the JSON formats, the parsed document; InvalidKeyset otherwise."""
    if (error := _too_large(data)) is not None:
        raise error
    if fmt == "pem" or (fmt == "auto" and not _looks_json(data) and b"-----BEGIN " in data):
        return "pem", None
    if fmt == "auto" and data.strip() and not _looks_json(data):
        raise InvalidKeyset([Problem("-", "malformed", "not a JWKS, rgs or PEM document")])
    doc = load_json(data)
    if fmt != "auto":
        return fmt, doc
    keys = doc.get("keys")
    if isinstance(keys, list):
        return "jwks", doc
    if isinstance(keys, dict):
        return "rgs", doc
    raise InvalidKeyset([Problem("-", "malformed", 'no "keys" list (jwks) or "keys" object (rgs)')])


def detect(data: bytes) -> str:
    """ "jwks", "rgs" or "pem"; InvalidKeyset ("too-large", "malformed") when it is none."""
    return _classify(data, "auto")[0]


def decode_partial(
    data: bytes, fmt: str = "auto", *, hmac_alg: str = "HS256"
) -> tuple[Keyset | None, tuple[Problem, ...]]:
    """The keys that could be decoded and every problem; None when the document is unreadable.

    ``keysetd.validate.check`` uses this to report decode and validation problems together.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown keyset format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        kind, doc = _classify(data, fmt)
    except InvalidKeyset as exc:
        return None, exc.problems
    if doc is None:
        return parse_pem(data)
    if kind == "rgs":
        return parse_rgs(doc, hmac_alg=hmac_alg)
    return parse_jwks(doc, hmac_alg=hmac_alg)


def decode(data: bytes, fmt: str = "auto", *, hmac_alg: str = "HS256", where: str = "") -> Keyset:
    """A Keyset from a document in ``fmt`` (or detected); InvalidKeyset names every problem."""
    keyset, problems = decode_partial(data, fmt, hmac_alg=hmac_alg)
    if problems or keyset is None:
        raise InvalidKeyset(problems, where)
    return keyset
