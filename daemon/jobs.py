"""The persistent job store, and the live job state shared by the I/O thread and the worker.

`JobStore`: SQLite (WAL) under the state folder, one connection per thread, with each job's
files in state/jobs/<id>/: input/project.zip and, once done, the artifacts. A job moves
queued → running → done | failed | cancelled. Every file is written to a temporary name and
renamed into place, and a result is recorded only after its file is complete, so a kill -9 at
any moment loses nothing: `recover()` at startup re-queues the interrupted job (failing it after
MAX_ATTEMPTS interrupted runs), honours a cancel that was asked before the crash and removes
half-written leftovers.

`JobBoard`: what is live and in memory only: the latest progress of running jobs, cancel and
stop requests, and the wake-up of an idle worker when work arrives.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from shared.protocol import ARTIFACTS, ProgressEvent, TERMINAL_STATES

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3          # interrupted runs (daemon killed mid-job) before a job is failed
# Below this much free space on the state disk, a failure is most likely the disk's fault: some
# writers (libsndfile, ffmpeg) report a full disk without an errno we could recognise.
LOW_DISK_BYTES = 64 * 2**20
PROJECT_FILE = "project.zip"
INPUT_DIR = "input"
WORK_DIR = "work"         # a running job's outputs before they are complete

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    mode TEXT NOT NULL,
    backend TEXT NOT NULL,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',
    duration REAL
);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""


class JobStateError(RuntimeError):
    """The job is not in a state that allows this (e.g. deleting a running job)."""


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int
    state: str
    mode: str
    backend: str
    title: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    cancel_requested: bool
    error: str | None
    warnings: list[str]
    duration: float | None
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class Recovery:
    """What `recover()` did at startup."""
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]
    removed_orphans: list[str]


def out_of_space(error: BaseException | None) -> bool:
    """Whether `error`, or an error that led to it, says a disk (or quota) is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if "No space left on device" in str(error):     # ffmpeg's stderr, inside MediaError
            return True
        error = error.__cause__ or error.__context__
    return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, complete or not at all (tmp + fsync + rename + fsync of the folder)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobFiles:
    """Where a job's files live under the state folder (every rank can compute this)."""

    def __init__(self, state_dir: Path):
        self.jobs_dir = Path(state_dir) / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def project_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / INPUT_DIR / PROJECT_FILE

    def work_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / WORK_DIR

    def artifact_path(self, job_id: str, name: str) -> Path:
        if name == PROJECT_FILE:
            return self.project_path(job_id)
        return self.job_dir(job_id) / name


