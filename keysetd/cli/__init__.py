"""Command line: parse, call, map errors to exit codes (0 ok, 1 runtime failure, 2 usage/config)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from keysetd.config import Config, config_path, load_config
from keysetd.errors import ConfigError, InvalidKeyset, KeysetdError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: A previous evidence summary.json is a few hundred bytes; this bounds a wrong path.
_SUMMARY_LIMIT = 1 << 20


def _config(args: argparse.Namespace) -> Config:
    path = config_path(args.config)
    if path is None:
        raise ConfigError("no config given: use --config PATH or set KEYSETD_CONFIG")
    from keysetd.strict import checked

    return checked(load_config(path))


def _setup_logging(config: Config, args: argparse.Namespace) -> None:
    from keysetd.log import configure

    configure(args.log_format or config.settings.log_format, config.settings.log_level)


def cmd_run(args: argparse.Namespace) -> int:
    from keysetd.daemon import Daemon

    config = _config(args)
    _setup_logging(config, args)
    return Daemon(config).run()


def cmd_once(args: argparse.Namespace) -> int:
    from keysetd.pipeline import Pipeline

    config = _config(args)
    _setup_logging(config, args)
    pipeline = Pipeline.open(config)
    pipeline.state.lock()
    try:
        result = pipeline.cycle(force=True)
    finally:
        pipeline.close()
        pipeline.state.unlock()
    if not result.ok:
        print(f"keysetd: {result.error}", file=sys.stderr)
        if result.from_lkg:
            print("keysetd: outputs were published from the last-known-good", file=sys.stderr)
        return EXIT_FAILED
    changed = ", ".join(result.changed) or "none"
    print(f"outputs current (fingerprint {result.fingerprint}); changed: {changed}")
    for message in result.notify_errors:  # the outputs stand; a consumer was not told
        print(f"keysetd: {message}", file=sys.stderr)
    return EXIT_FAILED if result.notify_errors else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from keysetd.formats import MAX_DOCUMENT
    from keysetd.readfile import read_limited
    from keysetd.validate import check

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
        keyset = check(
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
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from keysetd.strict import config_violations

    config = _config(args)
    print(f"{config.path}: ok" + (" (strict mode)" if config.settings.strict else ""))
    for violation in config_violations(config):
        print(f"  warning (refused with strict = true): {violation}")
    print(f"  source: {config.build_source().describe()}")
    for output in config.build_outputs():
        print(
            f"  output {output.name}: {output.config.type} -> {output.config.path}"
            f" ({output.role.value}, mode {output.mode:04o})"
        )
    for notifier in config.build_notifiers():
        follows = ",".join(notifier.config.outputs) if notifier.config.outputs else "any output"
        print(f"  notify {notifier.name}: {notifier.config.type} on {follows}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from keysetd.status import status_document

    config = _config(args)
    doc = status_document(config.state_dir)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        # status.json is whatever the daemon (of any version) or a person left there.
        published = doc.get("published_kids")
        kids = ", ".join(map(str, published)) if isinstance(published, list) else ""
        age = doc["lkg_age_seconds"]
        print(f"fingerprint:    {doc['fingerprint'] or '-'}")
        print(f"active kid:     {doc['active_kid'] or '-'}")
        print(f"published kids: {kids or '-'}")
        print(f"last error:     {doc['last_error'] or 'none'}")
        print(f"lkg age:        {f'{age:.1f}s' if isinstance(age, int | float) else '-'}")
        keys = doc.get("keys")
        for key in keys if isinstance(keys, list) else []:
            if not isinstance(key, dict):
                continue
            until = f" until {_when(key['until'])}" if key.get("until") else ""
            kid, state = str(key.get("kid", "?")), str(key.get("state", "?"))
            print(f"  {kid:24} {state:10} {key.get('reason', '')}{until}")
    if doc["fingerprint"] is None:
        return EXIT_FAILED
    return EXIT_OK if doc["last_error"] is None else EXIT_FAILED


def cmd_plugins(args: argparse.Namespace) -> int:
    from keysetd.registry import available

    for info in available():
        kind = info.group.removeprefix("keysetd.")
        print(f"{kind:10} {info.name:16} {info.target:50} ({info.distribution})")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from keysetd.crypto import generate

    key = generate(args.alg, args.kid)
    print(json.dumps(key.private_jwk(), indent=2))
    return EXIT_OK


def _when(at: object) -> str:
    """A UTC date; any other value (a number past year 9999, NaN, text) without a traceback."""
    if at is None or isinstance(at, bool) or not isinstance(at, int | float):
        return "-" if at is None else f"{at!r} (not a time)"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return "a time out of range"


def _read_only_pipeline(args: argparse.Namespace) -> Any:
    """A pipeline over state_dir as it is: nothing created or written (plan, evidence)."""
    from keysetd.pipeline import Pipeline
    from keysetd.state import StateStore

    config = _config(args)
    return Pipeline(config, StateStore(config.state_dir))


def _current_keyset(pipeline: Any) -> tuple[Any, str]:
    """The keyset the source holds now, or the last-known-good when the source fails.

    Raises UntrustedLastKnownGood when the fallback is not the file history recorded.
    """
    from keysetd.errors import SourceError

    try:
        snapshot = pipeline.source.fetch()
        return pipeline.validate_snapshot(
            snapshot.data, snapshot.format, snapshot.origin
        ), "the source"
    except (SourceError, InvalidKeyset) as exc:
        lkg = pipeline.state.verified_lkg()
        if lkg is None:
            raise
        print(f"note: {exc}; planning from the last-known-good", file=sys.stderr)
        keyset = pipeline.validate_snapshot(
            lkg.data, lkg.format, "last-known-good", refuse_revoked=False
        )
        return keyset, "the last-known-good"


def cmd_plan(args: argparse.Namespace) -> int:
    from keysetd.state import UntrustedLastKnownGood

    pipeline = _read_only_pipeline(args)
    try:
        keyset, origin = _current_keyset(pipeline)
    except UntrustedLastKnownGood as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    pipeline.ledger.observe(keyset, now)  # in memory only: plan writes no history
    planned = pipeline.plan_now(keyset, now)
    print(f"plan from {origin} at {_when(now)}")
    print(f"  signers use:   {planned.active_kid or '-'}")
    print(f"  verifiers get: {', '.join(planned.published_kids) or '-'}")
    print(f"  fingerprint:   {planned.fingerprint}")
    for decision in planned.decisions:
        until = f" (until {_when(decision.until)})" if decision.until else ""
        print(f"  {decision.kid:24} {decision.state:10} {decision.reason}{until}")
    if planned.next_change_at is not None:
        print(f"  next change:   {_when(planned.next_change_at)}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from keysetd.audit import AuditLog
    from keysetd.state import StateStore

    config = _config(args)
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

    config = _config(args)
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

    config = _config(args)
    verdict = verify(StateStore(config.state_dir).audit_path)
    if verdict.ok:
        note = f" ({verdict.reason})" if verdict.reason else ""
        print(f"audit log intact: {verdict.lines} line(s){note}")
        return EXIT_OK
    print(f"audit log broken at line {verdict.broken_line}: {verdict.reason}")
    return EXIT_FAILED


def cmd_rotate(args: argparse.Namespace) -> int:
    from keysetd.managed import writable_source

    config = _config(args)
    source = writable_source(config)  # ConfigError naming a source type keysetd cannot write
    try:
        return _rotate(args, config, source)
    finally:
        source.close()


def _rotate(args: argparse.Namespace, config: Config, source: Any) -> int:
    """Add a new key to the source as its active_kid (compare-and-swap; signers wait)."""
    from keysetd.crypto import generate
    from keysetd.errors import SourceError
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
    if not written:
        print(
            f"keysetd: {where} changed while rotating; nothing written, try again", file=sys.stderr
        )
        return EXIT_FAILED
    print(f"added {key.kid} ({alg}) to {where} as active_kid; previous {keyset.active_kid or '-'}")
    print("verifiers get it at once; signers after policy.activation_delay")
    return EXIT_OK


def cmd_evidence(args: argparse.Namespace) -> int:
    from keysetd.evidence import build_evidence, write_evidence
    from keysetd.readfile import read_limited
    from keysetd.state import UntrustedLastKnownGood

    pipeline = _read_only_pipeline(args)
    try:
        lkg = pipeline.state.verified_lkg()
    except UntrustedLastKnownGood as exc:
        print(f"keysetd: {exc}; no evidence written", file=sys.stderr)
        return EXIT_FAILED
    if lkg is None:
        print("keysetd: nothing was published yet: no evidence to write", file=sys.stderr)
        return EXIT_FAILED
    keyset = pipeline.validate_snapshot(
        lkg.data, lkg.format, "last-known-good", refuse_revoked=False
    )
    previous = None
    if args.previous_summary:
        try:
            previous = json.loads(read_limited(args.previous_summary, _SUMMARY_LIMIT))
        except (OSError, ValueError) as exc:
            print(f"keysetd: cannot read {args.previous_summary}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        files = build_evidence(pipeline.plan_now(keyset), args.event_id, previous)
        directory = write_evidence(Path(args.workdir), args.event_id, files)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        print(f"keysetd: cannot write evidence: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"evidence written to {directory}: {', '.join(sorted(files))}")
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keysetd",
        description="Keep JWT keysets where their consumers read them; rotate without downtime.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_text: str,
        *,
        needs_config: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if needs_config:
            p.add_argument("--config", "-c", help="config file (default: $KEYSETD_CONFIG)")
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "run the daemon")
    command("once", cmd_once, "run one cycle; exit 0 if outputs are current, 1 if it failed")
    v = command("validate", cmd_validate, "check a keyset document", needs_config=False)
    v.add_argument("file", nargs="?", help="keyset file, or - for stdin (default)")
    v.add_argument("--format", default="auto", choices=["auto", "jwks", "rgs", "pem"])
    v.add_argument("--hmac-alg", default="HS256", choices=["HS256", "HS384", "HS512"])
    v.add_argument("--public", action="store_true", help="refuse private members")
    command("check-config", cmd_check_config, "check the config; exit 2 on violations")
    s = command("status", cmd_status, "what the daemon publishes now")
    s.add_argument("--json", action="store_true")
    command("plugins", cmd_plugins, "list sources, outputs and notifiers", needs_config=False)
    command("plan", cmd_plan, "what the next cycle would publish, and why")
    r = command("revoke", cmd_revoke, "break-glass: remove a kid from every output now")
    r.add_argument("kid")
    r.add_argument("--reason", default="break-glass")
    u = command("unrevoke", cmd_unrevoke, "lift a revocation so the source may bring the kid back")
    u.add_argument("kid")
    e = command("evidence", cmd_evidence, "write rotation evidence for an auditor")
    e.add_argument("--event-id", required=True)
    e.add_argument("--previous-summary", help="summary.json of the previous event")
    e.add_argument("--workdir", default=".", help="evidence goes to WORKDIR/EVENT_ID/")
    a = command("audit", cmd_audit, "check the audit log's hash chain")
    a.add_argument("action", choices=["verify"])
    rot = command("rotate", cmd_rotate, "add a new key to a file source and make it active")
    rot.add_argument("--alg", choices=["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"])
    rot.add_argument("--kid")
    k = command("keygen", cmd_keygen, "print a new private JWK", needs_config=False)
    k.add_argument(
        "--alg",
        default="ES256",
        choices=["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256", "HS256", "HS384", "HS512"],
    )
    k.add_argument("--kid")
    ver = command(
        "verify", cmd_verify, "verify a JWT against a keyset file and say why", needs_config=False
    )
    ver.add_argument("jwt", metavar="TOKEN", help="the JWT, or - to read it from stdin")
    ver.add_argument("--jwks", required=True, help="a jwks, keyset or rgs file")
    ver.add_argument(
        "--alg",
        action="append",
        help="an alg tokens may use (repeat; default: every alg keysetd knows)",
        choices=[
            *("ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512"),
            *("PS256", "PS384", "PS512", "HS256", "HS384", "HS512"),
        ],
    )
    ver.add_argument("--audience", help="required aud (default: aud is not checked)")
    ver.add_argument("--issuer", help="required iss")
    ver.add_argument("--leeway", type=float, default=0.0, help="seconds of clock skew allowed")
    ver.add_argument("--hmac-alg", default="HS256", choices=["HS256", "HS384", "HS512"])
    return parser


#: Top-level modules of the ``daemon`` extra; the verifier and offline commands need none.
DAEMON_MODULES = frozenset(
    {"watchfiles", "inotify_simple", "tenacity", "nkeys", "prometheus_client"}
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in DAEMON_MODULES:
            raise
        print(
            f"keysetd: {args.command} needs the daemon's dependencies ({exc.name} is missing):"
            " pip install 'keysetd[daemon]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeysetdError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
