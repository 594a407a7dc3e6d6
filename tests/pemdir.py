"""What a pem output directory shows its consumers, and a check that it is one whole set."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key


def visible(directory: Path) -> dict[str, bytes]:
    """keysetd's ``*.pem`` and ``active.key`` names a consumer can open now, with their bytes.

    keysetd's are the links into ``..data``; a link whose version is not (or no longer)
    switched in dangles: it is absent. Files of other programs are left out.
    """
    shown: dict[str, bytes] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_symlink() or os.readlink(entry) != f"..data/{entry.name}":
            continue
        try:
            shown[entry.name] = entry.read_bytes()
        except FileNotFoundError:
            continue
    return shown


def pem_kids(directory: Path) -> set[str]:
    """The kids whose ``<kid>.pem`` a consumer can open now."""
    return {name.removesuffix(".pem") for name in visible(directory) if name.endswith(".pem")}


def check_pem_dir(directory: Path) -> set[str]:
    """Every name a consumer opens is a link into ``..data`` and they are exactly its files
    (old set or new, never a mix); each public key loads. Returns the kids."""
    shown = visible(directory)
    data = directory / "..data"
    if not data.exists():
        assert shown == {}, sorted(shown)
        return set()
    assert sorted(shown) == sorted(p.name for p in data.iterdir()), (
        sorted(shown),
        os.readlink(data),
    )
    for name, content in shown.items():
        if name.endswith(".pem"):
            load_pem_public_key(content)
    return pem_kids(directory)
