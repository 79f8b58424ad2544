"""The shared directory in which every worker keeps its metric files.

prometheus_client's multiprocess mode gives each worker process its own
memory-mapped files, named ``<type>_<pid>.db``, in ``PROMETHEUS_MULTIPROC_DIR``;
a scrape merges them. This module finds or makes that directory, empties it
when the arbiter starts, and owns the lock that keeps a scrape's view of the
directory consistent while dead workers' files are folded away.

Nothing here imports prometheus_client: ``gunicorn.conf.py`` uses this module
in the arbiter before the variable is set, and prometheus_client decides on
multiprocess mode when it is first imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_FILE_NAME = "directory.lock"
GATE_FILE_NAME = "directory-gate.lock"

_private_directory: Path | None = None
_private_directory_lock = threading.Lock()


def ensure_directory_env(environ: MutableMapping[str, str] | None = None) -> Path:
    """Return the multiprocess directory, creating one if none is configured.

    Without ``PROMETHEUS_MULTIPROC_DIR`` a private temporary directory is made
    and the variable is set, so that the workers forked later inherit it. It
    is made in ``/dev/shm`` where that is writable: the files are memory
    mapped and written on every call, and on a disk-backed directory the
    kernel would keep writing the dirty pages back to the disk.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path

    memory_backed = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="llm-token-metrics-", dir=memory_backed))
    environ[MULTIPROC_ENV] = str(path)
    return path


def shared_directory() -> Path:
    """Return where this process keeps the files that workers share.

    That is ``PROMETHEUS_MULTIPROC_DIR`` in multiprocess mode. Outside it
    there is one process, and a private temporary directory is all the
    sharing the quota windows need.
    """
    global _private_directory  # noqa: PLW0603 - one directory per process
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        return Path(configured)

    with _private_directory_lock:
        if _private_directory is None:
            _private_directory = Path(tempfile.mkdtemp(prefix="llm-token-metrics-"))

    return _private_directory


def empty_directory(path: Path) -> int:
    """Remove the files a previous run left in ``path``; return how many."""
    removed = 0
    for entry in path.iterdir():
        # Sockets and links too: only sub-directories, which no run makes, stay.
        if not entry.is_dir() or entry.is_symlink():
            entry.unlink()
            removed += 1

    return removed


def check_writable(path: str | None) -> str | None:
    """Return why metric files cannot be written to ``path``, or ``None``."""
    if not path:
        return f"{MULTIPROC_ENV} is not set"
    if not os.path.isdir(path):
        return f"the multiprocess directory {path} does not exist"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the multiprocess directory {path} is not writable"

    stats = os.statvfs(path)
    if stats.f_bavail * stats.f_frsize < 1 << 20:
        return f"the multiprocess directory {path} has less than 1 MiB free"

    return None


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike[str], exclusive: bool) -> Iterator[None]:
    """Hold the directory lock: shared to read the files, exclusive to replace them.

    Recording never takes this lock. Only two things do: a scrape, which
    lists and reads the files under a shared lock, and the fold of a dead
    worker's files into the archive, which swaps files under an exclusive
    lock. A scrape therefore sees the directory either before or after a
    fold, never in between, so it counts every event exactly once.

    A second lock file is the gate: a writer closes it before it waits for
    the readers inside to leave, and a reader passes it only while it is
    open. Without it, scrapes that follow each other closely would keep the
    shared lock held and starve the arbiter's fold, and with it the
    spawning of new workers.
    """
    gate = os.open(Path(path) / GATE_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    lock = os.open(Path(path) / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if exclusive:
            fcntl.flock(gate, fcntl.LOCK_EX)
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_SH)
            fcntl.flock(lock, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lock)
        os.close(gate)
