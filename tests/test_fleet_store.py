"""The fleet store layer (keysetd.fleet) against real etcd: one member, and a 3-member cluster.

Compare-and-swap races, lease expiry, leader election and takeover, failover when a member is
killed or stopped, and etcd fully down, each with a deadline.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import keysetd.fleet
from keysetd.errors import ConfigError, KeysetdError, StoreError
from keysetd.fleet import (
    CasResult,
    EtcdSettings,
    EtcdStore,
    Guard,
    LeaseNotFound,
    prefix_end,
)
from keysetd.fleet.transport import MAX_ANSWER_BYTES
from tests.conftest import wait_for
from tests.etcd import EtcdCluster, EtcdMember, etcd_tls, running_cluster
from tests.servers import HttpServer, Reply, free_port

SECRET = b"-----BEGIN PRIVATE KEY----- not-a-real-key-but-treated-as-one"


@pytest.fixture(scope="module")
def etcd_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path_factory.mktemp("etcd1"), 1) as cluster:
        yield cluster


@pytest.fixture
def etcd_three(tmp_path: Path) -> Iterator[EtcdCluster]:
    with running_cluster(tmp_path / "etcd3", 3) as cluster:
        yield cluster


_OPEN: list[EtcdStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    """Every store a test opened is closed."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def track(s: EtcdStore) -> EtcdStore:
    _OPEN.append(s)
    return s


def store(endpoints: tuple[str, ...], timeout: float = 3.0) -> EtcdStore:
    return track(EtcdStore(EtcdSettings(endpoints, timeout=timeout)))


def test_public_api_is_pinned() -> None:
    assert keysetd.fleet.__all__ == [
        "CasResult",
        "Entry",
        "EtcdSettings",
        "EtcdStore",
        "Guard",
        "HttpTransport",
        "LeaseNotFound",
        "PostJson",
        "TransportError",
        "prefix_end",
    ]


def test_prefix_end() -> None:
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_get_put_list_delete(etcd_one: EtcdCluster) -> None:
    s = store(etcd_one.endpoints)
    assert s.get("kv/absent") is None
    rev = s.put("kv/a", b"1")
    s.put("kv/b", SECRET)
    s.put("kv0", b"outside the prefix")
    got = s.get("kv/a")
    assert got is not None and got.value == b"1" and got.mod_revision == rev
    assert [(e.key, e.value) for e in s.list("kv/")] == [("kv/a", b"1"), ("kv/b", SECRET)]
    assert b"not-a-real-key" not in repr(s.list("kv/")).encode()
    assert not s.delete("kv/a", mod_revision=rev - 1)
    assert s.delete("kv/a", mod_revision=rev)
    assert s.delete("kv/b") and not s.delete("kv/b")
    assert s.list("kv/") == []
    assert s.requests()["range"] >= 4 and s.requests()["put"] == 3


def test_writes_that_must_not_race_another_key(etcd_one: EtcdCluster) -> None:
    """put_if_unchanged and cas(unchanged=...): the fleet's guarded ack shrink and write-ahead."""
    s = store(etcd_one.endpoints)
    history = s.put("guard/history", b"h1")
    assert s.put_if_unchanged("guard/ack", b"a1", {"guard/history": history})
    assert s.put_if_unchanged("guard/other", b"o", {"guard/absent": 0}), "0 matches absent"
    s.put("guard/history", b"h2")  # another writer moved it
    assert not s.put_if_unchanged("guard/ack", b"a2", {"guard/history": history})
    ack = s.get("guard/ack")
    assert ack is not None and ack.value == b"a1"
    moved = s.cas(
        "guard/history",
        b"h3",
        s.get("guard/history").mod_revision,  # type: ignore[union-attr]
        unchanged={"guard/ack": ack.mod_revision - 1},
    )
    assert not moved.succeeded and moved.current is not None and moved.current.value == b"h2"
    kept = s.cas(
        "guard/history",
        b"h3",
        moved.current.mod_revision,
        unchanged={"guard/ack": ack.mod_revision},
    )
    assert kept.succeeded


