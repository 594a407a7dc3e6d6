"""keysetd beside its peer: OpenBao Agent (``bao agent``) rendering one template.

The agent is what a platform team would run instead of keysetd: it logs in to a real
``bao server -dev`` (token_file auto-auth), renders the transit key's public keys into a
file with one template, and keeps running. Measured the same way as keysetd's
footprint: from just before ``Popen`` to the rendered file existing, then VmRSS about
one second later. The targets compare the two in one run: keysetd's VmRSS at most half
the agent's, keysetd's start at most 1.5 times the agent's.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import footprint
from benchmarks._common import (
    Row,
    Workspace,
    binary,
    document,
    key_pool,
    proc_status,
    wait_for,
)
from benchmarks.sources import _bao

__all__ = ["run"]

TARGET_RSS_RATIO = 0.5
TARGET_START_RATIO = 1.5
SETTLE_S = footprint.SETTLE_S

AGENT_CONFIG = """
vault {{
  address = "{address}"
}}
auto_auth {{
  method "token_file" {{
    config = {{
      token_file_path = "{token_file}"
    }}
  }}
}}
template {{
  contents = "{template}"
  destination = "{destination}"
}}
"""
#: The transit key's versions and public keys, as JSON (HCL string: quotes escaped).
TEMPLATE = '{{ with secret \\"transit/keys/jwt-ec\\" }}{{ .Data.keys | toJSON }}{{ end }}'


def _agent_once(root: Path, address: str, token: str) -> tuple[float, int]:
    """(seconds to the first rendered file, VmRSS kB) of one fresh ``bao agent``."""
    root.mkdir()
    token_file = root / "token"
    token_file.write_text(token)
    destination = root / "keys.json"
    config = root / "agent.hcl"
    config.write_text(
        AGENT_CONFIG.format(
            address=address, token_file=token_file, destination=destination, template=TEMPLATE
        )
    )
    with (root / "agent.log").open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [binary("bao"), "agent", f"-config={config}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: destination.exists() and destination.stat().st_size > 0,
            30,
            "the agent's first render",
            interval=0.005,
        )
        elapsed = time.perf_counter() - started
        time.sleep(SETTLE_S)
        if proc.poll() is not None:
            raise RuntimeError(f"bao agent exited with {proc.returncode}")
        rss = proc_status(proc.pid)["VmRSS"]
    finally:
        Workspace.stop(proc)
    return elapsed, rss


def run(starts: int = 5) -> list[Row]:
    keys = key_pool(("EC", "OKP", "RSA"), prefix="peer")
    data = document([(k, True) for k in keys], keys[0].kid)
    with tempfile.TemporaryDirectory(prefix="keysetd-bench-peer-") as tmp:
        root = Path(tmp)
        with _bao(root / "bao") as (address, token):
            agent = [_agent_once(root / f"agent-{i}", address, token) for i in range(starts)]
    ours = [footprint.start_once(data) for _ in range(starts)]
    agent_start = statistics.median(a[0] for a in agent)
    agent_rss = statistics.median(a[1] for a in agent) / 1024
    our_start = statistics.median(o[0] for o in ours)
    our_rss = statistics.median(o[1] for o in ours) / 1024
    rss_ratio, start_ratio = our_rss / agent_rss, our_start / agent_start
    return [
        Row("bao agent, one template: VmRSS (median)", f"{agent_rss:.1f} MB"),
        Row("bao agent: start to first render (median)", f"{agent_start * 1000:.0f} ms"),
        Row("keysetd, 4 outputs: VmRSS (median)", f"{our_rss:.1f} MB"),
        Row("keysetd: start to first commit (median)", f"{our_start * 1000:.0f} ms"),
        Row(
            "keysetd VmRSS / bao agent VmRSS",
            f"{rss_ratio:.2f}",
            f"<= {TARGET_RSS_RATIO:g}",
            rss_ratio <= TARGET_RSS_RATIO,
        ),
        Row(
            "keysetd start / bao agent start",
            f"{start_ratio:.2f}",
            f"<= {TARGET_START_RATIO:g}",
            start_ratio <= TARGET_START_RATIO,
        ),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row.name:45} {row.figure:>12}  {row.target:>12}  {row.verdict}")
