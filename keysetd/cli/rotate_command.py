"""``rotate``: add a new key to a writable source as its active_kid, by compare-and-swap;
or ask a source that rotates its own keys (vault_transit) for its next version."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from keysetd.config import Config

__all__ = ["cmd_rotate"]


def cmd_rotate(args: argparse.Namespace) -> int:
    from keysetd.extension import RotatableSource
    from keysetd.managed import writable_source

    config = config_from(args)
    # ConfigError naming a source type keysetd cannot write; sealed with [state] encryption.
    source = writable_source(config, config.build_sealer())
    try:
        if isinstance(source, RotatableSource):
            return _rotate_version(args, config, source)
        return _rotate(args, config, source)
    finally:
        source.close()


def _rotate_version(args: argparse.Namespace, config: Config, source: Any) -> int:
    """Ask a KMS-held key for its next version (compare-and-swap on the active kid)."""
    from keysetd.errors import SourceError
    from keysetd.validate import check

    where = source.describe()
    if args.alg or args.kid:
        print(
            f"keysetd: --alg and --kid do not apply to {where}: the key's type and the"
            " source's kid_format decide them",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        current = source.fetch().data
        keyset = check(current, config.source.format, hmac_alg=config.policy.hmac_alg, where=where)
        kid = source.rotate(keyset.active_kid)
    except SourceError as exc:
        print(f"keysetd: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    if kid is None:
        print(f"keysetd: {where} rotated meanwhile; nothing done, try again", file=sys.stderr)
        return EXIT_FAILED
    print(f"created {kid} in {where}; previous {keyset.active_kid or '-'}")
    print(
        "verifiers get it at the daemon's next fetch; signers (the signer outputs name the"
        " version) after policy.activation_delay"
    )
    return EXIT_OK


def _rotate(args: argparse.Namespace, config: Config, source: Any) -> int:
    """Add a new key to the source as its active_kid (compare-and-swap; signers wait)."""
    from keysetd.crypto import generate
    from keysetd.errors import SealError, SourceError
    from keysetd.managed import write_source
    from keysetd.model import Keyset
    from keysetd.rotation import new_kid
    from keysetd.validate import check

    where = source.describe()
    try:
        current = source.fetch().data
    except SourceError as exc:
        print(f"keysetd: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    keyset = check(current, config.source.format, hmac_alg=config.policy.hmac_alg, where=where)
    rotation = config.settings.rotation
    alg = args.alg or (rotation.alg if rotation else "ES256")
    key = generate(alg, args.kid or new_kid(rotation.kid_prefix if rotation else "", time.time()))
    if keyset.get(key.kid) is not None:
        print(f"keysetd: {key.kid} is already in {where}", file=sys.stderr)
        return EXIT_FAILED
    rotated = Keyset((*keyset.keys, key), key.kid)
    try:
        written = write_source(source, current, rotated)
    except OSError as exc:
        print(f"keysetd: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except SealError as exc:
        print(f"keysetd: cannot write {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not written:
        print(
            f"keysetd: {where} changed while rotating; nothing written, try again", file=sys.stderr
        )
        return EXIT_FAILED
    print(f"added {key.kid} ({alg}) to {where} as active_kid; previous {keyset.active_kid or '-'}")
    print("verifiers get it at once; signers after policy.activation_delay")
    return EXIT_OK
