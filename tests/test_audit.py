"""The hash-chained audit log: tampering is caught at the first broken line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keysetd.audit import GENESIS, AuditLog, Head, head_path, read_head
from keysetd.audit_read import Verdict, verify
from keysetd.formats import decode
from keysetd.plan import plan
from tests.conftest import Env, wait_for
from tests.keys import assert_clean, jwk, jwks_doc, secrets_of

COUNT = 20


def sha(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def make_log(path: Path, count: int = COUNT) -> list[bytes]:
    """``count`` events from a fixed clock; the file's lines, newlines included."""
    log = AuditLog(path, clock=lambda: 1_700_000_000.0)
    for number in range(1, count + 1):
        log.append("key_published", kid=f"kid-{number:02d}", fingerprint="ab" * 32)
    return lines_of(path)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def line(**entry: Any) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def assert_broken(path: Path, number: int, reason: str) -> Verdict:
    verdict = verify(path)
    assert not verdict.ok
    assert verdict.broken_line == number, verdict
    assert reason in verdict.reason, verdict
    return verdict


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def test_intact_chain(log_path: Path) -> None:
    lines = make_log(log_path)
    assert verify(log_path) == Verdict(COUNT)
    assert verify(log_path).ok
    entries = [json.loads(raw) for raw in lines]
    assert [e["seq"] for e in entries] == list(range(1, COUNT + 1))
    assert entries[0]["prev"] == GENESIS
    for before, after in zip(lines, entries[1:], strict=False):
        assert after["prev"] == sha(before)
    assert entries[4] == {
        "seq": 5,
        "time": 1_700_000_000.0,
        "event": "key_published",
        "kid": "kid-05",
        "fingerprint": "ab" * 32,
        "prev": sha(lines[3]),
    }


def test_no_log_and_empty_log(log_path: Path) -> None:
    assert verify(log_path).ok
    assert verify(log_path).lines == 0
    log_path.write_bytes(b"")
    assert verify(log_path) == Verdict(0)


@pytest.mark.parametrize("edited", [1, 7, COUNT - 1])
def test_edited_line_caught_by_the_next(log_path: Path, edited: int) -> None:
    lines = make_log(log_path)
    index = edited - 1
    lines[index] = lines[index].replace(b"kid-", b"KID-")
    write_lines(log_path, lines)
    # The edited line's own links still hold; the line after it no longer points to it.
    assert_broken(log_path, edited + 1, f"SHA-256 of line {edited} (line {edited} edited")


def test_edit_with_the_next_link_forged_is_caught_one_further(log_path: Path) -> None:
    lines = make_log(log_path)
    lines[6] = lines[6].replace(b"kid-07", b"kid-99")
    entry = json.loads(lines[7])
    entry["prev"] = sha(lines[6])
    lines[7] = line(**entry)
    write_lines(log_path, lines)
    assert_broken(log_path, 9, "SHA-256 of line 8")


def test_edited_last_line_caught_by_the_head(log_path: Path) -> None:
    lines = make_log(log_path)
    lines[-1] = lines[-1].replace(b"kid-20", b"kid-99")
    write_lines(log_path, lines)
    assert_broken(log_path, COUNT, f"SHA-256 of seq {COUNT} is not the one audit.head records")


def test_without_a_head_the_chain_alone_is_checked(log_path: Path) -> None:
    """A log from before audit.head existed still verifies, and says what it cannot check."""
    lines = make_log(log_path)
    head_path(log_path).unlink()
    assert verify(log_path) == Verdict(
        COUNT, None, "no audit.head: the end of the log is unchecked"
    )
    write_lines(log_path, lines[:-1])  # the limit of a chain without its head
    assert verify(log_path).ok


def test_head_records_the_last_line(log_path: Path) -> None:
    lines = make_log(log_path)
    assert read_head(head_path(log_path)) == Head(COUNT, sha(lines[-1]))
    assert head_path(log_path).name == "audit.head"
    AuditLog(log_path).append_all([{"event": "a"}, {"event": "b"}])
    assert read_head(head_path(log_path)) == Head(COUNT + 2, sha(lines_of(log_path)[-1]))


