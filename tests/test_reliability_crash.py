"""kill -9 at named points of the commit sequence (keysetd.failpoints) and at random instants.

Three kinds of round, each changing the source to the next generation first:

- a named failpoint: ``keysetd run`` starts with ``_KEYSETD_FAILPOINT`` armed at one
  point of the commit sequence and kills itself there;
- "startup": a fresh daemon is killed at a random instant of its start-up and first cycle;
- "live": a daemon already running and converged sees the change through its watcher
  and is killed at a random instant of change-and-publish.

After each kill every output is whole and holds the old generation or the new one
(one or the other within each output, never an older one; outputs may differ when the
kill fell between two commits), the signer's active kid is in every verifier output
and in history as published, the pem directory shows one whole set, history, LKG and
status load and the audit chain verifies. A restart without a failpoint then cleans the
crash's temp files, converges on the new generation and exits 0 on SIGTERM.

Two workspaces cover every output type: jwks + pem + keyset (EC keys) and rgs + env
(HMAC secrets); their rounds run side by side, one thread each. ``make test`` runs the
first pass (every point once, 2 startup and 8 live kills: 60 rounds) and asserts every
named point was reached; ``make stress`` runs ``STRESS_ROUNDS=500``, bounded by
``STRESS_BUDGET_SECONDS``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keysetd.audit_read import verify
from keysetd.formats import decode
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.pemdir import check_pem_dir, pem_kids

#: Random kills of a running daemon in one first pass, per workspace.
LIVE_PER_PASS = 4
ROUNDS = int(os.environ.get("STRESS_ROUNDS", "60"))
BUDGET_SECONDS = float(os.environ.get("STRESS_BUDGET_SECONDS", "80" if ROUNDS <= 60 else "1500"))
#: Points a cycle reaches more than once (history is saved up to four times per cycle).
REPEATED = ("@history.json", "state.after-history-save", "@pem")
#: How long an armed daemon may take to reach its failpoint before the test kills it itself.
HIT_WAIT = 10.0
#: How long a SIGTERM stop may take; longer ones are killed, counted and printed.
STOP_WAIT = 20.0
#: The window after a source change in which a live round's kill lands. Change-to-commit
#: takes ~10-20 ms here: with 25 ms about a third of the kills leave every output old,
#: a third some old and some new, a third all new (measured, 24 rounds).
LIVE_WINDOW = 0.025
WRITE_STEPS = ("write.before-temp", "write.after-temp", "write.after-fsync", "write.after-rename")
#: A pem directory writes its files into a fresh version (no rename each), then switches.
PEM_STEPS = (*WRITE_STEPS[:3], "dir.after-stage", "dir.after-switch", "dir.before-prune")
STATE_FILES = ("history.json", "last-known-good.json", "signer-keyset.json", "status.json")
NAMED = (
    "state.after-history-save",
    "cycle.after-verifier-phase",
    "cycle.before-signer-phase",
    "state.after-signer-save",
    "state.after-lkg-save",
    "state.after-audit-append",
)
#: Round kinds that are not a failpoint: a random instant of a fresh daemon's first cycle,
#: and a random instant of a running daemon's change-and-publish.
RANDOM_KINDS = ("startup", "live")


@dataclass
class Workspace:
    """One daemon's files: ``kind`` is "asym" (jwks, pem, keyset) or "hmac" (rgs, env)."""

    kind: str
    env: Env
    generation: int = 0
    pool: list[Any] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Path]:
        out = self.env.out
        if self.kind == "asym":
            return {
                "jwks": out / "pub" / "jwks.json",
                "pem": out / "pub" / "pem",
                "keyset": out / "sign" / "keyset.json",
            }
        return {"rgs": out / "rgs" / "keys.json", "env": out / "envdir" / "keys.env"}

    def kids(self, generation: int | None = None) -> list[str]:
        """The kids of a generation's document, active first."""
        gen = self.generation if generation is None else generation
        names = [f"{self.kind}-{gen % len(self.pool)}"]
        if gen:
            names.append(f"{self.kind}-{(gen - 1) % len(self.pool)}")
        return names

    def document(self) -> bytes:
        gen = self.generation
        current, previous = self.pool[gen % len(self.pool)], self.pool[(gen - 1) % len(self.pool)]
        chosen = [current, previous] if gen else [current]
        if self.kind == "asym":
            return jwks_doc(*chosen, active=current["kid"])
        doc = {"active_kid": current["kid"], "keys": {k["kid"]: k["secret"] for k in chosen}}
        return json.dumps(doc).encode()

    def advance(self) -> None:
        """The next generation, written to the source."""
        self.generation += 1
        self.env.write_source(self.document())