def test_the_revision_moves_with_writes_and_expiries_not_keepalives(etcd_one: EtcdCluster) -> None:
    """What a fleet sync relies on to skip re-reading an unchanged prefix."""
    s = store(etcd_one.endpoints)
    s.put("rev/a", b"1")
    entries, at = s.list_at("rev/")
    assert [e.key for e in entries] == ["rev/a"] and s.revision() == at
    lease = s.grant(1)
    s.put("rev/b", b"2", lease)
    moved = s.revision()
    assert moved > at
    s.keepalive(lease)
    assert s.revision() == moved, "a keepalive is not a write"
    wait_for(lambda: s.get("rev/b") is None, timeout=5, what="the lease to expire")
    assert s.revision() > moved, "an expiry deletes: the revision moves"


def _race(
    clients: list[EtcdStore], key: str, values: list[bytes], expected: int
) -> list[CasResult]:
    """Each client swaps ``key`` from ``expected`` to its value, released together."""
    barrier = threading.Barrier(len(clients))
    results: list[CasResult | None] = [None] * len(clients)

    def swap(i: int) -> None:
        barrier.wait(timeout=5)
        results[i] = clients[i].cas(key, values[i], expected)

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(r is not None for r in results), "a swap did not return"
    return [r for r in results if r is not None]


def test_cas_race_exactly_one_wins(etcd_one: EtcdCluster) -> None:
    """Two clients swap from the same revision at once, 30 times (the first a create-if-absent):
    exactly one wins each time, and the loser is told the winner's value."""
    clients = [store(etcd_one.endpoints), store(etcd_one.endpoints)]
    key = "cas/state"
    for round_ in range(30):
        current = clients[0].get(key)
        expected = current.mod_revision if current is not None else 0
        values = [f"{round_}:{i}".encode() for i in (0, 1)]
        results = _race(clients, key, values, expected)
        assert sorted(r.succeeded for r in results) == [False, True], round_
        winner = 0 if results[0].succeeded else 1
        loser = results[1 - winner]
        assert loser.current is not None and loser.current.value == values[winner]
        assert loser.current == results[winner].current
    final = clients[0].get(key)
    assert final is not None and final.version == 30


def test_cas_with_a_guard_fails_once_the_guard_key_is_gone(etcd_one: EtcdCluster) -> None:
    s = store(etcd_one.endpoints)
    s.put("guard/leader", b"me")
    lead = s.get("guard/leader")
    assert lead is not None
    guard = Guard("guard/leader", lead.create_revision)
    first = s.cas("guard/state", b"1", 0, guards=[guard])
    assert first.succeeded and first.current is not None
    s.delete("guard/leader")
    s.put("guard/leader", b"someone else")  # same key, a new create revision
    late = s.cas("guard/state", b"2", first.current.mod_revision, guards=[guard])
    assert not late.succeeded and late.guard_lost
    assert late.current is not None and late.current.value == b"1"


def test_lease_expiry_removes_keys_and_keepalive_holds_them(etcd_one: EtcdCluster) -> None:
    s = store(etcd_one.endpoints)
    kept, dropped = s.grant(1), s.grant(1)
    s.put("lease/kept", b"k", lease=kept)
    s.put("lease/dropped", b"d", lease=dropped)
    entry = s.get("lease/kept")
    assert entry is not None and entry.lease == kept

    def dropped_gone() -> bool:
        assert s.keepalive(kept) > 0
        return s.get("lease/dropped") is None

    wait_for(dropped_gone, 6, "the key of an expired lease to go")
    # Kept alive past twice its TTL: still there.
    until = time.monotonic() + 2.2
    while time.monotonic() < until:
        assert s.keepalive(kept) > 0
        assert s.get("lease/kept") is not None
        time.sleep(0.2)  # the pace of a keepalive loop; the check is that the key stays
    assert s.keepalive(dropped) == 0 and s.time_to_live(dropped) == -1
    with pytest.raises(LeaseNotFound) as caught:
        s.put("lease/again", SECRET, lease=dropped)
    assert "lease not found" in str(caught.value) and "put" in str(caught.value)
    assert "not-a-real-key" not in str(caught.value)
    assert base64.b64encode(SECRET).decode()[:12] not in str(caught.value)
    assert s.revoke(kept) and not s.revoke(kept)
    assert s.get("lease/kept") is None