@pytest.mark.parametrize(
    ("kept", "missing"),
    [(COUNT - 1, f"seq {COUNT} missing"), (12, f"seq 13-{COUNT} missing"), (0, f"seq 1-{COUNT}")],
    ids=["last-line", "several", "emptied"],
)
def test_lines_cut_off_the_end(log_path: Path, kept: int, missing: str) -> None:
    lines = make_log(log_path)
    write_lines(log_path, lines[:kept])
    verdict = assert_broken(log_path, kept + 1, missing)
    ends = f"the log ends at seq {kept}" if kept else "the log is empty"
    assert verdict.reason.startswith(f"{ends} but audit.head records seq {COUNT}:"), verdict
    assert verdict.lines == kept


def test_log_deleted_with_its_head_left(log_path: Path) -> None:
    make_log(log_path)
    log_path.unlink()
    assert_broken(log_path, 1, f"there is no audit log but audit.head records seq {COUNT}")


def test_log_ahead_of_its_head_is_a_crash_not_a_cut(log_path: Path) -> None:
    """The head is written after the lines: a crash between leaves the log ahead."""
    make_log(log_path)
    head = head_path(log_path).read_bytes()
    AuditLog(log_path).append_all([{"event": "a"}, {"event": "b"}, {"event": "c"}])
    head_path(log_path).write_bytes(head)
    assert verify(log_path) == Verdict(COUNT + 3)


def test_edited_line_at_a_lagging_head_is_caught(log_path: Path) -> None:
    lines = make_log(log_path)
    head = head_path(log_path).read_bytes()
    AuditLog(log_path).append("later")
    head_path(log_path).write_bytes(head)
    after = lines_of(log_path)
    after[COUNT - 1] = after[COUNT - 1].replace(b"kid-20", b"kid-99")
    entry = json.loads(after[COUNT])
    entry["prev"] = sha(after[COUNT - 1])  # the next link forged as well
    after[COUNT] = line(**entry)
    write_lines(log_path, after)
    assert lines[:-1] == after[: COUNT - 1]
    assert_broken(log_path, COUNT, "audit.head records")


@pytest.mark.parametrize("kept", [COUNT - 1, 0], ids=["last-line", "emptied"])
def test_append_after_a_cut_keeps_the_gap_visible(log_path: Path, kept: int) -> None:
    """The daemon's next line must not paper over lines cut off the end."""
    lines = make_log(log_path)
    write_lines(log_path, lines[:kept])
    AuditLog(log_path).append("cycle_ok")
    appended = json.loads(lines_of(log_path)[-1])
    assert appended["seq"] == COUNT + 1
    assert appended["prev"] == sha(lines[-1])
    reason = "does not start here" if kept == 0 else f"SHA-256 of line {kept}"
    assert_broken(log_path, kept + 1, reason)


def test_append_after_an_edited_last_line_keeps_the_edit_visible(log_path: Path) -> None:
    lines = make_log(log_path)
    lines[-1] = lines[-1].replace(b"kid-20", b"kid-99")
    write_lines(log_path, lines)
    AuditLog(log_path).append("cycle_ok")
    assert json.loads(lines_of(log_path)[-1])["seq"] == COUNT + 1
    # Chained to the recorded head, not to the edited line: the next link shows the edit.
    assert_broken(log_path, COUNT + 1, f"line {COUNT} edited")


@pytest.mark.timeout(20)
def test_a_fifo_head_neither_hangs_verify_nor_append(log_path: Path) -> None:
    make_log(log_path)
    head_path(log_path).unlink()
    os.mkfifo(head_path(log_path))
    verdict = verify(log_path)
    assert verdict.ok and "not a regular file" in verdict.reason, verdict
    AuditLog(log_path).append("cycle_ok")
    assert read_head(head_path(log_path)) == Head(COUNT + 1, sha(lines_of(log_path)[-1]))


