"""Commands that read state_dir and the source without writing: status, plan, evidence.

``plan`` and ``evidence`` build a pipeline over state_dir as it is; nothing is created.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_FAILED, EXIT_OK
from keysetd.errors import ConfigError, InvalidKeyset

__all__ = ["cmd_evidence", "cmd_plan", "cmd_status"]

#: A previous evidence summary.json is a few hundred bytes; this bounds a wrong path.
_SUMMARY_LIMIT = 1 << 20


def cmd_status(args: argparse.Namespace) -> int:
    from keysetd.status import status_document

    config = config_from(args)
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
        _print_fleet(doc.get("fleet"))
    if doc["fingerprint"] is None:
        return EXIT_FAILED
    return EXIT_OK if doc["last_error"] is None else EXIT_FAILED


def _print_fleet(fleet: object) -> None:
    """Fleet mode: the store, the leader, and each live replica's acknowledged fingerprint."""
    if not isinstance(fleet, dict):
        return
    store = "ok" if fleet.get("store") == "ok" else f"unreachable ({fleet.get('error')})"
    print(f"fleet:          replica {fleet.get('replica_id')}, store {store}")
    print(f"  leader        {fleet.get('leader') or '-'}")
    replicas = fleet.get("replicas")
    for rid, ack in sorted(replicas.items()) if isinstance(replicas, dict) else []:
        if isinstance(ack, dict):
            fingerprint = str(ack.get("fingerprint") or "-")[:16]
            print(f"  {rid!s:24} acked {fingerprint:16} signing {ack.get('signing') or '-'}")
    waiting = fleet.get("waiting_for")
    if isinstance(waiting, list) and waiting:
        print(f"  waiting for   {', '.join(map(str, waiting))}")


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

    config = config_from(args)
    return Pipeline(config, StateStore(config.state_dir, config.build_sealer()), read_only=True)


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


def _plan_document(origin: str, now: float, planned: Any, fleet: Any) -> dict[str, Any]:
    """``plan --json``: what the text form prints, times as Unix seconds (as status --json)."""
    doc: dict[str, Any] = {
        "from": origin.removeprefix("the "),  # source | last-known-good
        "at": now,
        "active_kid": planned.active_kid,  # the kid signers use
        "published_kids": list(planned.published_kids),  # what verifiers get
        "fingerprint": planned.fingerprint,
        "decisions": [
            {"kid": d.kid, "state": d.state, "reason": d.reason, "until": _seconds(d.until)}
            for d in planned.decisions
        ],
        "next_change_at": _seconds(planned.next_change_at),
        "fleet": None,
    }
    if fleet is not None:
        view = fleet.status()
        doc["fleet"] = {
            "replica_id": view["replica_id"],
            "planned_from": "etcd" if fleet.error is None else "last snapshot",
            "store": view["store"],
            "error": fleet.error,
            "leader": view["leader"],
            "live_replicas": list(view["replicas"]),
            "waiting_for": list(view["waiting_for"]),
        }
    return doc


def _seconds(at: float | None) -> float | None:
    """A time for JSON: none (or 0, as the text form reads it) and non-finite ones are null."""
    return at if at and math.isfinite(at) else None