def test_a_fenced_write_fails_once_the_fence_key_is_gone(etcd_one: EtcdCluster) -> None:
    """A leader's writes carry its election key (bound to its lease) as a guard."""
    s = store(etcd_one.endpoints)
    lease = s.grant(5)
    created = s.cas("fence/leader", b"replica-a", 0, lease=lease)
    assert created.succeeded and created.current is not None
    fence = Guard("fence/leader", created.current.create_revision)
    state = s.cas("fence/state", b"by a", 0, guards=[fence])
    assert state.succeeded and state.current is not None
    assert s.revoke(lease)  # the lease went: its key with it
    late = s.cas("fence/state", b"late a", state.current.mod_revision, guards=[fence])
    assert not late.succeeded and late.guard_lost
    current = s.get("fence/state")
    assert current is not None and current.value == b"by a"
    again = s.cas("fence/leader", b"replica-b", 0, lease=s.grant(5))
    assert again.current is not None
    stale = Guard("fence/leader", created.current.create_revision)  # same key, made anew
    assert s.cas("fence/state", b"x", state.current.mod_revision, guards=[stale]).guard_lost


def test_etcd_down_is_a_store_error_within_the_deadline() -> None:
    endpoints = (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    s = store(endpoints, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        s.cas("down/key", SECRET, 0)
    assert time.monotonic() - start < 1.5
    error = caught.value
    assert isinstance(error, KeysetdError) and error.operation == "txn"
    assert all(url in str(error) for url in endpoints)
    assert "refused" in str(error).lower()
    assert "not-a-real-key" not in str(error)
    assert s.requests()["txn"] >= 2, "every endpoint tried, more than once while time was left"


def test_a_stopped_member_is_a_store_error_within_the_deadline(tmp_path: Path) -> None:
    """SIGSTOP: the kernel still accepts the connection but nothing answers."""
    member = EtcdCluster(tmp_path, 1)
    try:
        member.start()
        s = store(member.endpoints, timeout=1.0)
        s.put("stop/key", b"v")
        member.members[0].sigstop()
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"range .*no answer before the deadline"):
            s.get("stop/key")
        assert time.monotonic() - start < 1.5
        member.members[0].sigcont()
        entry = s.get("stop/key")
        assert entry is not None and entry.value == b"v"
    finally:
        member.close()


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        EtcdStore(EtcdSettings(()))
    with pytest.raises(ConfigError, match="credentials") as caught:
        EtcdStore(EtcdSettings(("http://user:hunter2@127.0.0.1:2379",)))
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="http"):
        EtcdStore(EtcdSettings(("unix:///run/etcd.sock",)))
    with pytest.raises(ConfigError, match=r"TLS files .*missing\.pem"):
        EtcdStore(EtcdSettings(("https://127.0.0.1:2379",), ca_file=str(tmp_path / "missing.pem")))


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """etcd requiring client certificates: the store's ca/cert/key pass, no cert is refused."""
    tls = etcd_tls(tmp_path)
    cluster = EtcdCluster(tmp_path / "etcd", 1, extra=tls.server_flags())
    member = cluster.members[0]
    try:
        member.start()
        settings = EtcdSettings(
            cluster.endpoints,
            timeout=3.0,
            ca_file=str(tls.ca_file),
            cert_file=str(tls.client_cert),
            key_file=str(tls.client_key),
        )
        s = track(EtcdStore(settings))
        wait_for(lambda: _answers(s), 15, "etcd over TLS")
        s.put("tls/key", b"v")
        entry = s.get("tls/key")
        assert entry is not None and entry.value == b"v"
        anonymous = track(
            EtcdStore(EtcdSettings(cluster.endpoints, timeout=1.0, ca_file=str(tls.ca_file)))
        )
        with pytest.raises(StoreError) as caught:
            anonymous.get("tls/key")
        assert cluster.endpoints[0] in str(caught.value)
        assert "TLS handshake failed" in str(caught.value)
        untrusting = track(EtcdStore(EtcdSettings(cluster.endpoints, timeout=1.0)))
        with pytest.raises(StoreError, match="TLS verification failed"):
            untrusting.get("tls/key")
    finally:
        cluster.close()