@pytest.mark.parametrize(
    "garbage",
    [b"", b"{", b'{"seq": 0, "sha256": "' + b"a" * 64 + b'"}', b'{"seq": 3, "sha256": "xyz"}'],
    ids=["empty", "torn", "seq-0", "short-hash"],
)
def test_unreadable_head(log_path: Path, garbage: bytes) -> None:
    """An empty head (a power cut before the filesystem wrote it) is no head, with a note."""
    lines = make_log(log_path)
    head_path(log_path).write_bytes(garbage)
    verdict = verify(log_path)
    assert verdict.ok, verdict
    assert "audit.head is unreadable" in verdict.reason
    with pytest.raises(ValueError):
        read_head(head_path(log_path))
    AuditLog(log_path).append("cycle_ok")  # appending records a good head again
    assert read_head(head_path(log_path)) == Head(COUNT + 1, sha(lines_of(log_path)[-1]))
    assert lines_of(log_path)[:COUNT] == lines


@pytest.mark.parametrize(
    ("deleted", "reason"),
    [
        (1, "prev is not the genesis value"),
        (10, "SHA-256 of line 9"),
        (COUNT - 1, f"SHA-256 of line {COUNT - 2}"),
    ],
    ids=["first", "middle", "last-but-one"],
)
def test_deleted_line(log_path: Path, deleted: int, reason: str) -> None:
    lines = make_log(log_path)
    del lines[deleted - 1]
    write_lines(log_path, lines)
    assert_broken(log_path, deleted, reason)


@pytest.mark.parametrize("first", [1, 5, COUNT - 1])
def test_swapped_lines(log_path: Path, first: int) -> None:
    lines = make_log(log_path)
    i = first - 1
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    write_lines(log_path, lines)
    assert_broken(log_path, first, "prev")


def test_inserted_line_with_forged_prev_and_wrong_seq(log_path: Path) -> None:
    lines = make_log(log_path)
    forged = line(seq=99, time=1.0, event="revoked", kid="kid-x", prev=sha(lines[6]))
    lines.insert(7, forged)
    write_lines(log_path, lines)
    assert_broken(log_path, 8, "seq 99, expected 8")


def test_inserted_line_with_forged_prev_and_seq(log_path: Path) -> None:
    lines = make_log(log_path)
    forged = line(seq=8, time=1.0, event="revoked", kid="kid-x", prev=sha(lines[6]))
    lines.insert(7, forged)
    write_lines(log_path, lines)
    # The forged line links up; the original line 8 (now 9) does not point to it.
    assert_broken(log_path, 9, "SHA-256 of line 8")


def test_appended_line_with_wrong_prev(log_path: Path) -> None:
    lines = make_log(log_path)
    lines.append(line(seq=COUNT + 1, time=1.0, event="revoked", kid="kid-x", prev=sha(lines[0])))
    write_lines(log_path, lines)
    assert_broken(log_path, COUNT + 1, f"SHA-256 of line {COUNT}")


@pytest.mark.parametrize("seq", [True, 21.0, "21", None], ids=["bool", "float", "str", "null"])
def test_appended_line_with_a_look_alike_seq(log_path: Path, seq: object) -> None:
    lines = make_log(log_path)
    lines.append(line(seq=seq, time=1.0, event="x", prev=sha(lines[-1])))
    write_lines(log_path, lines)
    assert_broken(log_path, COUNT + 1, f"expected {COUNT + 1}")


