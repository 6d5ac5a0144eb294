"""Per-cell locks in the results folder: two runners never train the same cell at once, and a
lock left behind by a crashed runner is recognised as stale and taken over.

A lock is a small JSON file ``<results>/.locks/<cell path>.lock`` naming its holder: a random
token, pid, host, the process's start identity (boot id + start tick, so a recycled pid is not
mistaken for the holder), the SLURM job id if any, and the time it was taken. The holder
refreshes the file's modification time every ``lock_stale_s / 10`` seconds (a heartbeat thread).

A lock is stale when
- its host is this host and its process is gone (or the pid now belongs to another process), or
- its host is another host and its heartbeat is older than ``lock_stale_s``, or
- it was taken by an earlier run of the same one-cell cluster job (requeued after pre-emption).

Taking, breaking and releasing locks happen under a short ``flock`` on ``.locks/.mutex``, so
two runners that find the same stale lock cannot both take it. (On a shared file system the
folder must support POSIX locks, as NFSv4 and Lustre mounted with ``flock`` do.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from mtlbench.core.files import atomic_write_text, remove_temp_files

LOCK_DIR = ".locks"
_HELD: set["CellLock"] = set()


def lock_path(results: Path, relpath: Path) -> Path:
    return Path(results) / LOCK_DIR / relpath.with_suffix(".lock")


def process_identity(pid: int) -> str | None:
    """``boot_id:start_tick`` of a process (Linux), None where /proc is not available."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_name = stat.rsplit(")", 1)[1].split()
    return f"{boot}:{fields_after_name[19]}"  # field 22 of stat: start time in clock ticks


def slurm_job_id() -> str | None:
    """The SLURM (or submitit local) job id of this process, stable across requeues."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


@dataclass
class LockInfo:
    token: str
    pid: int
    host: str
    identity: str | None
    job: str | None
    since: str
    heartbeat: float = 0.0  # the file's modification time when read

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.since}"


def read_lock(path: Path) -> LockInfo | None:
    """The lock's holder; None when there is no lock. An unreadable file gives a holder with
    pid 0 (always stale)."""
    try:
        text = path.read_text(encoding="utf-8")
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return LockInfo(**{**data, "heartbeat": mtime})
    except (ValueError, TypeError):
        return LockInfo(token="", pid=0, host="", identity=None, job=None, since="?", heartbeat=mtime)


def stale_reason(info: LockInfo, stale_after_s: float, job: str | None = None) -> str | None:
    """Why the lock ``info`` no longer protects anything, or None when its holder is alive."""
    if info.pid <= 0:
        return "unreadable lock file"
    if job is not None and info.job == job:
        return f"left by an earlier run of job {job}"
    if info.host == socket.gethostname():
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return f"process {info.pid} is gone"
        except PermissionError:
            pass  # alive, another user's
        identity = process_identity(info.pid)
        if info.identity and identity and identity != info.identity:
            return f"pid {info.pid} now belongs to another process"
        return None
    age = time.time() - info.heartbeat
    if age > stale_after_s:
        return f"no heartbeat from {info.host} for {age:.0f} s"
    return None


@contextlib.contextmanager
def _mutex(results: Path) -> Iterator[None]:
    folder = Path(results) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".mutex", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class CellLock:
    """The lock of one cell. ``acquire()`` returns False when a live holder has it."""

    def __init__(self, results: Path, relpath: Path, stale_after_s: float = 600.0, job: str | None = None) -> None:
        """``job``: the id of the cluster job that runs only this cell (its lock survives a
        requeue of that job); None elsewhere."""
        self.results = Path(results)
        self.path = lock_path(results, relpath)
        self.stale_after_s = stale_after_s
        self.job = job
        self.token = uuid.uuid4().hex
        self.holder: LockInfo | None = None  # who had it when acquire() failed
        self.broken: str | None = None  # why a stale lock was taken over
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        with _mutex(self.results):
            remove_temp_files(self.path)  # every lock write holds the mutex: leftovers are garbage
            current = read_lock(self.path)
            if current is not None:
                reason = stale_reason(current, self.stale_after_s, self.job)
                if reason is None:
                    self.holder = current
                    return False
                self.broken = f"took over a stale lock ({current.describe()}: {reason})"
            pid = os.getpid()
            info = LockInfo(
                self.token, pid, socket.gethostname(), process_identity(pid), self.job, time.strftime("%Y-%m-%dT%H:%M:%S%z")
            )
            data = asdict(info)
            data.pop("heartbeat")
            atomic_write_text(self.path, json.dumps(data) + "\n")
        _HELD.add(self)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat:{self.path.name}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        interval = max(0.05, self.stale_after_s / 10)
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        if self not in _HELD:
            return
        _HELD.discard(self)
        self._stop.set()
        with _mutex(self.results):
            current = read_lock(self.path)
            if current is not None and current.token == self.token:
                self.path.unlink()

    def __enter__(self) -> "CellLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_all() -> None:
    """Release every lock this process holds (before a pre-empted job exits)."""
    for lock in list(_HELD):
        lock.release()


def live_holder(results: Path, relpath: Path, stale_after_s: float) -> LockInfo | None:
    """Who is running the cell now, or None (no lock, or a stale one)."""
    info = read_lock(lock_path(results, relpath))
    if info is None or stale_reason(info, stale_after_s) is not None:
        return None
    return info
