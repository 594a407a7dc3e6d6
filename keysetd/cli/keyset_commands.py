"""Commands on a keyset file or a token that need no config: validate, verify, keygen.

They run on a verifier-only install: nothing here imports the daemon's modules.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from keysetd.cli.exits import EXIT_FAILED, EXIT_OK
from keysetd.errors import InvalidKeyset

__all__ = ["cmd_keygen", "cmd_validate", "cmd_verify"]


def cmd_validate(args: argparse.Namespace) -> int:
    from keysetd.formats import MAX_DOCUMENT
    from keysetd.readfile import read_limited
    from keysetd.validate import check_report

    # The skipped keys are listed below: no bare warning lines on stderr as well.
    logging.getLogger("keysetd").addHandler(logging.NullHandler())
    if args.file in (None, "-"):
        data, where = sys.stdin.buffer.read(MAX_DOCUMENT + 1), "stdin"
    else:
        try:
            data = read_limited(args.file, MAX_DOCUMENT + 1)
        except OSError as exc:
            print(f"keysetd: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as exc:  # a FIFO or device would block the read forever
            print(f"keysetd: cannot read {args.file}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        where = args.file
    try:
        keyset, skipped = check_report(
            data, args.format, hmac_alg=args.hmac_alg, where=where, declared_public=args.public
        )
    except InvalidKeyset as exc:
        print(f"{where}: invalid keyset ({len(exc.problems)} problem(s))")
        for problem in exc.problems:
            print(f"  {problem}")
        return EXIT_FAILED
    print(f"{where}: valid keyset, {len(keyset)} key(s), active_kid {keyset.active_kid or '-'}")
    print(f"  fingerprint {keyset.fingerprint()}")
    for key in keyset.ordered():
        flag = "private" if key.has_private else "public"
        mark = " (active)" if key.kid == keyset.active_kid else ""
        print(f"  {key.kid}  {key.kty} {key.alg} {flag}{mark}")
    for problem in skipped:  # public keys keysetd cannot use: left out, as the daemon does
        print(f"  skipped {problem}")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from keysetd.crypto import generate

    key = generate(args.alg, args.kid)
    print(json.dumps(key.private_jwk(), indent=2))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    import jwt

    from keysetd.crypto import ALGORITHMS
    from keysetd.verifier import UnknownKidError, Verifier

    # "-" reads it from stdin: keeps the token out of shell history and ps.
    token: str = (sys.stdin.readline() if args.jwt == "-" else args.jwt).strip()
    # KeysetUnavailable (missing, unreadable or invalid file) is a ConfigError: exit 2.
    verifier = Verifier(args.jwks, args.alg or list(ALGORITHMS), 0.0, hmac_alg=args.hmac_alg)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        print(f"keysetd: not a JWT: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"header: {json.dumps(header, sort_keys=True)}")
    try:
        key = verifier.key_for(token)
        print(f"key:    {key.kid} ({key.kty} {key.alg}) from {args.jwks}")
        claims = verifier.decode(
            token,
            audience=args.audience,
            issuer=args.issuer,
            leeway=args.leeway,
            options={"verify_aud": args.audience is not None},
        )
    except jwt.InvalidTokenError as exc:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            print(f"claims (NOT verified): {json.dumps(unverified, sort_keys=True)}")
        except jwt.InvalidTokenError:
            pass
        print(f"keysetd: token refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        if isinstance(exc, UnknownKidError):
            print(f"keysetd: the keyset has kids {', '.join(verifier.kids)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"claims: {json.dumps(claims, indent=2, sort_keys=True)}")
    print("valid: signature and claims check out")
    return EXIT_OK