def test_torn_last_line(log_path: Path) -> None:
    lines = make_log(log_path)
    extra = line(seq=COUNT + 1, time=1.0, event="x", prev=sha(lines[-1]))
    write_lines(log_path, [*lines, extra[: len(extra) // 2]])
    assert_broken(log_path, COUNT + 1, "torn")


def test_last_line_without_its_newline(log_path: Path) -> None:
    lines = make_log(log_path)
    lines[-1] = lines[-1].rstrip(b"\n")
    write_lines(log_path, lines)
    assert_broken(log_path, COUNT, "torn")


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"not json at all\n", "not valid JSON"),
        (b"\n", "not valid JSON"),
        (b"\xff\xfe{}\n", "not valid JSON"),
        (b"[1, 2]\n", "not a JSON object"),
    ],
    ids=["text", "empty", "binary", "array"],
)
def test_non_json_line(log_path: Path, garbage: bytes, reason: str) -> None:
    lines = make_log(log_path)
    lines[11] = garbage
    write_lines(log_path, lines)
    assert_broken(log_path, 12, reason)


def test_append_repairs_a_torn_tail(log_path: Path) -> None:
    lines = make_log(log_path)
    torn = line(seq=COUNT + 1, time=1.0, event="x", prev=sha(lines[-1]))[:30]
    write_lines(log_path, [*lines, torn])
    assert_broken(log_path, COUNT + 1, "torn")
    AuditLog(log_path).append("cycle_ok", fingerprint="cd" * 32)
    assert verify(log_path) == Verdict(COUNT + 1)
    after = lines_of(log_path)
    assert after[:COUNT] == lines
    assert json.loads(after[-1])["event"] == "cycle_ok"
    assert torn not in log_path.read_bytes()


def test_append_repairs_a_torn_tail_longer_than_the_read_window(log_path: Path) -> None:
    """Regression: a torn tail over 64 KiB used to make append truncate the whole log."""
    lines = make_log(log_path)
    write_lines(log_path, [*lines, b'{"seq":21,"junk":"' + b"x" * 200_000])
    AuditLog(log_path).append("cycle_ok")
    assert verify(log_path) == Verdict(COUNT + 1)
    assert lines_of(log_path)[:COUNT] == lines


def test_append_after_a_line_longer_than_the_read_window(log_path: Path) -> None:
    log = AuditLog(log_path)
    log.append("refused", kids=[f"kid-{n:06d}" for n in range(20_000)])
    assert log_path.stat().st_size > 1 << 17
    log.append("cycle_ok")
    assert verify(log_path) == Verdict(2)
    assert json.loads(lines_of(log_path)[-1])["seq"] == 2


def test_append_after_a_line_with_a_null_seq(log_path: Path) -> None:
    """Regression: a last line with "seq": null made append raise TypeError."""
    lines = make_log(log_path)
    write_lines(log_path, [*lines, line(seq=None, time=1.0, event="x", prev=sha(lines[-1]))])
    AuditLog(log_path).append("cycle_ok")
    assert len(lines_of(log_path)) == COUNT + 2
    assert_broken(log_path, COUNT + 1, "seq None")


@pytest.mark.parametrize("name", ["seq", "time", "prev"])
def test_reserved_fields_refused(log_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AuditLog(log_path).append("x", **{name: 5})
    assert not log_path.exists()


def test_none_fields_left_out(log_path: Path) -> None:
    AuditLog(log_path, clock=lambda: 2.0).append("key_retired", kid="a", reason=None)
    assert json.loads(log_path.read_bytes()) == {
        "seq": 1,
        "time": 2.0,
        "event": "key_retired",
        "kid": "a",
        "prev": GENESIS,
    }


def test_file_mode_is_0600(log_path: Path) -> None:
    old = os.umask(0)
    try:
        make_log(log_path, 2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(head_path(log_path).stat().st_mode) == 0o600


WRITER = """
import sys, time
from pathlib import Path
from keysetd.audit import AuditLog
path, directory, name, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(directory / f"ready-{name}").touch()
deadline = time.monotonic() + 30
while not (directory / "go").exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.001)
log = AuditLog(path)
for i in range(count):
    log.append("tick", writer=name, i=i)
"""


def test_concurrent_appenders(tmp_path: Path) -> None:
    path, per_writer = tmp_path / "audit.jsonl", 200
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(tmp_path), name, str(per_writer)]
        )
        for name in ("a", "b")
    ]
    try:
        wait_for(
            lambda: all((tmp_path / f"ready-{n}").exists() for n in ("a", "b")),
            timeout=30,
            what="both writers ready",
        )
        (tmp_path / "go").touch()
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait(timeout=10)
    assert verify(path) == Verdict(2 * per_writer)
    entries = [json.loads(raw) for raw in lines_of(path)]
    assert [e["seq"] for e in entries] == list(range(1, 2 * per_writer + 1))
    for name in ("a", "b"):
        assert [e["i"] for e in entries if e["writer"] == name] == list(range(per_writer))