def make_workspace(root: Path, kind: str) -> Workspace:
    root.mkdir()
    ws = Workspace(kind, Env(root))
    if kind == "asym":
        ws.pool = [jwk("ES256", f"asym-{i}") for i in range(5)]
    else:
        ws.pool = [{"kid": f"hmac-{i}", "secret": secrets.token_urlsafe(48)} for i in range(5)]
    for path in ws.outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    ws.env.config(
        outputs=[{"type": name, "path": str(path)} for name, path in ws.outputs.items()],
        source={"type": "file", "path": str(ws.env.source), "refresh_interval": "30s"},
    )
    ws.env.write_source(ws.document())
    return ws


def failpoints() -> list[tuple[str, str]]:
    """(workspace kind, failpoint spec): every named point of every output and state file."""
    points: list[tuple[str, str]] = []
    points += [("asym", f"{step}@pem") for step in PEM_STEPS]
    for step in WRITE_STEPS:
        points += [("asym", f"{step}@{label}") for label in ("jwks", "keyset")]
        points += [("hmac", f"{step}@{label}") for label in ("rgs", "env")]
        points += [
            ("asym" if i % 2 else "hmac", f"{step}@{label}") for i, label in enumerate(STATE_FILES)
        ]
    points += [("asym" if i % 2 else "hmac", name) for i, name in enumerate(NAMED)]
    points += [("hmac" if i % 2 else "asym", name) for i, name in enumerate(NAMED)]
    return points


def schedule(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    """(workspace kind, failpoint spec, "startup" or "live"): a first pass with every point
    once, a startup kill and LIVE_PER_PASS live kills per workspace, shuffled; then drawn at
    random (a quarter of them live kills). The first pass always runs whole."""
    points = failpoints()
    first = [*points]
    for kind in ("asym", "hmac"):
        first += [(kind, "startup")] + [(kind, "live")] * LIVE_PER_PASS
    rng.shuffle(first)
    plan = list(first)
    while len(plan) < rounds:
        if rng.random() < 0.25:
            plan.append((rng.choice(("asym", "hmac")), "live"))
            continue
        kind, spec = rng.choice([*points, ("asym", "startup"), ("hmac", "startup")])
        nth = rng.choice((1, 2, 3)) if spec.endswith(REPEATED) else 1
        plan.append((kind, f"{spec}:{nth}" if nth > 1 else spec))
    return plan


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if ".keysetd-" in p.name]


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            (word,) = shlex.split(line)
            name, _, value = word.partition("=")
            values[name] = value
    return values


def check_whole(ws: Workspace) -> str:
    """Every output parses and is consistent, the state loads; returns the signer's active kid."""
    outputs = ws.outputs
    if ws.kind == "asym":
        jwks = json.loads(outputs["jwks"].read_bytes())
        published = {k["kid"] for k in jwks["keys"]}
        assert all("d" not in k for k in jwks["keys"])
        pems = check_pem_dir(outputs["pem"])
        signer = json.loads(outputs["keyset"].read_bytes())
        active = signer["active_kid"]
        assert active in published and active in pems, (active, published, pems)
        assert active in {k["kid"] for k in signer["keys"]}
    else:
        rgs = json.loads(outputs["rgs"].read_bytes())
        active = rgs["active_kid"]
        assert active in rgs["keys"]
        env_values = parse_env_file(outputs["env"])
        table = json.loads(env_values["RGS_JWT_KEYSET"])
        assert env_values["RGS_JWT_ACTIVE_KID"] in table
    store = StateStore(ws.env.state)
    for name in STATE_FILES:
        path = ws.env.state / name
        if path.exists():
            json.loads(path.read_bytes())  # whole: never a torn file
    history = store.load_history()
    assert active in history, (active, sorted(history))
    if ws.kind == "asym":
        assert history[active].first_published is not None, "signer uses an unpublished kid"
    lkg = store.load_lkg()
    assert lkg is not None
    decode(lkg.data, lkg.format)
    assert store.load_status() is not None
    verdict = verify(store.audit_path)
    assert verdict.ok, verdict
    return str(active)


