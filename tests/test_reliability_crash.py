"""kill -9 at named points of the commit sequence (keysetd.failpoints), then restart.

Each round changes the source, starts ``keysetd run`` with ``_KEYSETD_FAILPOINT``
armed at one point (or kills it at a random instant), checks that every output
is whole and consistent and the state dir loads, restarts without a failpoint
and checks that the daemon converges on the new snapshot with no temp file left.

Two workspaces cover every output type: jwks + pem + keyset (EC keys) and
rgs + env (HMAC secrets). ``make test`` runs 52 rounds (every point at least
once); ``make stress`` runs ``STRESS_ROUNDS=500``, bounded by ``STRESS_BUDGET_SECONDS``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shlex
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keysetd.audit import verify
from keysetd.formats import decode
from keysetd.state import StateStore
from tests.conftest import Env, wait_for
from tests.keys import jwk, jwks_doc
from tests.pemdir import check_pem_dir, pem_kids

ROUNDS = int(os.environ.get("STRESS_ROUNDS", "52"))
BUDGET_SECONDS = float(os.environ.get("STRESS_BUDGET_SECONDS", "80" if ROUNDS <= 60 else "1500"))
#: Points a cycle reaches more than once (history is saved up to four times per cycle).
REPEATED = ("@history.json", "state.after-history-save", "@pem")
#: How long an armed daemon may take to reach its failpoint before the test kills it itself.
HIT_WAIT = 10.0
#: How long a SIGTERM stop may take; longer ones are killed, counted and printed.
STOP_WAIT = 20.0
SLOW_STOPS: list[str] = []
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


def schedule(rng: random.Random, rounds: int) -> list[tuple[str, str]]:
    """(workspace kind, failpoint spec or "random"): every point once, then at random."""
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
    points += [("asym", "random"), ("hmac", "random")]
    plan = list(points)
    rng.shuffle(plan)
    while len(plan) < rounds:
        kind, spec = rng.choice(points)
        nth = rng.choice((1, 2, 3)) if spec.endswith(REPEATED) else 1
        plan.append((kind, f"{spec}:{nth}" if nth > 1 else spec))
    return plan[:rounds]


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
    for name in ("history.json", "last-known-good.json", "status.json", "signer-keyset.json"):
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


def converged(ws: Workspace) -> bool:
    kids = ws.kids()
    outputs = ws.outputs
    try:
        if ws.kind == "asym":
            signer = json.loads(outputs["keyset"].read_bytes())
            jwks = json.loads(outputs["jwks"].read_bytes())
            pems = pem_kids(outputs["pem"])
            return (
                signer["active_kid"] == kids[0]
                and {k["kid"] for k in jwks["keys"]} == set(kids)
                and pems == set(kids)
            )
        rgs = json.loads(outputs["rgs"].read_bytes())
        env_values = parse_env_file(outputs["env"])
        return (
            rgs["active_kid"] == kids[0]
            and set(rgs["keys"]) == set(kids)
            and env_values["RGS_JWT_ACTIVE_KID"] == kids[0]
        )
    except (OSError, ValueError, KeyError):
        return False


def recovered(ws: Workspace) -> int:
    """Restart without a failpoint: the daemon cleans what the crash left and reaches the
    current snapshot. Stopped with SIGTERM (no write in flight), nothing is left over.
    Returns how many temp files the crash had left."""
    leftovers = temp_files(ws.env.out, ws.env.state)
    for temp in leftovers:  # a crash's temp file of a signer output or state holds private keys
        if "sign" in temp.parent.name or ws.kind == "hmac" or temp.parent == ws.env.state:
            assert temp.stat().st_mode & 0o077 == 0, f"{temp} is readable by others"
    store = StateStore(ws.env.state)
    before = (store.load_status() or {}).get("last_success_at") or 0.0
    proc = ws.env.start()
    wait_for(
        lambda: ((store.load_status() or {}).get("last_success_at") or 0.0) > before,
        timeout=15,
        what="a successful cycle of the restarted daemon",
    )
    assert converged(ws), f"{ws.kind}: outputs are not those of generation {ws.generation}"
    assert not [p for p in leftovers if p.exists()], "startup left a crash's temp files"
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=STOP_WAIT) == 0
    except subprocess.TimeoutExpired:
        # Not a consistency failure: counted and reported (tests/RELIABILITY.md, open issues).
        SLOW_STOPS.append(ws.env.log()[-1500:])
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
    store = StateStore(ws.env.state)
    before = (store.load_status() or {}).get("last_success_at") or 0.0
    deadline = time.monotonic() + HIT_WAIT
    settled: float | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        if settled is None and ((store.load_status() or {}).get("last_success_at") or 0) > before:
            settled = time.monotonic()  # the cycle is recorded; its audit lines follow at once
        if settled is not None and time.monotonic() - settled > 0.5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return None


def cli_audit_verify(ws: Workspace) -> None:
    result = ws.env.keysetd("audit", "verify", "--config", str(ws.env.config_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(BUDGET_SECONDS + 120)
def test_kill_9_at_named_failpoints(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("STRESS_SEED", "20261124")))
    spaces = {kind: make_workspace(tmp_path / kind, kind) for kind in ("asym", "hmac")}
    plan = schedule(rng, ROUNDS)
    outcome: Counter[str] = Counter()
    hit_points: set[str] = set()
    missed_specs: list[str] = []
    try:
        for ws in spaces.values():
            recovered(ws)
        deadline = time.monotonic() + BUDGET_SECONDS
        rounds = 0
        for kind, spec in plan:
            if time.monotonic() > deadline:
                break
            ws = spaces[kind]
            ws.generation += 1
            ws.env.write_source(ws.document())
            if spec == "random":
                proc = ws.env.start()
                time.sleep(rng.uniform(0.0, 0.4))
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                outcome["random instant"] += 1
            else:
                proc = ws.env.start(env={"_KEYSETD_FAILPOINT": spec})
                code = armed_exit(ws, proc)
                if code is None:
                    outcome["point not reached (killed idle)"] += 1
                    missed_specs.append(spec)
                else:
                    assert code == -signal.SIGKILL, (spec, code, ws.env.log()[-2000:])
                    outcome["killed at failpoint"] += 1
                    hit_points.add(spec.partition(":")[0])
            check_whole(ws)
            outcome["temp files left by the crash, cleaned at restart"] += recovered(ws)
            rounds += 1
            if rounds % 25 == 0:
                cli_audit_verify(ws)
        for ws in spaces.values():
            cli_audit_verify(ws)
    finally:
        for ws in spaces.values():
            ws.env.stop_all()
    print(f"\ncrash rounds: {rounds} of {len(plan)}; {dict(outcome)}; not reached {missed_specs}")
    for tail in SLOW_STOPS:
        print(f"SIGTERM stop over {STOP_WAIT:g}s (killed); log tail:\n{tail}")
    first_pass = {spec for _, spec in plan[: min(len(plan), rounds)] if ":" not in spec}
    missed = sorted(first_pass - hit_points - {"random"})
    assert missed == [], f"failpoints never reached: {missed}"
    assert rounds >= min(ROUNDS, 50), f"only {rounds} rounds fit in {BUDGET_SECONDS}s"