def _answers(s: EtcdStore) -> bool:
    try:
        s.get("ready")
    except StoreError:
        return False
    return True


# --- hostile servers in etcd's place -----------------------------------------------------------


@pytest.fixture
def fake_etcd() -> Iterator[HttpServer]:
    """A real HTTP server where etcd should be, answering whatever the test sets."""
    with HttpServer() as server:
        yield server


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()


HEADER = {"header": {"revision": "7"}}


@pytest.mark.parametrize("drip", ["drip_head", "drip_body"])
def test_a_dripping_answer_is_cut_at_the_total_deadline(fake_etcd: HttpServer, drip: str) -> None:
    """A byte every 0.5 s keeps every socket read short, but the call ends at its deadline."""
    fake_etcd.reply = Reply(body=_json({**HEADER, "pad": "x" * 100}), **{drip: 0.5})
    s = store((fake_etcd.url().rstrip("/"),), timeout=1.0)
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"put .*no answer before the deadline") as caught:
        s.put("drip/key", SECRET)
    assert time.monotonic() - start < 1.6
    assert fake_etcd.url().rstrip("/") in str(caught.value)


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_over_the_cap_is_refused(fake_etcd: HttpServer, declared: bool) -> None:
    body = b'{"header":{"revision":"1"},"pad":"' + b"x" * MAX_ANSWER_BYTES + b'"}'
    fake_etcd.reply = Reply(body=body, content_length=declared)
    s = store((fake_etcd.url().rstrip("/"),), timeout=5.0)
    with pytest.raises(StoreError, match=r"range .*answer larger than 4 MiB"):
        s.get("big/key")
    assert s.requests()["range"] == 1, "not retried: every member would answer the same"


def test_no_proxy_from_the_environment(
    fake_etcd: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_etcd.reply = Reply(body=_json(HEADER))
    with HttpServer() as proxy:
        proxy.reply = Reply(status=502)
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url())
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        s = store((fake_etcd.url().rstrip("/"),))
        assert s.get("direct/key") is None
        assert proxy.requests == []
    assert [r.path for r in fake_etcd.requests] == ["/v3/kv/range"]


_B64_SECRET = base64.b64encode(SECRET).decode()
_KV = {"key": base64.b64encode(b"k").decode(), "mod_revision": "3", "create_revision": "3"}
_Op = Callable[[EtcdStore], object]
_GET: _Op = lambda s: s.get("k")  # noqa: E731
_LIST: _Op = lambda s: s.list("k")  # noqa: E731
_PUT: _Op = lambda s: s.put("k", SECRET)  # noqa: E731
_CAS: _Op = lambda s: s.cas("k", SECRET, 3, guards=[Guard("lead", 2)])  # noqa: E731
_DELETE: _Op = lambda s: s.delete("k")  # noqa: E731
_DELETE_AT: _Op = lambda s: s.delete("k", mod_revision=3)  # noqa: E731
_GRANT: _Op = lambda s: s.grant(5)  # noqa: E731
_KEEPALIVE: _Op = lambda s: s.keepalive(5)  # noqa: E731
_TTL: _Op = lambda s: s.time_to_live(5)  # noqa: E731


def _range(**kv: Any) -> bytes:
    return _json({**HEADER, "kvs": [{**_KV, **kv}]})