def generations(ws: Workspace) -> dict[str, tuple[str, frozenset[str]]]:
    """Each output's (active kid or "", kid set) as the outputs are now."""
    outputs = ws.outputs
    if ws.kind == "asym":
        signer = json.loads(outputs["keyset"].read_bytes())
        return {
            "jwks": (
                "",
                frozenset(k["kid"] for k in json.loads(outputs["jwks"].read_bytes())["keys"]),
            ),
            "pem": ("", frozenset(pem_kids(outputs["pem"]))),
            "keyset": (signer["active_kid"], frozenset(k["kid"] for k in signer["keys"])),
        }
    rgs = json.loads(outputs["rgs"].read_bytes())
    env_values = parse_env_file(outputs["env"])
    return {
        "rgs": (rgs["active_kid"], frozenset(rgs["keys"])),
        "env": (
            env_values["RGS_JWT_ACTIVE_KID"],
            frozenset(json.loads(env_values["RGS_JWT_KEYSET"])),
        ),
    }


def check_old_or_new(ws: Workspace) -> str:
    """Each output holds the previous generation (converged before the round) or the new one,
    whole: never a mix of the two, never an older one. Returns "old", "new" or "old and new"
    (the kill landed between two outputs' commits)."""
    shapes: dict[str, tuple[str, frozenset[str]]] = {}
    for age, gen in (("old", ws.generation - 1), ("new", ws.generation)):
        names = ws.kids(gen)
        shapes[age] = (names[0], frozenset(names))
    found: set[str] = set()
    for name, (active, kids) in generations(ws).items():
        ages = [
            a
            for a, (a_active, a_kids) in shapes.items()
            if kids == a_kids and active in ("", a_active)
        ]
        assert ages, f"{ws.kind} {name}: {active} {sorted(kids)} is neither of {shapes}"
        found.add(ages[0])
    return " and ".join(sorted(found, reverse=True))


def converged(ws: Workspace) -> bool:
    kids = ws.kids()
    try:
        shapes = generations(ws)
    except (OSError, ValueError, KeyError):
        return False
    return all(
        kid_set == frozenset(kids) and active in ("", kids[0])
        for active, kid_set in shapes.values()
    )


def last_success(ws: Workspace) -> float:
    return float((StateStore(ws.env.state).load_status() or {}).get("last_success_at") or 0.0)


def started_and_converged(ws: Workspace) -> subprocess.Popen[bytes]:
    """A daemon without a failpoint, once a cycle of its own has succeeded on the current
    generation."""
    before = last_success(ws)
    proc = ws.env.start()
    wait_for(
        lambda: last_success(ws) > before,
        timeout=15,
        what=f"a successful cycle of the restarted {ws.kind} daemon",
    )
    assert converged(ws), f"{ws.kind}: outputs are not those of generation {ws.generation}"
    return proc