class JobStore:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir)
        self.files = JobFiles(self.root)
        self.jobs_dir = self.files.jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "jobs.sqlite3"
        self._local = threading.local()
        self._db().executescript(_SCHEMA)   # executescript manages its own transaction

    # -- connections: sqlite3 objects must stay on the thread that made them
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    def _tx(self, immediate: bool = False) -> "_Transaction":
        return _Transaction(self._db(), immediate)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- paths
    def job_dir(self, job_id: str) -> Path:
        return self.files.job_dir(job_id)

    def project_path(self, job_id: str) -> Path:
        return self.files.project_path(job_id)

    def work_dir(self, job_id: str) -> Path:
        return self.files.work_dir(job_id)

    def artifact_path(self, job_id: str, name: str) -> Path:
        return self.files.artifact_path(job_id, name)

    def disk_full_note(self, error: BaseException | None = None) -> str | None:
        """What to tell the user when `error` came from a full disk (or the state disk is
        nearly full, whatever the error says); None otherwise."""
        free = shutil.disk_usage(self.root).free
        if not (out_of_space(error) or free < LOW_DISK_BYTES):
            return None
        return (f"the disk holding {self.root} is full ({free / 2**20:.1f} MiB free): free space "
                "there, then submit the project again")

    # -- startup
    def recover(self) -> Recovery:
        """Make the store consistent after any kind of stop, before the worker starts."""
        now = time.time()
        requeued, failed, cancelled = [], [], []
        with self._tx() as db:
            for row in db.execute("SELECT id, attempts, cancel_requested FROM jobs "
                                  "WHERE state = 'running' ORDER BY seq").fetchall():
                if row["cancel_requested"]:
                    db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=?",
                               (now, row["id"]))
                    cancelled.append(row["id"])
                elif row["attempts"] >= MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE jobs SET state='failed', finished=?, error=? WHERE id=?",
                        (now, f"the daemon stopped during this job {row['attempts']} times "
                              "(killed or crashed); it was given up. Check the daemon log for "
                              "what stopped it, then submit the project again", row["id"]))
                    failed.append(row["id"])
                else:
                    db.execute("UPDATE jobs SET state='queued', started=NULL WHERE id=?",
                               (row["id"],))
                    requeued.append(row["id"])
            known = {r["id"] for r in db.execute("SELECT id FROM jobs")}
        removed = []
        for entry in self.jobs_dir.iterdir():
            if entry.name not in known:
                # A submit that died between writing its input and recording its row.
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
                removed.append(entry.name)
                continue
            shutil.rmtree(entry / WORK_DIR, ignore_errors=True)
            for leftover in list(entry.glob("*.tmp")) + list((entry / INPUT_DIR).glob("*.tmp")):
                leftover.unlink()
        return Recovery(requeued, failed, cancelled, removed)

    # -- writes
    def create(self, project: bytes, *, mode: str, backend: str, title: str) -> JobRecord:
        """Store the input, then the queued row: a job exists only with its complete input."""
        job_id = secrets.token_hex(6)
        input_dir = self.job_dir(job_id) / INPUT_DIR
        try:
            input_dir.mkdir(parents=True)
            path = input_dir / PROJECT_FILE
            write_atomic(path, project)
            _fsync_dir(self.jobs_dir)
            sha = hashlib.sha256(project).hexdigest()
            with self._tx() as db:
                db.execute("INSERT INTO jobs (id, state, mode, backend, title, created) "
                           "VALUES (?, 'queued', ?, ?, ?, ?)",
                           (job_id, mode, backend, title, time.time()))
                db.execute("INSERT INTO artifacts (job_id, name, size, sha256) "
                           "VALUES (?, ?, ?, ?)", (job_id, PROJECT_FILE, len(project), sha))
        except BaseException:
            # A refused submit (disk full, database locked) stores nothing, not even until the
            # next restart's recover().
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            raise
        return self.get(job_id)

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now running (attempts + 1); None when the queue is empty."""
        with self._tx(immediate=True) as db:
            row = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', started=?, attempts=attempts+1, "
                       "error=NULL WHERE id=?", (time.time(), row["id"]))
        return self.get(row["id"])

    def request_cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: flagged (the worker stops it at its next check).
        Finished: unchanged."""
        with self._tx(immediate=True) as db:
            db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=? AND state='queued'",
                       (time.time(), job_id))
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND state='running'", (job_id,))
        return self.get(job_id)

    def complete(self, job_id: str, files: dict[str, Path], warnings: Iterable[str],
                 duration: float | None) -> JobRecord:
        """Move finished output files into place, then record them and the done state."""
        records = []
        for name, src in files.items():
            if name not in ARTIFACTS or name == PROJECT_FILE:
                raise ValueError(f"{name!r} is not an artifact a render produces")
            dst = self.artifact_path(job_id, name)
            with open(src, "rb") as f:
                os.fsync(f.fileno())
            records.append((job_id, name, src.stat().st_size, file_sha256(src)))
            os.replace(src, dst)
        _fsync_dir(self.job_dir(job_id))
        with self._tx(immediate=True) as db:
            db.executemany("INSERT OR REPLACE INTO artifacts (job_id, name, size, sha256) "
                           "VALUES (?, ?, ?, ?)", records)
            db.execute("UPDATE jobs SET state='done', finished=?, warnings=?, duration=? "
                       "WHERE id=?", (time.time(), json.dumps(list(warnings)), duration, job_id))
        return self.get(job_id)

    def fail(self, job_id: str, error: str, warnings: Iterable[str] = ()) -> JobRecord:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='failed', finished=?, error=?, warnings=? WHERE id=?",
                       (time.time(), error, json.dumps(list(warnings)), job_id))
        return self.get(job_id)

    def mark_cancelled(self, job_id: str) -> JobRecord:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='cancelled', finished=? WHERE id=?",
                       (time.time(), job_id))
        return self.get(job_id)

    def requeue(self, job_id: str) -> JobRecord:
        """Put a running job back at its place in the queue after a clean shutdown: that run
        was not the job's fault, so it does not count as an attempt."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='queued', started=NULL, attempts=MAX(attempts-1, 0) "
                       "WHERE id=? AND state='running'", (job_id,))
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job that is not running, with all its files."""
        with self._tx(immediate=True) as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            if row["state"] == "running":
                raise JobStateError(f"job {job_id} is running: cancel it first, then delete it")
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # -- reads
    def get(self, job_id: str) -> JobRecord | None:
        db = self._db()
        row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return None
        artifacts = db.execute("SELECT name, size, sha256 FROM artifacts WHERE job_id=?",
                               (job_id,)).fetchall()
        return _record(row, artifacts)

    def list(self, limit: int = 100) -> list[JobRecord]:
        """The newest jobs first."""
        db = self._db()
        rows = db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        by_job: dict[str, list[sqlite3.Row]] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for a in db.execute(f"SELECT job_id, name, size, sha256 FROM artifacts "
                                f"WHERE job_id IN ({marks})", [r["id"] for r in rows]):
                by_job.setdefault(a["job_id"], []).append(a)
        return [_record(r, by_job.get(r["id"], [])) for r in rows]

    def queue_order(self) -> list[str]:
        """Ids of queued jobs, next to run first."""
        return [r["id"] for r in
                self._db().execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq")]

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = {s: 0 for s in ("queued", "running", *TERMINAL_STATES)}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def running_job(self) -> str | None:
        row = self._db().execute("SELECT id FROM jobs WHERE state='running' LIMIT 1").fetchone()
        return row["id"] if row else None


class _Transaction:
    """`with store._tx() as db:` — BEGIN … COMMIT, ROLLBACK on error. `immediate=True` takes
    the write lock at once, so read-then-write sequences cannot interleave."""

    def __init__(self, db: sqlite3.Connection, immediate: bool):
        self.db = db
        self.mode = "IMMEDIATE" if immediate else "DEFERRED"

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(f"BEGIN {self.mode}")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _record(row: sqlite3.Row, artifacts: Iterable[sqlite3.Row]) -> JobRecord:
    return JobRecord(
        id=row["id"], seq=row["seq"], state=row["state"], mode=row["mode"],
        backend=row["backend"], title=row["title"], created=row["created"],
        started=row["started"], finished=row["finished"], attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]), error=row["error"],
        warnings=json.loads(row["warnings"]), duration=row["duration"],
        artifacts={a["name"]: ArtifactRecord(a["name"], a["size"], a["sha256"]) for a in artifacts})


