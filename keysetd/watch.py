"""Wake the daemon when a source file changes: inotify on Linux, watchfiles elsewhere.

watchfiles' loop wakes every ``step`` to poll (3% of a core idle at 1 ms, 0.4%
at 50 ms, and ``step`` adds to every propagation), so on Linux keysetd blocks
on an inotify descriptor (inotify_simple) instead: zero idle CPU and
sub-millisecond wake-ups. The watch is armed before ``start()`` returns, so a
change made right after the first fetch is never missed. Directories are
watched, not files, so atomic renames, deletion and re-creation, and the
Kubernetes ``..data`` symlink swap all count; in-place writes count when the
writer closes the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from pathlib import Path

from keysetd.log import event
from keysetd.wake import Wake

try:
    from inotify_simple import INotify, flags
except ImportError:  # not Linux: the watchfiles loop
    INotify = None

__all__ = ["Watcher"]

#: A burst of events (a rename, a ``..data`` swap) ends when none follows for this long.
_QUIET_SECONDS = 0.001  # poll() counts whole milliseconds
_MAX_QUIET_ROUNDS = 50
_REARM_SECONDS = 1.0
_REARM_MAX_SECONDS = 60.0
#: Kubernetes ConfigMap/Secret volumes swap this symlink to publish a new version.
_K8S_DATA = "..data"


def _inotify() -> INotify | None:
    """A non-blocking, close-on-exec inotify descriptor; None where the system has none."""
    if INotify is None:
        return None
    try:
        return INotify(nonblocking=True)
    except (OSError, AttributeError):  # no inotify_init1 in this libc
        return None


def _has_inotify() -> bool:
    probe = _inotify()
    if probe is None:
        return False
    probe.close()  # each arming opens its own descriptor
    return True


def _watch_dirs(paths: tuple[Path, ...]) -> dict[Path, set[str]]:
    """Each directory to watch with the entry names in it that matter."""
    dirs: dict[Path, set[str]] = {}
    for path in paths:
        for candidate in {path.absolute(), path.resolve()}:
            dirs.setdefault(candidate.parent, set()).update({candidate.name, _K8S_DATA})
    return dirs


_MASK = (
    flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    if INotify is not None
    else 0
)
_GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED if INotify is not None else 0
#: The kernel dropped events: anything may have changed.
_OVERFLOW = flags.Q_OVERFLOW if INotify is not None else 0


class Watcher:
    """Sets ``wake`` when an entry that matters changes in a watched directory."""

    def __init__(self, paths: tuple[Path, ...], wake: Wake) -> None:
        self.targets = _watch_dirs(paths)
        self.wake = wake
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._linux = _has_inotify()
        self._inotify: INotify | None = None
        self._wds: dict[int, Path] = {}
        self._warned: set[Path] = set()
        self._unavailable = False
        self._thread = threading.Thread(target=self._run, name="keysetd-watch", daemon=True)

    def start(self) -> None:
        """Arm the watch (inotify: before returning) and start the waiting thread."""
        if not self.targets:
            return
        if self._linux:
            self._arm()
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._disarm()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- inotify ------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._inotify = _inotify()
        if self._inotify is None:
            if not self._unavailable:
                self._unavailable = True
                event(
                    "watch_unavailable",
                    logging.WARNING,
                    error="no inotify descriptor (fs.inotify.max_user_instances used up?); "
                    "the source is re-read every refresh_interval until one can be had",
                )
            return
        self._unavailable = False
        for directory in self.targets:
            try:
                wd = self._inotify.add_watch(directory, _MASK)
            except OSError as exc:
                if directory not in self._warned:
                    self._warned.add(directory)
                    event(
                        "watch_unavailable",
                        logging.WARNING,
                        path=str(directory),
                        error=exc.strerror or str(exc),
                    )
                continue
            self._wds[wd] = directory
            self._warned.discard(directory)

    def _add_missing(self) -> bool:
        """Watch the directories not watched yet; True when one of them is now."""
        assert self._inotify is not None
        watched = set(self._wds.values())
        added = False
        for directory in self.targets:
            if directory in watched:
                continue
            try:
                wd = self._inotify.add_watch(directory, _MASK)
            except OSError:
                continue
            self._wds[wd] = directory
            self._warned.discard(directory)
            added = True
        return added

    def _disarm(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds.clear()

    def _matters(self, wd: int, name: str) -> bool:
        directory = self._wds.get(wd)
        return directory is not None and name in self.targets[directory]

    def _relevant(self, events: list[tuple[int, int, int, str]]) -> tuple[bool, bool]:
        """(something we watch changed, a watched directory itself went away)."""
        changed = gone = False
        for wd, mask, _cookie, name in events:
            if mask & _GONE:
                gone = changed = True
            elif mask & _OVERFLOW or self._matters(wd, name):  # overflow: events were dropped
                changed = True
        return changed, gone

    def _run(self) -> None:
        if not self._linux:
            self._run_watchfiles()
            return
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        rearm_after = _REARM_SECONDS
        while True:
            inotify = self._inotify
            if inotify is None or not self._wds:
                # Nothing watched (a directory went away, or no inotify descriptor could be
                # had): try again, less often each time it fails; wake the daemon only when
                # a watch is back, since whatever changed meanwhile was missed.
                if poller.poll(rearm_after * 1000):
                    return
                self._arm()
                if self._wds:
                    rearm_after = _REARM_SECONDS
                    self.wake.set()
                else:
                    rearm_after = min(_REARM_MAX_SECONDS, rearm_after * 2)
                continue
            poller.register(inotify.fileno(), select.POLLIN)
            # A directory that does not exist yet (or went away) is looked for again on a
            # backoff, while the others stay watched.
            missing = len(self._wds) < len(self.targets)
            ready = {fd for fd, _ in poller.poll(rearm_after * 1000 if missing else None)}
            if self._stop_r in ready:
                return
            if not ready:
                if self._add_missing():
                    rearm_after = _REARM_SECONDS
                    self.wake.set()
                else:
                    rearm_after = min(_REARM_MAX_SECONDS, rearm_after * 2)
                continue
            events = list(inotify.read(timeout=0))
            # A writer's events come in bursts: let the burst finish (bounded), then wake once.
            for _ in range(_MAX_QUIET_ROUNDS):
                more = {fd for fd, _ in poller.poll(_QUIET_SECONDS * 1000)}
                if not more:
                    break
                if self._stop_r in more:
                    return
                events += inotify.read(timeout=0)
            changed, gone = self._relevant(events)
            if changed:
                self.wake.set()
            if gone:
                poller.unregister(inotify.fileno())
                self._disarm()

    # -- portable fallback ----------------------------------------------------

    def _run_watchfiles(self) -> None:
        from watchfiles import watch

        stop = threading.Event()

        def wait_stop() -> None:
            select.select([self._stop_r], [], [])
            stop.set()

        threading.Thread(target=wait_stop, name="keysetd-watch-stop", daemon=True).start()
        while not stop.is_set():
            existing = [str(d) for d in self.targets if d.is_dir()]
            try:
                if existing:
                    for _changes in watch(
                        *existing,
                        watch_filter=None,
                        debounce=50,
                        step=10,
                        recursive=False,
                        stop_event=stop,
                        ignore_permission_denied=True,
                    ):
                        self.wake.set()
            except (OSError, RuntimeError) as exc:
                event("watch_failed", logging.WARNING, error=str(exc))
            self.wake.set()
            stop.wait(_REARM_SECONDS)