def recovered(ws: Workspace, slow_stops: list[str]) -> int:
    """Restart without a failpoint: the daemon cleans what the crash left and reaches the
    current snapshot. Stopped with SIGTERM (no write in flight), nothing is left over.
    Returns how many temp files the crash had left."""
    leftovers = temp_files(ws.env.out, ws.env.state)
    for temp in leftovers:  # a crash's temp file of a signer output or state holds private keys
        if "sign" in temp.parent.name or ws.kind == "hmac" or temp.parent == ws.env.state:
            assert temp.stat().st_mode & 0o077 == 0, f"{temp} is readable by others"
    proc = started_and_converged(ws)
    assert not [p for p in leftovers if p.exists()], "startup left a crash's temp files"
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=STOP_WAIT) == 0
    except subprocess.TimeoutExpired:
        # Not a consistency failure: counted and reported (tests/RELIABILITY.md, open issues).
        slow_stops.append(ws.env.log()[-1500:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        check_whole(ws)
        return len(leftovers)
    check_whole(ws)
    assert temp_files(ws.env.out, ws.env.state) == []
    if ws.kind == "asym":  # the crash's staged or old pem versions are gone too
        pem = ws.outputs["pem"]
        versions = [p.name for p in pem.iterdir() if p.name.startswith("..") and p.name != "..data"]
        assert versions == [os.readlink(pem / "..data")], versions
    return len(leftovers)


def armed_exit(ws: Workspace, proc: subprocess.Popen[bytes]) -> int | None:
    """The exit code of a daemon armed with a failpoint, or None (killed here) when its cycle
    finished without reaching the point (an n-th hit that this cycle does not make)."""
    before = last_success(ws)
    deadline = time.monotonic() + HIT_WAIT
    settled: float | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        if settled is None and last_success(ws) > before:
            settled = time.monotonic()  # the cycle is recorded; its audit lines follow at once
        if settled is not None and time.monotonic() - settled > 0.5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return None


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def cli_audit_verify(ws: Workspace) -> None:
    result = ws.env.keysetd("audit", "verify", "--config", str(ws.env.config_path))
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Lane:
    """One workspace's rounds and what they found."""

    ws: Workspace
    plan: list[str]
    first_pass: int
    rng: random.Random
    outcome: Counter[str] = field(default_factory=Counter)
    hit: set[str] = field(default_factory=set)
    missed: list[str] = field(default_factory=list)
    slow_stops: list[str] = field(default_factory=list)
    rounds: int = 0


def one_round(lane: Lane, spec: str) -> None:
    ws, rng = lane.ws, lane.rng
    if spec == "live":
        proc = started_and_converged(ws)
        ws.advance()
        time.sleep(rng.uniform(0.0, LIVE_WINDOW))  # the random instant is the point
        kill(proc)
        lane.outcome["live: killed at a random instant of change-and-publish"] += 1
    elif spec == "startup":
        ws.advance()
        proc = ws.env.start()
        time.sleep(rng.uniform(0.0, 0.4))  # the random instant is the point
        kill(proc)
        lane.outcome["startup: killed at a random instant"] += 1
    else:
        ws.advance()
        proc = ws.env.start(env={"_KEYSETD_FAILPOINT": spec})
        code = armed_exit(ws, proc)
        if code is None:
            lane.outcome["point not reached (killed idle)"] += 1
            lane.missed.append(spec)
        else:
            assert code == -signal.SIGKILL, (spec, code, ws.env.log()[-2000:])
            lane.outcome["killed at failpoint"] += 1
            lane.hit.add(spec.partition(":")[0])
    check_whole(ws)
    kind = spec if spec in RANDOM_KINDS else "failpoint"
    lane.outcome[f"{kind}: outputs {check_old_or_new(ws)}"] += 1
    lane.outcome["temp files left by the crash, cleaned at restart"] += recovered(
        ws, lane.slow_stops
    )


def run_lane(lane: Lane, deadline: float, failed: threading.Event) -> None:
    try:
        recovered(lane.ws, lane.slow_stops)
        for spec in lane.plan:
            if failed.is_set() or (lane.rounds >= lane.first_pass and time.monotonic() > deadline):
                break
            one_round(lane, spec)
            lane.rounds += 1
            if lane.rounds % 25 == 0:
                cli_audit_verify(lane.ws)
        cli_audit_verify(lane.ws)
    except BaseException:
        failed.set()
        raise
    finally:
        lane.ws.env.stop_all()


@pytest.mark.timeout(BUDGET_SECONDS + 240)
def test_kill_9_at_named_failpoints_and_random_instants(tmp_path: Path) -> None:
    seed = int(os.environ.get("STRESS_SEED", "20261124"))
    plan = schedule(random.Random(seed), ROUNDS)
    first_pass = len(failpoints()) + 2 * (1 + LIVE_PER_PASS)
    lanes = {
        kind: Lane(
            make_workspace(tmp_path / kind, kind),
            [spec for k, spec in plan if k == kind],
            sum(1 for k, _ in plan[:first_pass] if k == kind),
            random.Random(f"{seed}-{kind}"),
        )
        for kind in ("asym", "hmac")
    }
    failed = threading.Event()
    deadline = time.monotonic() + BUDGET_SECONDS
    with ThreadPoolExecutor(len(lanes)) as pool:
        runs = [pool.submit(run_lane, lane, deadline, failed) for lane in lanes.values()]
        for run in runs:
            run.result()
    outcome: Counter[str] = Counter()
    for lane in lanes.values():
        outcome.update(lane.outcome)
    rounds = sum(lane.rounds for lane in lanes.values())
    hit = set().union(*(lane.hit for lane in lanes.values()))
    named = {f"{kind}:{spec}" for kind, spec in failpoints()}
    reached = {f"{kind}:{spec}" for kind, lane in lanes.items() for spec in lane.hit}
    print(
        f"\ncrash rounds: {rounds} of {len(plan)}; {dict(outcome)}; {len(hit)} distinct points"
        f" reached ({len(reached)} of {len(named)} point/workspace pairs);"
        f" not reached: {[m for lane in lanes.values() for m in lane.missed]}"
    )
    for tail in (t for lane in lanes.values() for t in lane.slow_stops):
        print(f"SIGTERM stop over {STOP_WAIT:g}s (killed); log tail:\n{tail}")
    assert sorted(named - reached) == [], "failpoints never reached"
    assert outcome["live: killed at a random instant of change-and-publish"] >= 2 * LIVE_PER_PASS
    assert outcome["startup: killed at a random instant"] >= 2
    assert rounds >= min(ROUNDS, first_pass), f"only {rounds} rounds fit in {BUDGET_SECONDS}s"
