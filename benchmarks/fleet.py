"""Fleet mode: the load replicas put on etcd, and a rotation's time to every replica's ack.

One real etcd member (Debian's ``etcd``) on free loopback ports, data in a temp dir.

**Store load vs replicas**, in process: N ``FleetMember`` objects (N = 1, 10, 100; their
own ``StateStore`` each, replica ids r0..rN-1, one etcd prefix per N, ``lease_ttl`` 10 s,
the default) are driven round-robin as N daemons would drive them every refresh of
``REFRESH_S``: ``sync()``, ``plan()`` of one shared keyset, then ``before_verifiers``,
``before_signers`` and ``acknowledge`` on the plan. After a warm-up (every ack written,
a pass without writes), the HTTP requests of every member's ``store.requests()`` are
counted over ``STEADY_S`` of wall clock. One process cannot drive 100 members in 250 ms
(a sync after a change reads and parses the whole prefix, every ack; an unchanged store is
one count-only request): the achieved refresh is reported,
and requests/min are scaled to a 250 ms refresh honestly: the requests sent once per
refresh (range, put, txn) per pass x 240, plus the ones the clock sends (lease keepalives,
every ``lease_ttl``/3) per wall-clock minute; the measured rate is shown beside it. Also
the bytes a full read returns and one member's turn in ms. Then a change: the keyset gains a new
active key. Writes (``put`` + ``txn``) per replica are counted until every member's ack
lists the new kid (the target), and until the fleet settles (every ack signs with it, then
a pass without writes).

**Rotation to all acknowledged**: 5 real ``keysetd run`` replicas (their own config,
state, jwks and keyset outputs; one file source for all; ``refresh_interval`` 250 ms;
``lease_ttl`` 3 s; default policy: no activation delay, no retention). ``ROTATIONS``
times the source gains a new active key (the last ``KEEP`` keys kept), written atomically;
latency = from just before ``os.replace`` until every replica's ack in etcd lists the new
kid (polled every ``POLL_S``), and until every ack signs with it; ``PACE_S`` between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks._common import Row, Workspace, binary, document, free_port, percentile, wait_for
from benchmarks._install import keysetd_command
from keysetd.config import FleetSettings
from keysetd.crypto import generate
from keysetd.errors import StoreError
from keysetd.fleet.etcd import EtcdSettings, EtcdStore
from keysetd.fleet.member import FleetMember
from keysetd.fleet.state import Ack, FleetDocumentError, decode_ack
from keysetd.model import Key, Keyset
from keysetd.plan import Policy
from keysetd.state import StateStore

__all__ = ["run"]

#: Simulated replicas per measurement.
SIZES = (1, 10, 100)
#: The refresh the simulated replicas run at (the real ones' ``refresh_interval``).
REFRESH_S = 0.25
#: Steady window per N, wall clock.
STEADY_S = float(os.environ.get("BENCH_FLEET_SECONDS", "15"))
#: The simulated replicas' lease (keysetd's default).
SIM_LEASE_TTL = 10.0
#: Bounds on the warm-up and the change: passes and seconds.
MAX_PASSES = 60
MAX_PHASE_S = 45.0
WRITES = ("put", "txn")
#: Requests sent by the clock (every lease_ttl/3), not once per refresh.
TIMED = ("lease_keepalive", "lease_grant")
TARGET_RATIO = 1.5
TARGET_WRITES = 1.0

REPLICAS = 5
ROTATIONS = 30
KEEP = 3
POLL_S = 0.01
PACE_S = 0.3
LAND_TIMEOUT = 10.0
TARGET_P99_MS = 1000.0
REAL_LEASE_TTL = "3s"


# -- etcd ------------------------------------------------------------------------------------


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=1) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


@contextmanager
def _etcd(root: Path) -> Iterator[str]:
    """One etcd member on free loopback ports; its client URL. SIGTERM, then SIGKILL, at exit."""
    root.mkdir(parents=True)
    client = f"http://127.0.0.1:{free_port()}"
    peer = f"http://127.0.0.1:{free_port()}"
    args = [
        binary("etcd"),
        "--name=bench",
        f"--data-dir={root / 'bench.etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=bench={peer}",
        "--initial-cluster-state=new",
        "--initial-cluster-token=keysetd-bench",
        "--heartbeat-interval=50",
        "--election-timeout=500",
        "--logger=zap",
        "--log-level=warn",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    log_path = root / "etcd.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd exited with {proc.returncode}: {tail}")
            return _healthy(client)

        wait_for(up, 15, "etcd /health", interval=0.05)
        yield client
    finally:
        Workspace.stop(proc)


def _observer(url: str) -> EtcdStore:
    """A store of the benchmark's own: its reads are not counted as any replica's."""
    return EtcdStore(EtcdSettings(endpoints=(url,), timeout=2.0))


def _acks(store: EtcdStore, prefix: str) -> dict[str, Ack]:
    out = {}
    for entry in store.list(f"{prefix}/acks/"):
        with suppress(FleetDocumentError):
            ack = decode_ack(entry.value)
            out[ack.replica_id] = ack
    return out


# -- store load vs replicas (in process) --------------------------------------------------------


@dataclass
class _Sim:
    """N simulated replicas on one prefix, driven one pass (every member once) at a time."""

    members: list[FleetMember]
    previous: list[Keyset | None]
    errors: Counter[str] = field(default_factory=Counter)
    #: Seconds spent in passes.
    busy: float = 0.0

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for member in self.members:
            total.update(member.store.requests())
        return total

    def one_pass(self, keyset: Keyset) -> None:
        started = time.perf_counter()
        for index, member in enumerate(self.members):
            try:
                member.sync()
                now = time.time()
                planned = member.plan(keyset, now, self.previous[index]).plan
                member.before_verifiers(planned)
                member.before_signers(planned, now)
                member.acknowledge(planned, now, verifiers_told=True)
            except StoreError as exc:
                self.errors[type(exc).__name__] += 1
                continue
            self.previous[index] = planned.signer
        self.busy += time.perf_counter() - started

    def close(self) -> None:
        for member in self.members:
            with suppress(StoreError):
                member.close()


def _writes(counts: Counter[str]) -> int:
    return sum(counts[op] for op in WRITES)


def _paced(sim: _Sim, keyset: Keyset, done: Callable[[int], bool], what: str) -> tuple[int, float]:
    """Passes every ``REFRESH_S`` (at once when one overran) until ``done(passes)``; bounded."""
    started = time.monotonic()
    passes = 0
    while not done(passes):
        if passes >= MAX_PASSES or time.monotonic() - started > MAX_PHASE_S:
            raise RuntimeError(f"{what}: not done after {passes} passes")
        due = started + passes * REFRESH_S
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        sim.one_pass(keyset)
        passes += 1
    return passes, time.monotonic() - started


@dataclass(frozen=True)
class _Load:
    replicas: int
    #: Seconds of the steady window, and passes (every member once) in it.
    window: float
    passes: int
    steady_ops: Counter[str]
    #: Bytes (keys + values) one sync's range read returns, in the steady state.
    range_bytes: int
    #: Milliseconds of one member's turn (sync, plan, before_*, acknowledge), steady.
    turn_ms: float
    #: Each replica's own writes (its ack: a put) per replica, until every ack lists the kid.
    writes_to_ack: float
    #: Compare-and-swap writes (the shared history, by the leader or a write-ahead) in that
    #: span, fleet-wide: the same whatever the number of replicas.
    shared_to_ack: int
    writes_to_settle: float
    change_ops: Counter[str]
    change_passes: int
    errors: Counter[str]

    @property
    def refresh_s(self) -> float:
        """The refresh achieved: ``REFRESH_S`` unless one pass over the members took longer."""
        return self.window / self.passes

    @property
    def measured_per_minute(self) -> float:
        return sum(self.steady_ops.values()) * 60 / self.window

    @property
    def per_minute(self) -> float:
        """Requests per minute at a ``REFRESH_S`` refresh: the per-refresh requests (reads,
        writes) per pass, the timed ones (lease keepalives and grants) per wall-clock minute."""
        per_pass = sum(n for op, n in self.steady_ops.items() if op not in TIMED)
        timed = sum(n for op, n in self.steady_ops.items() if op in TIMED)
        return per_pass / self.passes * 60 / REFRESH_S + timed * 60 / self.window

    @property
    def slow(self) -> bool:
        return self.refresh_s > REFRESH_S * 1.05


def _load(url: str, root: Path, replicas: int, keys: Sequence[Key]) -> _Load:
    prefix = f"/bench-fleet-n{replicas}"
    members = []
    for index in range(replicas):
        state = StateStore(root / f"n{replicas}" / f"r{index}")
        state.ensure()
        settings = FleetSettings(
            endpoints=[url], prefix=prefix, replica_id=f"r{index}", lease_ttl=SIM_LEASE_TTL
        )
        members.append(FleetMember(settings, Policy(), state, signs=True))
    sim = _Sim(members, [None] * replicas)
    observer = _observer(url)
    old, new = keys
    before = Keyset((old,), old.kid)
    after = Keyset((old, new), new.kid)

    def acked(keyset: Keyset, signing: bool) -> bool:
        acks = _acks(observer, prefix)
        return len(acks) == replicas and all(
            (a.signing == keyset.active_kid) if signing else (keyset.active_kid in a.kids)
            for a in acks.values()
        )

    try:
        # Warm-up: leases, candidacies, the leader's history, every ack; then a quiet pass.
        last = [sim.counts()]

        def quiet(passes: int) -> bool:
            now = sim.counts()
            still = passes < 2 or _writes(now) > _writes(last[0]) or not acked(before, True)
            last[0] = now
            return not still

        _paced(sim, before, quiet, f"{replicas} replicas: warm-up")

        # Steady window: passes due every REFRESH_S (at once when one overran) for STEADY_S.
        start_counts, start_busy = sim.counts(), sim.busy
        started = time.monotonic()
        passes = 0
        while max(passes * REFRESH_S, time.monotonic() - started) < STEADY_S:
            if (wait := started + passes * REFRESH_S - time.monotonic()) > 0:
                time.sleep(wait)
            sim.one_pass(before)
            passes += 1
        window = max(time.monotonic(), started + passes * REFRESH_S) - started
        steady = sim.counts() - start_counts
        turn_ms = (sim.busy - start_busy) * 1000 / passes / replicas
        range_bytes = sum(len(e.key) + len(e.value) for e in observer.list(f"{prefix}/"))

        # A change: the keyset gains a new active key.
        base = sim.counts()
        to_ack, _ = _paced(sim, after, lambda p: p > 0 and acked(after, False), "change")
        at_ack = sim.counts() - base
        last = [sim.counts()]

        def settled(passes: int) -> bool:
            now = sim.counts()
            moved = _writes(now) > _writes(last[0])
            last[0] = now
            return passes > 0 and not moved and acked(after, True)

        more, _ = _paced(sim, after, settled, "change: settle")
        whole = sim.counts() - base
    finally:
        sim.close()
        observer.close()
    return _Load(
        replicas=replicas,
        window=window,
        passes=passes,
        steady_ops=steady,
        range_bytes=range_bytes,
        turn_ms=turn_ms,
        writes_to_ack=at_ack["put"] / replicas,
        shared_to_ack=at_ack["txn"],
        writes_to_settle=_writes(whole) / replicas,
        change_ops=whole,
        change_passes=to_ack + more,
        errors=sim.errors,
    )


def _ops(counts: Counter[str]) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))


def _load_rows(loads: Sequence[_Load]) -> list[Row]:
    rows = []
    for load in loads:
        name = f"{load.replicas} replicas: etcd requests/min, steady"
        figure = f"{load.per_minute:,.0f}"
        if load.slow:
            name += f" (a pass took {load.refresh_s * 1000:.0f} ms: scaled to 250 ms)"
            figure += f" (measured {load.measured_per_minute:,.0f})"
        rows.append(Row(name, figure))
    for load in loads:
        rows.append(
            Row(
                f"{load.replicas} replicas: etcd requests/min per replica",
                f"{load.per_minute / load.replicas:,.0f}",
            )
        )
    first, last = loads[0], loads[-1]
    ratio = (last.per_minute / last.replicas) / (first.per_minute / first.replicas)
    rows.append(
        Row(
            f"requests/min per replica, {last.replicas} ÷ {first.replicas} replicas",
            f"{ratio:.2f}",
            f"<= {TARGET_RATIO:g} (linear)",
            ratio <= TARGET_RATIO,
        )
    )
    sizes = " / ".join(str(x.replicas) for x in loads)
    rows.append(
        Row(
            f"bytes a full read returns (only after the store moved), {sizes} replicas",
            " / ".join(f"{x.range_bytes / 1024:.1f}" for x in loads) + " KiB",
        )
    )
    rows.append(
        Row(
            f"one member's turn (sync, plan, ack; in process), {sizes} replicas",
            " / ".join(f"{x.turn_ms:.1f}" for x in loads) + " ms",
        )
    )
    for load in loads:
        rows.append(
            Row(
                f"{load.replicas} replicas: own writes/replica, new key -> every ack lists it",
                f"{load.writes_to_ack:.2f}",
                f"<= {TARGET_WRITES:g}",
                load.writes_to_ack <= TARGET_WRITES,
            )
        )
    rows.append(
        Row(
            f"shared-history writes in that span (fleet-wide), {sizes} replicas",
            " / ".join(str(x.shared_to_ack) for x in loads),
            "constant",
            len({x.shared_to_ack for x in loads}) == 1,
        )
    )
    rows.append(
        Row(
            f"all writes/replica, whole change (every ack signs with it), {sizes} replicas",
            " / ".join(f"{x.writes_to_settle:.2f}" for x in loads),
        )
    )
    return rows


# -- rotation to all acknowledged (real daemons) ------------------------------------------------


class _Replica:
    def __init__(self, root: Path, index: int, source: Path, url: str, prefix: str) -> None:
        self.root = root
        self.name = f"r{index}"
        self.config_path = root / "keysetd.toml"
        self.log_path = root / "keysetd.log"
        out = root / "out"
        out.mkdir(parents=True)
        config = {
            "state_dir": str(root / "state"),
            "log_format": "json",
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in config.items()]
        lines += [
            "",
            "[source]",
            'type = "file"',
            f"path = {json.dumps(str(source))}",
            'refresh_interval = "250ms"',
            "",
            "[fleet]",
            f"endpoints = {json.dumps([url])}",
            f"prefix = {json.dumps(prefix)}",
            f"replica_id = {json.dumps(self.name)}",
            f"lease_ttl = {json.dumps(REAL_LEASE_TTL)}",
            "",
            "[[outputs]]",
            'type = "jwks"',
            f"path = {json.dumps(str(out / 'jwks.json'))}",
            "",
            "[[outputs]]",
            'type = "keyset"',
            f"path = {json.dumps(str(out / 'keyset.json'))}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*keysetd_command(), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}: {tail}")


def _rotations(url: str, root: Path) -> tuple[list[float], list[float]]:
    """(ms until every ack lists the new kid, ms until every ack signs with it) per rotation."""
    prefix = "/bench-fleet-e2e"
    source = root / "src" / "keyset.json"
    source.parent.mkdir(parents=True)
    staged = source.with_name(".keyset.json.new")
    keys = [generate("ES256", f"e2e-{i:03d}") for i in range(ROTATIONS + 1)]

    def doc(upto: int) -> bytes:
        kept = keys[max(0, upto - KEEP + 1) : upto + 1]
        return document([(k, True) for k in kept], keys[upto].kid)

    source.write_bytes(doc(0))
    replicas = [_Replica(root / f"r{i}", i, source, url, prefix) for i in range(REPLICAS)]
    observer = _observer(url)
    listed: list[float] = []
    signed: list[float] = []
    try:
        for replica in replicas:
            replica.start()

        def all_acks(kid: str, signing: bool) -> bool:
            for replica in replicas:
                replica.check()
            acks = _acks(observer, prefix)
            return len(acks) == REPLICAS and all(
                (a.signing == kid) if signing else (kid in a.kids) for a in acks.values()
            )

        wait_for(lambda: all_acks(keys[0].kid, True), 30, "5 replicas' first acks", 0.05)
        for index in range(1, ROTATIONS + 1):
            kid = keys[index].kid
            staged.write_bytes(doc(index))
            started = time.perf_counter()
            os.replace(staged, source)
            what = f"rotation {index}: every ack lists {kid}"
            wait_for(partial(all_acks, kid, False), LAND_TIMEOUT, what, POLL_S)
            listed.append((time.perf_counter() - started) * 1000)
            what = f"rotation {index}: every ack signs with {kid}"
            wait_for(partial(all_acks, kid, True), LAND_TIMEOUT, what, POLL_S)
            signed.append((time.perf_counter() - started) * 1000)
            time.sleep(PACE_S)
    finally:
        for replica in replicas:
            if replica.proc is not None:
                Workspace.stop(replica.proc)
        observer.close()
    return listed, signed


def _rotation_rows(listed: Sequence[float], signed: Sequence[float]) -> list[Row]:
    p99 = percentile(listed, 99)
    name = f"{REPLICAS} replicas: new kid -> every ack lists it"
    return [
        Row(f"{name}, p50 ({len(listed)} rotations)", f"{percentile(listed, 50):.0f} ms"),
        Row(f"{name}, p99", f"{p99:.0f} ms", f"p99 <= {TARGET_P99_MS:g} ms", p99 <= TARGET_P99_MS),
        Row(
            f"{REPLICAS} replicas: new kid -> every ack signs with it, p50 / p99",
            f"{percentile(signed, 50):.0f} / {percentile(signed, 99):.0f} ms",
        ),
    ]


# -- both ---------------------------------------------------------------------------------------


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-fleet-") as tmp:
        root = Path(tmp)
        with _etcd(root / "etcd") as url:
            keys = (generate("ES256", "sim-old"), generate("ES256", "sim-new"))
            loads = [_load(url, root / "sim", n, keys) for n in SIZES]
            listed, signed = _rotations(url, root / "e2e")
    for load in loads:
        print(
            f"  fleet {load.replicas:>3} replicas: refresh {load.refresh_s * 1000:.0f} ms"
            f" ({load.passes} passes in {load.window:.1f} s);"
            f" steady {_ops(load.steady_ops)}; change ({load.change_passes} passes)"
            f" {_ops(load.change_ops)}; errors {dict(load.errors) or 0}",
            file=sys.stderr,
        )
    return _load_rows(loads) + _rotation_rows(listed, signed)


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:78} {row.figure:>16}  {row.target:>20}  {row.verdict}")