class JobBoard:
    """Live, in-memory job state, safe to use from any thread."""

    def __init__(self) -> None:
        # Held while a job is created or claimed and its event published, so that subscribers
        # see "queued" before "running".
        self.event_order = threading.Lock()
        self._lock = threading.Condition()
        self._progress: dict[str, ProgressEvent] = {}
        self._cancel: set[str] = set()
        self._work_pending = False
        self._stopping = False

    # progress of running jobs, for status replies
    def post_progress(self, event: ProgressEvent) -> None:
        with self._lock:
            self._progress[event.job_id] = event

    def progress(self, job_id: str) -> ProgressEvent | None:
        with self._lock:
            return self._progress.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._progress.pop(job_id, None)
            self._cancel.discard(job_id)

    # cancel and stop
    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancel.add(job_id)

    def should_stop(self, job_id: str) -> bool:
        with self._lock:
            return self._stopping or job_id in self._cancel

    def request_stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    @property
    def stopping(self) -> bool:
        with self._lock:
            return self._stopping

    # waking the worker
    def notify_work(self) -> None:
        with self._lock:
            self._work_pending = True
            self._lock.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        """Block until work may be available or a stop is asked; False on timeout."""
        with self._lock:
            woke = self._lock.wait_for(lambda: self._work_pending or self._stopping, timeout)
            self._work_pending = False
            return bool(woke)