MALFORMED: list[tuple[str, _Op, str, bytes]] = [
    ("range", _GET, "JSON", b"<html>not etcd</html>"),
    ("range", _GET, "JSON", b"[]"),
    ("range", _GET, "JSON", b"[" * 100_000),
    ("range", _GET, "JSON", b'{"kvs": [' + b"9" * 5000 + b"]}"),
    ("range", _GET, "kvs: not a JSON array", _json({"kvs": "YQ=="})),
    ("range", _GET, r"kvs\[0\]: not a JSON object", _json({"kvs": [_B64_SECRET]})),
    ("range", _GET, "without a key", _json({"kvs": [{"value": _B64_SECRET}]})),
    ("range", _GET, "key: not base64", _range(key="!not base64!")),
    ("range", _GET, "key: not a string", _range(key=12)),
    ("range", _GET, "value: not base64", _range(value=_B64_SECRET + "*")),
    ("range", _GET, "value: not base64", _range(value=_B64_SECRET[:-1])),
    ("range", _GET, "mod_revision: not an integer", _range(mod_revision="3.5")),
    ("range", _GET, "mod_revision: not an integer", _range(mod_revision="9" * 5000)),
    ("range", _GET, "mod_revision: not an integer", _range(mod_revision=1e300)),
    ("range", _GET, "mod_revision: not an integer", _range(mod_revision=True)),
    ("range", _GET, "mod_revision: not an integer", _range(mod_revision="²")),
    ("range", _GET, "mod_revision: out of range", _range(mod_revision=2**64)),
    ("range", _GET, "mod_revision: out of range", _range(mod_revision="-3")),
    ("range", _GET, "lease: out of range", _range(lease="9223372036854775808")),
    ("range", _LIST, "version: not an integer", _range(version=[1])),
    ("put", _PUT, "header.revision: missing", _json({})),
    ("put", _PUT, "header: not a JSON object", _json({"header": "7"})),
    ("put", _PUT, "revision: not an integer", _json({"header": {"revision": "seven"}})),
    ("put", _PUT, "revision: out of range", _json({"header": {"revision": 10**30}})),
    ("txn", _CAS, "succeeded: not a boolean", _json({**HEADER, "succeeded": "true"})),
    ("txn", _CAS, "responses: 0 where the txn asked for 2", _json({**HEADER, "succeeded": True})),
    ("txn", _CAS, "responses: not a JSON array", _json({**HEADER, "responses": {}})),
    (
        "txn",
        _CAS,
        r"responses\[1\].response_range: not a JSON object",
        _json({**HEADER, "responses": [{"response_range": {}}, {"response_range": [1]}]}),
    ),
    (
        "txn",
        _CAS,
        "value: not base64",
        _json(
            {
                **HEADER,
                "responses": [
                    {"response_range": {"kvs": [{**_KV, "value": _B64_SECRET + "!"}]}},
                    {"response_range": {}},
                ],
            }
        ),
    ),
    (
        "txn",
        _CAS,
        "header.revision: missing",
        _json({"responses": [{"response_range": {}}, {"response_range": {}}]}),
    ),
    ("delete", _DELETE, "deleted: not an integer", _json({**HEADER, "deleted": {}})),
    ("txn", _DELETE_AT, "succeeded: not a boolean", _json({**HEADER, "succeeded": 1})),
    ("lease_grant", _GRANT, "ID: missing", _json({**HEADER, "TTL": "5"})),
    ("lease_grant", _GRANT, "ID: not an integer", _json({**HEADER, "ID": "0x10"})),
    ("lease_keepalive", _KEEPALIVE, "result: not a JSON object", _json({"result": [5]})),
    ("lease_keepalive", _KEEPALIVE, "TTL: not an integer", _json({"result": {"TTL": "5s"}})),
    ("lease_ttl", _TTL, "TTL: out of range", _json({**HEADER, "TTL": -(2**64)})),
]


@pytest.mark.parametrize(
    ("operation", "call", "named", "answer"),
    MALFORMED,
    ids=[f"{i}-{case[0]}" for i, case in enumerate(MALFORMED)],
)
def test_a_malformed_answer_is_a_store_error_naming_the_operation(
    fake_etcd: HttpServer, operation: str, call: _Op, named: str, answer: bytes
) -> None:
    """Whatever shape comes back, the caller gets a StoreError naming what and where; never a
    KeyError, ValueError or binascii.Error, and never the bytes of a value."""
    fake_etcd.reply = Reply(body=answer)
    endpoint = fake_etcd.url().rstrip("/")
    s = store((endpoint,), timeout=2.0)
    start = time.monotonic()
    with pytest.raises(StoreError, match=named) as caught:
        call(s)
    assert time.monotonic() - start < 1.0, "refused at once, not retried to the deadline"
    error = caught.value
    assert type(error) is StoreError and error.operation == operation
    assert endpoint in str(error)
    assert "not-a-real-key" not in str(error) and _B64_SECRET[:12] not in str(error)