def test_no_key_material_in_the_log(log_path: Path) -> None:
    keys = [jwk("ES256", "es-a"), jwk("RS256", "rs-b"), jwk("HS256", "hs-c"), jwk("EdDSA", "ed")]
    keyset = decode(jwks_doc(*keys, active="es-a"))
    planned = plan(keyset)
    log = AuditLog(log_path)
    log.append(
        "published",
        fingerprint=planned.fingerprint,
        active_kid=planned.active_kid,
        kids=list(planned.published_kids),
        outputs=["jwks", "signer"],
    )
    # Even a careless caller passing key objects gets their safe repr, not material.
    log.append("careless", key=keyset.get("rs-b"), keyset=keyset, keys=list(keyset))
    assert verify(log_path) == Verdict(2)
    text = log_path.read_text()
    first = json.loads(lines_of(log_path)[0])
    assert set(first) == {
        "seq",
        "time",
        "event",
        "fingerprint",
        "active_kid",
        "kids",
        "outputs",
    } | {"prev"}
    secrets = secrets_of(*keys)
    assert len(secrets) == 9
    assert_clean(text, secrets, "the audit log")


def signer_holds(env: Env, kid: bytes) -> bool:
    try:
        return kid in env.signer.read_bytes()
    except FileNotFoundError:
        return False


def test_cli_verify_fails_when_a_daemon_log_is_cut(env: Env) -> None:
    """Through ``keysetd run`` and ``keysetd audit verify``: a cut log is exit 1, naming the seq."""
    env.write_source(jwks_doc(jwk("ES256", "es-a"), active="es-a"))
    env.config()
    proc = env.start()
    wait_for(lambda: signer_holds(env, b"es-a"), what="the first publish")
    env.write_source(jwks_doc(jwk("ES256", "es-a2"), active="es-a2"))
    wait_for(lambda: signer_holds(env, b"es-a2"), what="the second publish")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    path = env.state / "audit.jsonl"
    lines = lines_of(path)
    count = len(lines)
    assert read_head(head_path(path)) == Head(count, sha(lines[-1]))

    def audit_verify() -> subprocess.CompletedProcess[str]:
        return env.keysetd("audit", "verify", "--config", str(env.config_path))

    intact = audit_verify()
    assert intact.returncode == 0
    assert intact.stdout.splitlines() == [
        f"audit log intact: {count} line(s)",
        "unkeyed chain (SHA-256; no [state] encryption: a full rewrite is undetectable)",
    ]
    write_lines(path, lines[:-1])
    cut = audit_verify()
    assert cut.returncode == 1
    assert f"broken at line {count}:" in cut.stdout and f"seq {count} missing" in cut.stdout
    path.write_bytes(b"")
    emptied = audit_verify()
    assert emptied.returncode == 1 and f"seq 1-{count} missing" in emptied.stdout

    # The daemon's next lines chain on from the recorded head: the cut stays visible.
    write_lines(path, lines[:-1])
    env.source.unlink()  # a failing cycle writes an audit line
    env.start()
    wait_for(lambda: len(lines_of(path)) > count - 1, what="the restarted daemon's audit line")
    after = audit_verify()
    assert after.returncode == 1, after.stdout
    assert f"SHA-256 of line {count - 1}" in after.stdout
