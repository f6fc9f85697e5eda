"""Faults: the daemon killed (-9) or a rank killed mid-job, the studio's client dropped and
replaced mid-job, the disk filling up while a render writes, the GPU running out of memory.
Each ends with nothing lost, the job table consistent and the daemon serving the next job.

tests/test_daemon_restart.py and tests/test_daemon_distributed.py cover one kill -9, SIGTERM and
a follower rank's death mid-job; this file adds what they do not: a client that follows a job
through a restart, a job given up after MAX_ATTEMPTS kills, random kill -9 storms checked
against the store's invariants, rank 0's death, a rank dying while idle, a full disk and an OOM.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_settings
from daemon.jobs import MAX_ATTEMPTS, file_sha256, out_of_space
from daemon.media.mp4 import MediaError
from daemon.models.dit import DiTConfig
from daemon.models.memory import GiB, RunConfig, plan
from daemon.worker import out_of_memory_advice
from shared import protocol as p
from studio.client import DaemonClient, DaemonDied, RequestFailed
from tests.conftest import VOICES

pytestmark = pytest.mark.timeout(300)


def is_frames(event) -> bool:
    return isinstance(event, p.ProgressEvent) and event.phase == "frames"


# ---------------------------------------------------------------- the studio's client restarts

def test_a_new_client_after_the_old_one_is_dropped_finds_the_running_job_and_follows_it(
        daemon_factory, projects, watch_until):
    daemon = daemon_factory()
    old = DaemonClient(daemon.address, timeout=60)
    job = old.submit(projects.long_audio(30))
    watch_until(old, job.id, is_frames)         # subscribed, and progress is flowing
    old.close()                                 # the studio process is gone, no unsubscribe

    with DaemonClient(daemon.address, timeout=60) as new:
        listed = {j.id: j for j in new.jobs()}[job.id]
        assert listed.state == "running" and listed.progress.phase == "frames"
        events = []
        final = new.wait(job.id, on_event=events.append)
    assert (final.state, final.attempts) == ("done", 1)
    frames = [e.step for e in events if is_frames(e)]
    assert frames and frames == sorted(frames) and frames[-1] == listed.progress.total
    assert " ERROR " not in daemon.log() and "WARNING" not in daemon.log()


# ---------------------------------------------------------------- kill -9

def test_a_client_watching_a_job_follows_it_through_a_kill_9_and_a_restart(daemon_factory,
                                                                           projects):
    first = daemon_factory()
    client = first.client(timeout=60)
    # 60 s of audio: after the restart the draft renders for several seconds, longer than the
    # watch takes to find the new daemon, so frames progress of attempt 2 must reach it.
    job = client.submit(projects.long_audio(60))
    events = client.watch(job.id, idle_check_s=1.0)
    next(e for e in events if is_frames(e))
    first.kill()
    daemon_factory(port=first.port)             # the same address and state folder
    after = list(events)                        # the same watch, across the restart
    assert after[-1].job.state == "done" and after[-1].job.attempts == 2
    assert any(is_frames(e) for e in after)


def store_invariants(state: Path) -> dict[str, str]:
    """Check, with the daemon dead, what must hold after any stop; return {job id: state}.
    Every job has its input; a done job has every artifact recorded with the size and sha256
    of the file on disk; nothing else is recorded; attempts never pass MAX_ATTEMPTS."""
    db = sqlite3.connect(f"file:{state / 'jobs.sqlite3'}?mode=ro", uri=True)
    try:
        jobs = db.execute("SELECT id, state, attempts FROM jobs").fetchall()
        artifacts = db.execute("SELECT job_id, name, size, sha256 FROM artifacts").fetchall()
    finally:
        db.close()
    states = {job_id: job_state for job_id, job_state, _ in jobs}
    for job_id, job_state, attempts in jobs:
        assert (state / "jobs" / job_id / "input" / "project.zip").is_file()
        assert 0 <= attempts <= MAX_ATTEMPTS, (job_id, attempts)
    recorded: dict[str, set[str]] = {job_id: set() for job_id in states}
    for job_id, name, size, sha in artifacts:
        path = state / "jobs" / job_id / ("input/project.zip" if name == "project.zip" else name)
        assert path.stat().st_size == size and file_sha256(path) == sha, path
        recorded[job_id].add(name)
    for job_id, names in recorded.items():
        assert names == (set(p.ARTIFACTS) if states[job_id] == "done" else {"project.zip"}), \
            (job_id, states[job_id], names)
    return states


@pytest.mark.slow
def test_a_job_interrupted_max_attempts_times_is_given_up_and_the_queue_moves_on(
        daemon_factory, projects, watch_until):
    waiting = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        daemon = daemon_factory()
        client = daemon.client(timeout=60)
        if attempt == 1:
            job = client.submit(projects.long_audio(30, title="doomed"))
            waiting = client.submit(projects.two_lines(title="next"))
        event = watch_until(client, job.id, is_frames)
        assert client.status(job.id).attempts == attempt and event.job_id == job.id
        daemon.kill()
        assert store_invariants(daemon.state) == {job.id: "running", waiting.id: "queued"}
    client = daemon_factory().client(timeout=60)
    given_up = client.status(job.id)
    assert (given_up.state, given_up.attempts) == ("failed", MAX_ATTEMPTS)
    assert given_up.error.startswith(f"the daemon stopped during this job {MAX_ATTEMPTS} times")
    assert client.wait(waiting.id).state == "done"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_random_kill_9_storms_never_break_the_store_and_every_job_ends(daemon_factory, projects,
                                                                       tmp_path):
    rng = random.Random(42)
    submitted: list[str] = []
    for round_ in range(8):
        daemon = daemon_factory()
        client = daemon.client(timeout=60)
        if round_ == 0:
            submitted = [client.submit(projects.long_audio(rng.choice((4, 8, 15)),
                                                           title=f"job {i}")).id
                         for i in range(5)]
        # SIGKILL at a random moment: mid-TTS, mid-frames, mid-mux, mid-store, or idle.
        try:
            daemon.proc.wait(timeout=rng.uniform(0.05, 2.5))
        except subprocess.TimeoutExpired:
            pass
        assert daemon.proc.poll() is None, daemon.log()
        daemon.kill()
        states = store_invariants(daemon.state)
        assert sorted(states) == sorted(submitted), states      # nothing lost, nothing extra
    client = daemon_factory().client(timeout=60)
    for job_id in submitted:
        final = client.wait(job_id)
        assert final.state == "done" or (final.state, final.attempts) == ("failed", MAX_ATTEMPTS)
        if final.state == "done":
            data = client.read_artifact(job_id, "video.mp4")    # checked against its sha256
            assert len(data) == {a.name: a.size for a in final.artifacts}["video.mp4"]
    assert not [f for f in (tmp_path / "state" / "jobs").rglob("*")
                if f.name.endswith((".tmp", ".part")) or f.name == "work"]


# ---------------------------------------------------------------- ranks

def child_pids(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def rank_pids(script_pid: int) -> dict[int, int]:
    """{rank: pid} of the daemon ranks under ./run_daemon.sh: the children of its torchrun child
    that run the daemon (their own children, such as ffmpeg, inherit RANK too and must not be
    mistaken for them)."""
    ranks = {}
    children = [c for torchrun in child_pids(script_pid) for c in child_pids(int(torchrun))]
    for child in children:
        if b"daemon" not in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
            continue
        for entry in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(child)
    assert sorted(ranks) == [0, 1], ranks
    return ranks


@pytest.mark.slow
def test_rank_0_dying_mid_job_takes_the_other_rank_down_and_the_job_resumes(daemon_factory,
                                                                             projects,
                                                                             watch_until):
    daemon = daemon_factory(nproc=2, script=True)
    client = daemon.client(timeout=60)
    job = client.submit(projects.long_audio(20))
    watch_until(client, job.id, is_frames)
    ranks = rank_pids(daemon.proc.pid)
    os.kill(ranks[0], signal.SIGKILL)
    daemon.wait_ready()                         # run_daemon.sh started it again
    with pytest.raises(ProcessLookupError):     # torchrun ended the old rank 1
        os.kill(ranks[1], 0)
    final = daemon.client(timeout=60).wait(job.id)
    assert (final.state, final.attempts) == ("done", 2)


@pytest.mark.slow
def test_a_rank_that_died_while_idle_is_noticed_at_the_next_job_which_then_resumes(
        daemon_factory, projects):
    daemon = daemon_factory(nproc=2, script=True)
    client = daemon.client(timeout=60)
    os.kill(rank_pids(daemon.proc.pid)[1], signal.SIGKILL)
    job = client.submit(projects.two_lines())   # stored first: the submit itself succeeds
    with pytest.raises(DaemonDied, match="lost contact with the other ranks"):
        client.wait(job.id)
    daemon.wait_ready()                         # run_daemon.sh started it again
    final = daemon.client(timeout=60).wait(job.id)
    assert final.state == "done"


def test_a_render_whose_ffmpeg_is_killed_fails_saying_so_and_the_next_job_runs(daemon_factory,
                                                                              projects,
                                                                              watch_until):
    daemon = daemon_factory()
    client = daemon.client(timeout=60)
    job = client.submit(projects.long_audio(30))
    watch_until(client, job.id, is_frames)      # ffmpeg is encoding the frames now
    ffmpeg = subprocess.run(["pgrep", "-P", str(daemon.proc.pid), "ffmpeg"], capture_output=True,
                            text=True).stdout.split()
    assert len(ffmpeg) == 1
    os.kill(int(ffmpeg[0]), signal.SIGKILL)     # as the kernel's OOM killer would
    failed = client.wait(job.id)
    assert failed.state == "failed"
    assert failed.error.startswith("ffmpeg failed encoding .video.mp4.")
    assert failed.error.endswith(".part: ffmpeg was killed by SIGKILL")
    assert client.wait(client.submit(projects.two_lines()).id).state == "done"


# ---------------------------------------------------------------- a full disk

class SmallDisk:
    """A tmpfs of a few MB mounted for the test (needs root): the state folder lives on it."""

    def __init__(self, folder: Path, size_mb: int):
        self.folder = folder
        folder.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                                  str(folder)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); run as root")
        self.filler = folder / "filler"

    def fill(self, leave: int = 0) -> None:
        """Fill the disk up, then give back `leave` bytes."""
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
            try:
                while True:              # the last partial megabyte
                    f.write(bytes(4096))
                    f.flush()
            except OSError:
                pass
        os.truncate(self.filler, max(self.filler.stat().st_size - leave, 0))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk", size_mb=24)
    yield disk
    disk.unmount()


def job_files(state: Path, job_id: str) -> list[str]:
    return sorted(str(f.relative_to(state / "jobs" / job_id))
                  for f in (state / "jobs" / job_id).rglob("*"))


def test_a_full_disk_fails_the_render_naming_the_disk_and_after_freeing_space_it_renders(
        small_disk, daemon_factory, projects, tmp_path):
    state = small_disk.folder / "state"
    daemon = daemon_factory(state=state)
    client = daemon.client(timeout=60)
    project = projects.long_audio(10)
    client.tts("Indeed.", VOICES[1])            # cached: the render fails writing its outputs

    small_disk.fill(leave=0)
    with pytest.raises(RequestFailed) as refused:
        client.submit(project)
    assert refused.value.code == "busy"
    assert refused.value.message.startswith(
        f"the daemon cannot store the project: the disk holding {state} is full")
    assert list((state / "jobs").iterdir()) == [] and client.jobs() == []

    small_disk.free()
    small_disk.fill(leave=len(project) + 256 * 1024)
    job = client.submit(project)
    failed = client.wait(job.id)
    assert (failed.state, failed.attempts) == ("failed", 1)
    print(f"\nthe failed job's error: {failed.error}")
    assert "No space left on device" in failed.error
    assert f"the disk holding {state} is full" in failed.error
    assert [a.name for a in failed.artifacts] == ["project.zip"]
    assert job_files(state, job.id) == ["input", "input/project.zip"]   # no partial outputs
    assert client.info().queue.failed == 1

    small_disk.free()
    again = client.submit(project)
    done = client.wait(again.id)
    assert done.state == "done", done.error
    video = client.download(again.id, "video.mp4", tmp_path / "v.mp4")
    assert video.size == {a.name: a.size for a in done.artifacts}["video.mp4"]
    assert [j.state for j in client.jobs()] == ["done", "failed"]


def test_a_full_disk_is_recognised_in_whatever_error_it_caused():
    def raised_from(cause: BaseException) -> RuntimeError:
        try:
            raise RuntimeError("writing the video failed") from cause
        except RuntimeError as e:
            return e

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert out_of_space(raised_from(OSError(errno.ENOSPC, "No space left on device")))
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert out_of_space(full)
    assert out_of_space(MediaError("ffmpeg failed encoding x: … No space left on device"))
    assert not out_of_space(raised_from(OSError(errno.EACCES, "Permission denied")))
    assert not out_of_space(None)


# ---------------------------------------------------------------- GPU out of memory

def test_an_out_of_memory_render_fails_with_the_planners_advice_and_the_next_job_runs(
        daemon_factory, projects, monkeypatch):
    monkeypatch.setenv("DUET_INJECT_FAULT", "gpu-oom")      # the first render raises an OOM
    daemon = daemon_factory()
    client = daemon.client(timeout=60)
    job = client.submit(projects.two_lines())
    failed = client.wait(job.id)
    assert (failed.state, failed.attempts) == ("failed", 1)
    lines = failed.error.splitlines()
    assert lines[0] == ("the GPU ran out of memory during this render (CUDA out of memory. Tried "
                        "to allocate 2.00 GiB (injected by DUET_INJECT_FAULT=gpu-oom)).")
    # The planner's view of this job: 16:9 480p is 896×448, 81 frames, one rank, offloading.
    expected = plan(DiTConfig(), RunConfig(width=896, height=448, frames=81, offload_model=True))
    assert lines[1].startswith(f"The memory planner expected it to fit ({expected.describe()})")
    assert lines[2].startswith("Configurations that need less GPU memory")
    assert lines[-1] == "Or make a draft render."
    assert client.wait(client.submit(projects.two_lines()).id).state == "done"
    assert client.info().queue.failed == 1


def test_the_oom_advice_lists_only_configurations_that_fit_and_need_less():
    run = RunConfig(width=1280, height=704, frames=81, gpu_bytes=24 * GiB)
    message = out_of_memory_advice("CUDA out of memory.", run, "720p")
    lines = message.splitlines()
    assert lines[1].startswith("It needs more than the GPU has: 1280x704 1 GPU: peak")
    options = [line.strip() for line in lines[3:-1]]
    assert 1 <= len(options) <= 5
    for option in options:
        peak = float(option.split("peak ")[1].split(" GiB")[0])
        assert peak <= 24 and peak < plan(DiTConfig(), run).gpu_peak / GiB
    assert lines[-1] == "Or make a draft render, or render at 480p."


def test_an_unknown_injected_fault_stops_the_daemon_at_startup():
    with pytest.raises(ConfigError, match="DUET_INJECT_FAULT='disk' is not a fault"):
        parse_settings([], env={"DUET_INJECT_FAULT": "disk"})
    assert parse_settings([], env={}).inject_fault is None