def test_a_well_formed_answer_of_a_fake_etcd_reads(fake_etcd: HttpServer) -> None:
    """The strict reading accepts what etcd sends, omitted zero fields included."""
    fake_etcd.reply = Reply(body=_range(value=_B64_SECRET, version="2", lease=None))
    s = store((fake_etcd.url().rstrip("/"),))
    entry = s.get("k")
    assert entry is not None and entry.value == SECRET and entry.version == 2 and entry.lease == 0
    fake_etcd.reply = Reply(body=_json({"result": {**HEADER, "ID": "5"}}) + b"\n")
    assert s.keepalive(5) == 0, "TTL omitted: the lease is gone"


# --- a 3-member cluster -------------------------------------------------------------------


def _leader_first(cluster: EtcdCluster) -> tuple[EtcdMember, tuple[str, ...]]:
    """The etcd leader, and the endpoints with its own first (the store's preferred one)."""
    leader = cluster.leader()
    rest = tuple(url for url in cluster.endpoints if url != leader.client_url)
    return leader, (leader.client_url, *rest)


def test_cluster_failover_when_the_leader_member_is_killed(etcd_three: EtcdCluster) -> None:
    leader, endpoints = _leader_first(etcd_three)
    s = store(endpoints, timeout=5.0)
    first = s.cas("fleet/state", b"1", 0)
    assert first.succeeded and first.current is not None
    lease = s.grant(5)
    s.put("fleet/ack/a", b"fp", lease=lease)

    leader.kill9()
    # The client goes on through the other members, across the election of a new leader.
    second = s.cas("fleet/state", b"2", first.current.mod_revision)
    assert second.succeeded and second.current is not None
    assert s.keepalive(lease) > 0
    assert [e.key for e in s.list("fleet/ack/")] == ["fleet/ack/a"]
    new_leader = etcd_three.leader()
    assert new_leader is not leader
    with pytest.raises(StoreError, match="refused"):
        store((leader.client_url,), timeout=0.5).get("fleet/state")  # the first endpoint is dead

    # The killed member comes back on its data dir and catches up.
    leader.start()
    etcd_three.wait_ready()
    alone = store((leader.client_url,))

    def caught_up() -> bool:
        entry = alone.get("fleet/state")
        return entry is not None and entry.value == b"2"

    wait_for(caught_up, 10, "the restarted member to catch up")


def test_cluster_failover_when_a_member_is_stopped(etcd_three: EtcdCluster) -> None:
    """SIGSTOP the store's preferred member (not the leader): calls go on through the others."""
    leader = etcd_three.leader()
    follower = next(m for m in etcd_three.members if m is not leader)
    endpoints = (
        follower.client_url,
        *(u for u in etcd_three.endpoints if u != follower.client_url),
    )
    s = store(endpoints, timeout=3.0)
    s.put("stopped/key", b"1")
    follower.sigstop()
    try:
        start = time.monotonic()
        s.put("stopped/key", b"2")
        assert time.monotonic() - start < 3.0
        # The answering endpoint is preferred now: the next calls do not try the stopped one.
        before = s.requests().get("range", 0)
        for _ in range(10):
            entry = s.get("stopped/key")
            assert entry is not None and entry.value == b"2"
        assert s.requests()["range"] - before == 10
    finally:
        follower.sigcont()


def test_cluster_fully_down_then_back(etcd_three: EtcdCluster) -> None:
    s = store(etcd_three.endpoints, timeout=1.0)
    s.put("down/key", b"kept")
    for member in etcd_three.members:
        member.kill9()
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        s.get("down/key")
    assert time.monotonic() - start < 1.5
    assert "no endpoint answered" in str(caught.value)
    for member in etcd_three.members:
        member.start()
    etcd_three.wait_ready()
    entry = store(etcd_three.endpoints, timeout=5.0).get("down/key")
    assert entry is not None and entry.value == b"kept"
