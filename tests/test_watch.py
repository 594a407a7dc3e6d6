"""The watcher when inotify cannot be had: it backs off and never wakes the daemon for nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from keysetd.wake import Wake
from keysetd.watch import Watcher

#: In a child: fill the fd table (RLIMIT_NOFILE lowered), start a Watcher, count wake-ups.
CHILD = """
import os, resource, sys, time
from pathlib import Path
from keysetd.wake import Wake
from keysetd.watch import Watcher

source = Path(sys.argv[1])
wake = Wake()
watcher = Watcher((source,), wake)  # its stop pipe is made now, before the table is full
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
hoard = []
while True:
    try:
        hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
watcher.start()  # inotify_init1 fails with EMFILE: nothing is watched
wakes, deadline = 0, time.monotonic() + 1.5  # the bug woke it every second
while time.monotonic() < deadline:
    if wake.wait(deadline - time.monotonic()):
        wakes += 1
        wake.clear()
for fd in hoard:
    os.close(fd)
watcher.stop()
print(wakes)
"""


def test_no_inotify_descriptor_means_no_wake_ups_and_one_warning(tmp_path: Path) -> None:
    source = tmp_path / "keyset.json"
    source.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(source)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == "0"  # before: one wake-up (a full fetch) every second
    assert done.stderr.count("watch_unavailable") <= 1


def test_a_directory_that_appears_later_is_watched_while_the_others_are(tmp_path: Path) -> None:
    """The state_dir is watched from the start; the source's directory comes later."""
    state = tmp_path / "state"
    state.mkdir()
    source = tmp_path / "not-yet" / "keyset.json"
    wake = Wake()
    watcher = Watcher((source, state / "revocations.json"), wake)
    watcher.start()
    try:
        assert not wake.wait(0.3)
        source.parent.mkdir()  # the directory appears: found on the re-arm backoff
        assert wake.wait(5), "the new directory was never watched"
        wake.clear()
        source.write_text("{}")  # and now its file's events arrive
        assert wake.wait(5), "no event from the directory watched late"
    finally:
        watcher.stop()
