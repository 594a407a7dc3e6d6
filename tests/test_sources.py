"""Built-in sources on the real filesystem, real processes and the real environment."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from keysetd.errors import SourceError
from keysetd.registry import load
from keysetd.sources.command import CommandSource, CommandSourceConfig
from keysetd.sources.env import EnvSource, EnvSourceConfig
from keysetd.sources.file import READ_LIMIT, FileSource, FileSourceConfig
from keysetd.tables import TableError

PY = sys.executable
DOC = b'{"active_kid": "k1", "keys": {"k1": "0123456789abcdef0123456789abcdef"}}'
PEM = (
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIIdlw2oBKfQ5Ow3e1nM2b4Yz1aP7Lr0d1QyGZnJ1oQkaoAoGCCqGSM49\n"
    "-----END EC PRIVATE KEY-----"
)
SECRET = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="


def file_source(path: Path) -> FileSource:
    return FileSource(FileSourceConfig(type="file", path=path))


def command_source(argv: list[str], **kw: object) -> CommandSource:
    return CommandSource(CommandSourceConfig.parse({"type": "command", "argv": argv, **kw}))


def test_entry_points_resolve_to_these_classes() -> None:
    assert load("keysetd.sources", "file") is FileSource
    assert load("keysetd.sources", "command") is CommandSource
    assert load("keysetd.sources", "env") is EnvSource


# --- file ---------------------------------------------------------------------


def test_file_reads_document(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    path.write_bytes(DOC)
    source = file_source(path)
    snap = source.fetch()
    assert snap.data == DOC
    assert snap.origin == source.describe() == f"file:{path}"
    assert snap.format is None
    assert source.watch_paths() == (path,)


def test_file_follows_configmap_symlinks(tmp_path: Path) -> None:
    # The kubelet layout: keyset.json -> ..data/keyset.json, ..data -> ..<timestamp>
    for stamp, body in (("..2026_01", b"first"), ("..2026_02", b"second")):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / "keyset.json").write_bytes(body)
    (tmp_path / "..data").symlink_to("..2026_01")
    (tmp_path / "keyset.json").symlink_to("..data/keyset.json")
    source = file_source(tmp_path / "keyset.json")
    assert source.fetch().data == b"first"
    (tmp_path / "..data_tmp").symlink_to("..2026_02")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert source.fetch().data == b"second"


def test_file_missing_names_path_and_errno(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(SourceError, match="No such file or directory") as info:
        file_source(path).fetch()
    assert str(path) in str(info.value)
    assert info.value.source == f"file:{path}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    path.write_bytes(DOC)
    path.chmod(0)
    with pytest.raises(SourceError, match="Permission denied"):
        file_source(path).fetch()


def test_file_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "keyset.json"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def fetch() -> None:
        try:
            file_source(fifo).fetch()
        except SourceError as exc:
            result.append(exc)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():
        # Unblock the stuck reader so the test run can finish, then fail.
        with open(fifo, "wb"):
            pass
        pytest.fail("fetch hung on a FIFO")
    assert len(result) == 1 and "FIFO" in str(result[0])


def test_file_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="directory"):
        file_source(tmp_path).fetch()


def test_file_oversized_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: no disk used
    assert len(file_source(path).fetch().data) == READ_LIMIT == 16 * 1024 * 1024 + 1


def test_file_config_rejects_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="paht"):
        FileSourceConfig.parse({"type": "file", "paht": str(tmp_path)})


# --- command ------------------------------------------------------------------


def test_command_returns_stdout() -> None:
    source = command_source([PY, "-c", f"import sys; sys.stdout.buffer.write({DOC!r})"])
    snap = source.fetch()
    assert snap.data == DOC
    assert snap.origin == source.describe() == f"command:{PY}"
    assert snap.format is None


def test_command_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", "inherited-secret")
    monkeypatch.setenv("HOME", "/home/keysetd")
    source = command_source(
        [PY, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env={"KMS_REGION": "eu-1"},
    )
    env = json.loads(source.fetch().data)
    env.pop("LC_CTYPE", None)  # Python may add it for the C locale coercion
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/home/keysetd",
        "KMS_REGION": "eu-1",
    }


def test_command_50mib_output_is_cut_quickly() -> None:
    script = "import sys; sys.stdout.buffer.write(b'a' * (50 * 1024 * 1024))"
    start = time.monotonic()
    with pytest.raises(SourceError, match=f"exceeds {READ_LIMIT} bytes"):
        command_source([PY, "-c", script]).fetch()
    assert time.monotonic() - start < 5


def test_command_hang_is_killed_at_timeout() -> None:
    start = time.monotonic()
    source = command_source([PY, "-c", "import time; time.sleep(100)"], timeout="300ms")
    with pytest.raises(SourceError, match=r"timed out after 0\.3s \(process group killed\)"):
        source.fetch()
    assert time.monotonic() - start < 3


def test_command_failure_has_exit_code_and_redacted_stderr() -> None:
    script = f"import sys; sys.stderr.write({PEM!r} + '\\nsecret={SECRET}\\n'); sys.exit(7)"
    with pytest.raises(SourceError) as info:
        command_source([PY, "-c", script]).fetch()
    text = str(info.value)
    assert "exited with status 7" in text
    assert "[redacted]" in text
    assert SECRET not in text
    assert "MHcCAQEE" not in text
    assert "BEGIN EC PRIVATE KEY" not in text


def test_command_missing_program() -> None:
    with pytest.raises(SourceError, match="command:/nonexistent/kms: cannot start: No such file"):
        command_source(["/nonexistent/kms"]).fetch()


@pytest.mark.parametrize(
    "table",
    [
        {"argv": []},
        {"argv": [""]},
        {"argv": ["x"], "env": {"BAD=NAME": "v"}},
        {"argv": ["x"], "max_output": 0},
        {"argv": ["x"], "shell": True},
    ],
)
def test_command_config_rejects(table: dict[str, object]) -> None:
    with pytest.raises(TableError):
        CommandSourceConfig.parse({"type": "command", **table})


def test_command_config_errors_do_not_echo_env_values() -> None:
    with pytest.raises(TableError) as info:
        CommandSourceConfig.parse(
            {"type": "command", "argv": ["x"], "env": {"TOKEN": "s3cr3t-token\0"}}
        )
    assert "s3cr3t-token" not in str(info.value)


# --- env ----------------------------------------------------------------------


def env_source(**kw: object) -> EnvSource:
    return EnvSource(EnvSourceConfig.parse({"type": "env", **kw}))


def test_env_keys_map_becomes_rgs_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", '{"k1": "old-secret", "k2": "new-secret"}')
    monkeypatch.setenv("RGS_JWT_ACTIVE_KID", "k2")
    source = env_source()
    snap = source.fetch()
    assert snap.format == "rgs"
    assert snap.origin == source.describe() == "env:RGS_JWT_KEYSET"
    assert json.loads(snap.data) == {
        "active_kid": "k2",
        "keys": {"k1": "old-secret", "k2": "new-secret"},
    }
    assert source.fetch().data == snap.data  # byte-stable


@pytest.mark.parametrize("active", [None, ""])
def test_env_without_active_kid(monkeypatch: pytest.MonkeyPatch, active: str | None) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", '{"k1": "a-secret"}')
    if active is None:
        monkeypatch.delenv("RGS_JWT_ACTIVE_KID", raising=False)
    else:
        monkeypatch.setenv("RGS_JWT_ACTIVE_KID", active)
    assert json.loads(env_source().fetch().data) == {"keys": {"k1": "a-secret"}}


def test_env_active_kid_var_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEYS", '{"k1": "a-secret"}')
    monkeypatch.setenv("RGS_JWT_ACTIVE_KID", "k1")
    snap = env_source(var="MY_KEYS", active_kid_var=None).fetch()
    assert json.loads(snap.data) == {"keys": {"k1": "a-secret"}}
    assert snap.origin == "env:MY_KEYS"


@pytest.mark.parametrize(
    "value",
    [
        '{"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]}',  # a JWKS: not a keys map
        "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
        "not json at all",
    ],
)
def test_env_other_values_pass_through(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", value)
    snap = env_source().fetch()
    assert snap.data == value.encode()
    assert snap.format is None


def test_env_missing_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RGS_JWT_KEYSET", raising=False)
    with pytest.raises(SourceError, match="environment variable RGS_JWT_KEYSET is not set"):
        env_source().fetch()


def test_env_empty_is_an_error_without_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RGS_JWT_KEYSET", "   ")
    with pytest.raises(SourceError, match="is empty"):
        env_source().fetch()


def test_env_reads_at_fetch_time(monkeypatch: pytest.MonkeyPatch) -> None:
    source = env_source()
    monkeypatch.setenv("RGS_JWT_KEYSET", '{"k1": "first-secret"}')
    first = source.fetch().data
    monkeypatch.setenv("RGS_JWT_KEYSET", '{"k1": "second-secret"}')
    assert source.fetch().data != first
