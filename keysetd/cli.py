"""Command line: parse, call, map errors to exit codes (0 ok, 1 runtime failure, 2 usage/config)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from keysetd.config import Config, config_path, load_config
from keysetd.errors import ConfigError, InvalidKeyset, KeysetdError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _config(args: argparse.Namespace) -> Config:
    path = config_path(args.config)
    if path is None:
        raise ConfigError("no config given: use --config PATH or set KEYSETD_CONFIG")
    return load_config(path)


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
    pipeline = Pipeline(config)
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
    for message in result.notify_errors:
        print(f"keysetd: warning: {message}", file=sys.stderr)
    changed = ", ".join(result.changed) or "none"
    print(f"outputs current (fingerprint {result.fingerprint}); changed: {changed}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from keysetd.formats import MAX_DOCUMENT
    from keysetd.validate import check

    if args.file in (None, "-"):
        data, where = sys.stdin.buffer.read(MAX_DOCUMENT + 1), "stdin"
    else:
        try:
            with open(args.file, "rb") as handle:
                data = handle.read(MAX_DOCUMENT + 1)
        except OSError as exc:
            print(f"keysetd: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
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
    config = _config(args)
    print(f"{config.path}: ok")
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


def status_document(config: Config, now: float | None = None) -> dict[str, Any]:
    """The ``status --json`` object, from what the daemon recorded in state_dir."""
    from keysetd.state import StateStore

    recorded = StateStore(config.state_dir).load_status() or {}
    now = time.time() if now is None else now
    fetched = recorded.get("lkg_fetched_at")
    doc: dict[str, Any] = {
        "fingerprint": recorded.get("fingerprint"),
        "active_kid": recorded.get("active_kid"),
        "published_kids": recorded.get("published_kids", []),
        "last_error": recorded.get("last_error"),
        "lkg_age_seconds": round(now - fetched, 3) if isinstance(fetched, int | float) else None,
    }
    doc.update({k: v for k, v in recorded.items() if k not in doc and k != "lkg_fetched_at"})
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    doc = status_document(config)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"fingerprint:    {doc['fingerprint'] or '-'}")
        print(f"active kid:     {doc['active_kid'] or '-'}")
        print(f"published kids: {', '.join(doc['published_kids']) or '-'}")
        print(f"last error:     {doc['last_error'] or 'none'}")
        age = doc["lkg_age_seconds"]
        print(f"lkg age:        {'-' if age is None else f'{age:.1f}s'}")
    if doc["fingerprint"] is None:
        return EXIT_FAILED
    return EXIT_OK if doc["last_error"] is None else EXIT_FAILED


def cmd_plugins(args: argparse.Namespace) -> int:
    from keysetd.plugin import available

    for info in available():
        kind = info.group.removeprefix("keysetd.")
        print(f"{kind:10} {info.name:16} {info.target:50} ({info.distribution})")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from keysetd.crypto import generate

    key = generate(args.alg, args.kid)
    print(json.dumps(key.private_jwk(), indent=2))
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
    k = command("keygen", cmd_keygen, "print a new private JWK", needs_config=False)
    k.add_argument(
        "--alg",
        default="ES256",
        choices=["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256", "HS256", "HS384", "HS512"],
    )
    k.add_argument("--kid")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeysetdError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
