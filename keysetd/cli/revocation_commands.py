"""Break-glass revocation and its audit trail: ``revoke``, ``unrevoke``, ``audit verify``.

Each change to revocations is appended to the hash-chained audit log with who made it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_FAILED, EXIT_OK

__all__ = ["cmd_audit", "cmd_revoke", "cmd_unrevoke"]


def cmd_revoke(args: argparse.Namespace) -> int:
    from keysetd.audit import AuditLog
    from keysetd.state import StateStore

    config = config_from(args)
    state = StateStore(config.state_dir)
    state.ensure()
    known = args.kid in state.load_history()
    state.update_revocations(args.kid, {"at": time.time(), "reason": args.reason})
    AuditLog(state.audit_path).append(
        "revoked", kid=args.kid, reason=args.reason, known=known, by=_operator()
    )
    print(f"revoked {args.kid}: a running keysetd removes it from every output within a second")
    if not known:
        print(f"note: {args.kid} was never published here; it is refused if it appears")
    return EXIT_OK


def cmd_unrevoke(args: argparse.Namespace) -> int:
    from keysetd.audit import AuditLog
    from keysetd.state import StateStore

    config = config_from(args)
    state = StateStore(config.state_dir)
    state.ensure()
    if args.kid not in state.load_revocations():
        print(f"keysetd: {args.kid} is not revoked", file=sys.stderr)
        return EXIT_FAILED
    state.update_revocations(args.kid, None)
    AuditLog(state.audit_path).append("unrevoked", kid=args.kid, by=_operator())
    print(f"lifted the revocation of {args.kid}; the source may bring it back")
    return EXIT_OK


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def cmd_audit(args: argparse.Namespace) -> int:
    from keysetd.audit import verify
    from keysetd.state import StateStore

    config = config_from(args)
    verdict = verify(StateStore(config.state_dir).audit_path)
    if verdict.ok:
        note = f" ({verdict.reason})" if verdict.reason else ""
        print(f"audit log intact: {verdict.lines} line(s){note}")
        return EXIT_OK
    print(f"audit log broken at line {verdict.broken_line}: {verdict.reason}")
    return EXIT_FAILED
