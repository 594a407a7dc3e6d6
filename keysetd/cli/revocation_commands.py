"""Break-glass changes and their audit trail: ``revoke``, ``unrevoke``, ``forget``, ``audit``.

Each change is appended to the hash-chained audit log with who made it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from keysetd.config import Config
    from keysetd.state import StateStore

__all__ = ["cmd_audit", "cmd_forget", "cmd_revoke", "cmd_unrevoke"]


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a kid: in fleet mode in the shared revocations, else (or when etcd cannot
    be reached) in this host's ``revocations.json``, which its daemon honours either way."""
    from keysetd.record import audit_log

    config = config_from(args)
    state = _writable_state(config)
    known = args.kid in state.load_history()
    shared = _in_fleet(config, args.kid, args.reason, lift=False)
    if shared in (_NO_FLEET, _UNREACHABLE):
        state.update_revocations(args.kid, {"at": time.time(), "reason": args.reason})
    audit_log(state, audit=config.settings.audit).append(
        "revoked", kid=args.kid, reason=args.reason, known=known, by=_operator()
    )
    if shared == _UNREACHABLE:
        return EXIT_FAILED
    where = "every replica" if shared != _NO_FLEET else "a running keysetd"
    print(f"revoked {args.kid}: {where} removes it from every output within a second")
    if not known:
        print(f"note: {args.kid} was never published here; it is refused if it appears")
    return EXIT_OK


def cmd_unrevoke(args: argparse.Namespace) -> int:
    """Lift a revocation here and, in fleet mode, in the shared revocations."""
    from keysetd.record import audit_log

    config = config_from(args)
    state = _writable_state(config)
    local = args.kid in state.load_revocations()
    if local:
        state.update_revocations(args.kid, None)
    shared = _in_fleet(config, args.kid, "", lift=True)
    if not local and shared in (_NO_FLEET, _UNCHANGED):
        print(f"keysetd: {args.kid} is not revoked", file=sys.stderr)
        return EXIT_FAILED
    if not local and shared == _UNREACHABLE:
        return EXIT_FAILED  # lifted nowhere
    audit_log(state, audit=config.settings.audit).append("unrevoked", kid=args.kid, by=_operator())
    if shared == _UNREACHABLE:
        return EXIT_FAILED
    print(f"lifted the revocation of {args.kid}; the source may bring it back")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    """Take the source's other material for a kid at once (the way out of ``kid-reused``
    before the old material's retention is over, for a dev IdP that recreated a fixed
    kid): tokens the old material signed stop verifying."""
    from keysetd.history import forget
    from keysetd.record import audit_log

    config = config_from(args)
    state = _writable_state(config)
    by = _operator()
    if config.settings.fleet is not None:
        events = _forget_in_fleet(config, args.kid)
        if events is None:
            return EXIT_FAILED
    else:
        _, events = forget(state.load_history(), args.kid)
    if not events:
        print(f"keysetd: {args.kid} is not in the key history; nothing to forget", file=sys.stderr)
        return EXIT_FAILED
    if events[0]["event"] == "forget_refused":
        print(f"keysetd: {args.kid}: {events[0]['reason']}", file=sys.stderr)
        return EXIT_FAILED
    audit_log(state, audit=config.settings.audit).append("forget_requested", kid=args.kid, by=by)
    if config.settings.fleet is None:  # after the audit line: the daemon acts on the request
        state.request_forget(args.kid, {"at": time.time(), "by": by})
    where = (
        "every replica takes" if config.settings.fleet is not None else "a running keysetd takes"
    )
    print(f"forgot {args.kid}: {where} the source's other material for it within a second")
    return EXIT_OK


def _forget_in_fleet(config: Config, kid: str) -> list[dict[str, Any]] | None:
    """The forget written to the fleet's history; None (said why) when etcd failed."""
    from keysetd.errors import StoreError
    from keysetd.fleet.etcd import EtcdStore
    from keysetd.fleet.member import forget_in_fleet

    fleet = config.settings.fleet
    assert fleet is not None
    store = EtcdStore(fleet.store_settings())
    try:
        return forget_in_fleet(store, fleet, kid)
    except StoreError as exc:
        print(f"keysetd: the fleet store refused the forget: {exc}", file=sys.stderr)
        return None
    finally:
        store.close()


_NO_FLEET, _CHANGED, _UNCHANGED, _UNREACHABLE = "no fleet", "changed", "unchanged", "unreachable"


def _in_fleet(config: Config, kid: str, reason: str, *, lift: bool) -> str:
    """Fleet mode: the change in the shared revocations (one compare-and-swap); which of
    the four outcomes above it had (unreachable: said why on stderr)."""
    fleet = config.settings.fleet
    if fleet is None:
        return _NO_FLEET
    from keysetd.errors import StoreError
    from keysetd.fleet.etcd import EtcdStore
    from keysetd.fleet.member import revoke_in_fleet

    store = EtcdStore(fleet.store_settings())
    try:
        changed = revoke_in_fleet(store, fleet, kid, reason, lift=lift)
    except StoreError as exc:
        print(f"keysetd: {exc}; applied on this replica only", file=sys.stderr)
        return _UNREACHABLE
    finally:
        store.close()
    return _CHANGED if changed else _UNCHANGED


def _writable_state(config: Config) -> StateStore:
    """state_dir for a command that writes to it (revocations, forgets, audit lines):
    ConfigError (exit 2) when it holds encrypted state and the config sets no encryption,
    as the daemon refuses it, so no unkeyed line lands in a keyed chain."""
    from keysetd.state import StateStore

    state = StateStore(config.state_dir, config.build_sealer())
    state.check_encryption()
    state.ensure()
    return state


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def cmd_audit(args: argparse.Namespace) -> int:
    from keysetd.state import StateStore

    config = config_from(args)
    state = StateStore(config.state_dir, config.build_sealer())
    if args.action == "export":
        return _export(state, args.from_seq)
    return _verify(state)


def _verify(state: Any) -> int:
    from keysetd.audit_read import verify

    key = state.audit_key()  # SealError (exit 1) when it cannot be opened now
    if state.sealer is not None and key is None and _has_lines(state.audit_path):
        print(
            f"audit log unchecked: [state] encryption is set but {state.audit_key_path.name}"
            " is missing (removed?): the keyed chain cannot be verified"
        )
        return EXIT_FAILED
    verdict = verify(state.audit_path, key=key)
    kind = (
        "keyed chain (HMAC-SHA256 under the audit key)"
        if key is not None
        else "unkeyed chain (SHA-256; no [state] encryption: a full rewrite is undetectable)"
    )
    if verdict.ok:
        note = f" ({verdict.reason})" if verdict.reason else ""
        print(f"audit log intact: {verdict.lines} line(s){note}")
        print(kind)
        if key is not None and key.since > 1:
            print(
                f"lines before seq {key.since} are unkeyed: written before the audit key was made"
            )
        return EXIT_OK
    print(f"audit log broken at line {verdict.broken_line}: {verdict.reason}")
    print(kind)
    return EXIT_FAILED


def _has_lines(path: Any) -> bool:
    from keysetd.audit import rotated_files

    try:
        return path.stat().st_size > 0 or bool(rotated_files(path))
    except FileNotFoundError:
        return bool(rotated_files(path))


def _export(state: Any, first_seq: int) -> int:
    from keysetd.audit_read import export

    out = sys.stdout.buffer
    for line in export(state.audit_path, first_seq):
        out.write(line)
    out.flush()
    return EXIT_OK
