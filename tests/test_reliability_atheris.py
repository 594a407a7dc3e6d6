"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer), in ``make stress`` only.

Run as a script it is the fuzz target: the first byte picks the format, the rest
is the document; anything but a Keyset or an InvalidKeyset is a crash. As a test
it runs that script for ``ATHERIS_RUNS`` inputs (skipped when unset, as in
``make test``, or when atheris is not installed), seeded with tests/vectors.
keysetd is imported only inside the script's instrumented import, not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = int(os.environ.get("ATHERIS_RUNS", "0"))
MAX_SECONDS = int(os.environ.get("ATHERIS_SECONDS", "600"))
FORMATS = ("auto", "jwks", "rgs", "pem")


@pytest.mark.timeout(MAX_SECONDS + 120)
def test_atheris_decoders(tmp_path: Path) -> None:
    if RUNS <= 0:
        pytest.skip("coverage-guided fuzzing runs in `make stress` (set ATHERIS_RUNS)")
    pytest.importorskip("atheris", reason="atheris is not installed (make stress installs it)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, vector in enumerate(sorted((Path(__file__).parent / "vectors").rglob("*"))):
        if vector.is_file() and vector.stat().st_size < 64 * 1024:
            data = vector.read_bytes()
            for fmt_index in range(len(FORMATS)):
                (corpus / f"seed-{index}-{fmt_index}").write_bytes(bytes([fmt_index]) + data)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            f"-runs={RUNS}",
            f"-max_total_time={MAX_SECONDS}",
            "-max_len=8192",
            "-timeout=10",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
        check=False,
    )
    tail = result.stderr[-4000:]
    print(f"\natheris: {tail.strip().splitlines()[-1] if tail.strip() else ''}")
    crashes = sorted(p.name for p in artifacts.iterdir())
    if crashes:
        kept = Path(os.environ.get("ATHERIS_ARTIFACTS", "/tmp/keysetd-atheris"))
        shutil.copytree(artifacts, kept, dirs_exist_ok=True)
        pytest.fail(f"atheris found {crashes} (copied to {kept}):\n{tail}")
    assert result.returncode == 0, tail


def _main() -> None:
    import atheris

    with atheris.instrument_imports(include=["keysetd"]):
        from keysetd.errors import InvalidKeyset
        from keysetd.formats import decode

    def one_input(data: bytes) -> None:
        if not data:
            return
        fmt = FORMATS[data[0] % len(FORMATS)]
        try:
            decode(data[1:], fmt)
        except InvalidKeyset as exc:
            assert exc.problems
            str(exc)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _main()
