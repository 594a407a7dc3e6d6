"""The atomic writer on the real filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keysetd.atomic import clean_temp_files, read_current, remove_file, write_atomic


def test_write_replaces_with_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new bytes", 0o640)
    assert target.read_bytes() == b"new bytes"
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_replaces_the_inode_so_open_readers_keep_the_old_bytes(tmp_path: Path) -> None:
    target = tmp_path / "jwks.json"
    target.write_bytes(b"old")
    with target.open("rb") as reader:
        write_atomic(target, b"new")
        assert reader.read() == b"old"
    assert target.read_bytes() == b"new"


def test_symlink_at_target_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"do not touch")
    target = tmp_path / "out.json"
    target.symlink_to(elsewhere)
    write_atomic(target, b"new")
    assert elsewhere.read_bytes() == b"do not touch"
    assert not target.is_symlink()
    assert target.read_bytes() == b"new"
    assert read_current(target, 100) == b"new"


def test_missing_parent_raises_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "out.json", b"x")
    assert list(tmp_path.iterdir()) == []


def test_read_only_directory_fails_cleanly(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomic(target, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert target.read_bytes() == b"old"


def test_clean_temp_files_removes_only_ours(tmp_path: Path) -> None:
    ours = tmp_path / ".jwks.json.keysetd-0123456789ab.keysetd.tmp"
    ours.write_bytes(b"partial")
    theirs = tmp_path / ".other.tmp"
    theirs.write_bytes(b"keep")
    assert clean_temp_files(tmp_path) == [ours]
    assert theirs.exists()


def test_remove_file(tmp_path: Path) -> None:
    target = tmp_path / "a.pem"
    target.write_bytes(b"x")
    assert remove_file(target) is True
    assert remove_file(target) is False


def test_read_current_refuses_symlink_and_bounds_size(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"0123456789")
    assert read_current(target, 4) == b"01234"
    link = tmp_path / "l"
    link.symlink_to(target)
    assert read_current(link, 100) is None
    assert read_current(tmp_path / "missing", 100) is None