def cmd_plan(args: argparse.Namespace) -> int:
    from keysetd.state import UntrustedLastKnownGood

    pipeline = _read_only_pipeline(args)
    try:
        keyset, origin = _current_keyset(pipeline)
    except UntrustedLastKnownGood as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fleet = pipeline.fleet
    if fleet is not None:
        fleet.sync()  # read only: the fleet's history and acks as the daemon would plan
    now = time.time()
    pipeline.ledger.observe(keyset, now)  # in memory only: plan writes no history
    planned = pipeline.plan_now(keyset, now)
    if args.json:
        print(json.dumps(_plan_document(origin, now, planned, fleet), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"plan from {origin} at {_when(now)}")
    if fleet is not None:
        view = fleet.status()
        where = "etcd" if fleet.error is None else f"the last snapshot ({fleet.error})"
        print(f"  fleet:         replica {view['replica_id']}, from {where}")
        print(f"  live replicas: {', '.join(view['replicas']) or '-'}")
        if view["waiting_for"]:
            print(f"  waiting for:   {', '.join(view['waiting_for'])}")
    print(f"  signers use:   {planned.active_kid or '-'}")
    print(f"  verifiers get: {', '.join(planned.published_kids) or '-'}")
    print(f"  fingerprint:   {planned.fingerprint}")
    for decision in planned.decisions:
        until = f" (until {_when(decision.until)})" if decision.until else ""
        print(f"  {decision.kid:24} {decision.state:10} {decision.reason}{until}")
    if planned.next_change_at is not None:
        print(f"  next change:   {_when(planned.next_change_at)}")
    return EXIT_OK


def _evidence_keyset(pipeline: Any) -> tuple[Any, bool]:
    """The keyset fetched from the source now, and True; the last-known-good and False when
    that fetch fails (or is refused) and something was published before.

    Raises the fetch's SourceError/InvalidKeyset when there is nothing to fall back on, and
    UntrustedLastKnownGood when the last-known-good is not the file history recorded: checked
    first, live fetch or not, as no evidence is written over a state_dir that fails its check.
    """
    from keysetd.errors import SourceError

    lkg = pipeline.state.verified_lkg()
    try:
        snapshot = pipeline.source.fetch()
        return pipeline.validate_snapshot(snapshot.data, snapshot.format, snapshot.origin), True
    except (SourceError, InvalidKeyset) as exc:
        if lkg is None:
            raise
        print(f"note: {exc}; evidence of the last-known-good instead", file=sys.stderr)
        keyset = pipeline.validate_snapshot(
            lkg.data, lkg.format, "last-known-good", refuse_revoked=False
        )
        return keyset, False


def _previous_summary(given: str | None) -> tuple[Any, str | None]:
    """The previous summary (``--previous-summary``, else ``$RGS_KEYSET_PREVIOUS_SUMMARY_FILE``)
    and an error to print. As open-rgs's script does, a variable naming a missing file means
    no previous event (a first rotation); a missing ``--previous-summary`` is an error."""
    import os

    from keysetd.readfile import read_limited

    path = given or os.environ.get("RGS_KEYSET_PREVIOUS_SUMMARY_FILE") or None
    if path is None:
        return None, None
    try:
        return json.loads(read_limited(path, _SUMMARY_LIMIT)), None
    except FileNotFoundError:
        if given:
            return None, f"cannot read {path}: no such file"
        print(f"note: {path} does not exist: no previous event to compare", file=sys.stderr)
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}"


def cmd_evidence(args: argparse.Namespace) -> int:
    """Evidence of the keyset the source gives now (of the last-known-good if it fails).

    ``--event-id``, ``--workdir`` and ``--previous-summary`` default to open-rgs's
    ``RGS_KEYSET_EVENT_ID`` (else ``keyset-<UTC time>``), ``RGS_KEYSET_WORKDIR`` (else
    ".") and ``RGS_KEYSET_PREVIOUS_SUMMARY_FILE``.
    """
    import os

    from keysetd.errors import SourceError
    from keysetd.evidence import (
        FALLBACK_SOURCE_MODE,
        Capture,
        build_evidence,
        check_component,
        default_event_id,
        write_evidence,
    )
    from keysetd.state import UntrustedLastKnownGood

    now = time.time()
    event_id = args.event_id or os.environ.get("RGS_KEYSET_EVENT_ID") or default_event_id(now)
    workdir = Path(args.workdir or os.environ.get("RGS_KEYSET_WORKDIR") or ".")
    try:
        check_component(event_id)  # before the source runs
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    previous, problem = _previous_summary(args.previous_summary)
    if problem is not None:
        print(f"keysetd: {problem}", file=sys.stderr)
        return EXIT_FAILED
    pipeline = _read_only_pipeline(args)
    try:
        keyset, live = _evidence_keyset(pipeline)
    except UntrustedLastKnownGood as exc:
        print(f"keysetd: {exc}; no evidence written", file=sys.stderr)
        return EXIT_FAILED
    except (SourceError, InvalidKeyset) as exc:
        print(
            f"keysetd: {exc}; nothing published to fall back on: no evidence written",
            file=sys.stderr,
        )
        return EXIT_FAILED
    pipeline.ledger.observe(keyset, now)  # in memory only: evidence writes no history
    mode = pipeline.config.source.type if live else FALLBACK_SOURCE_MODE
    capture = Capture(captured_at=now, source_mode=mode, fetched_live=live)
    try:
        files = build_evidence(pipeline.plan_now(keyset, now), event_id, previous, capture)
        directory = write_evidence(workdir, event_id, files)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        print(f"keysetd: cannot write evidence: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"evidence written to {directory}: {', '.join(sorted(files))}")
    return EXIT_OK
