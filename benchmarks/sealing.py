"""What ``[state] encryption`` costs per state write: plaintext against sealed, in process.

Each write is ``StateStore.save_signer`` of a signer keyset (four EC keys and one RSA
key, ~5 KB), fsync included, as a cycle writes it; sealed writes make a fresh data key
each (AES-256-GCM) and wrap it with the provider. ``key_file`` wraps locally; with the
``bao`` binary installed, ``vault_transit`` wraps over loopback against a
``bao server -dev`` started here (one ``transit/encrypt`` per write), and an open with
the data-key cache off is one ``transit/decrypt``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks._common import Row, document, key_pool, percentile
from keysetd.keyfile import KeyFileConfig, KeyFileProvider
from keysetd.sealing import Sealer
from keysetd.state import StateStore

__all__ = ["run"]

WRITES = 200
#: Targets: what one sealed write may add to a plaintext one, at the median.
KEY_FILE_TARGET_MS = 2.0
TRANSIT_TARGET_MS = 20.0


def _document() -> bytes:
    keys = key_pool(["EC", "EC", "EC", "EC", "RSA"])
    return document([(key, True) for key in keys], keys[0].kid)


def _median_ms(store: StateStore, document: bytes) -> float:
    spent = []
    for _ in range(WRITES):
        start = time.perf_counter()
        store.save_signer(document)
        spent.append(time.perf_counter() - start)
    return percentile(spent, 50) * 1000


def _open_ms(store: StateStore) -> float:
    spent = []
    for _ in range(WRITES // 4):
        if store.sealer is not None:
            store.sealer.forget()  # every open unwraps: the cost after cache_ttl
        start = time.perf_counter()
        store.load_signer()
        spent.append(time.perf_counter() - start)
    return percentile(spent, 50) * 1000


@contextmanager
def _bao() -> Iterator[str | None]:
    """A ``bao server -dev`` with transit and key ``bench`` on a free port, or None."""
    binary = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    if not os.path.exists(binary):
        yield None
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="bench-bao-")
    address = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            binary,
            "server",
            "-dev",
            "-dev-root-token-id=bench",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": home},
    )

    def api(path: str, body: dict[str, str]) -> None:
        request = urllib.request.Request(
            f"{address}/v1/{path}",
            data=json.dumps(body).encode(),
            headers={"X-Vault-Token": "bench"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                api("sys/mounts/transit", {"type": "transit"})
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        api("transit/keys/bench", {"type": "aes256-gcm96"})
        token = Path(home) / "token"
        token.write_text("bench")
        yield f"{address} {token}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def _measure(name: str, make: Callable[[Path], Sealer | None], document: bytes) -> float:
    with tempfile.TemporaryDirectory(prefix=f"bench-seal-{name}-") as directory:
        store = StateStore(Path(directory), make(Path(directory)))
        store.save_signer(document)  # warm up: imports, the first login
        return _median_ms(store, document)


def run() -> list[Row]:
    document = _document()

    def key_file(directory: Path) -> Sealer:
        key = directory / "state.key"
        key.write_text(base64.b64encode(os.urandom(32)).decode())
        return Sealer(KeyFileProvider(KeyFileConfig(type="key_file", key_file=key)))

    plain = _measure("plain", lambda _d: None, document)
    sealed = _measure("key_file", key_file, document)
    rows = [
        Row("plaintext state write (p50)", f"{plain:.2f} ms"),
        Row(
            "key_file sealed write, added (p50)",
            f"{sealed - plain:+.2f} ms",
            f"<= {KEY_FILE_TARGET_MS:g} ms",
            sealed - plain <= KEY_FILE_TARGET_MS,
        ),
    ]
    with _bao() as vault:
        if vault is None:
            rows.append(Row("vault_transit (no bao binary)", "skipped"))
            return rows
        from keysetd_vault.keyprovider import VaultTransitKeyConfig, VaultTransitKeyProvider

        address, token = vault.split(" ")

        def transit(_directory: Path) -> Sealer:
            config = VaultTransitKeyConfig.parse(
                {"type": "vault_transit", "address": address, "key": "bench", "token_file": token}
            )
            return Sealer(VaultTransitKeyProvider(config))

        over = _measure("transit", transit, document) - plain
        with tempfile.TemporaryDirectory(prefix="bench-seal-open-") as directory:
            store = StateStore(Path(directory), transit(Path(directory)))
            store.save_signer(document)
            opened = _open_ms(store)
        rows += [
            Row(
                "vault_transit sealed write, added (p50)",
                f"{over:+.2f} ms",
                f"<= {TRANSIT_TARGET_MS:g} ms",
                over <= TRANSIT_TARGET_MS,
            ),
            Row("vault_transit open, cache cold (p50)", f"{opened:.2f} ms"),
        ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:50} {row.figure:>10} {row.target:>10} {row.verdict}")
