"""Two gloo ranks under torchrun (started by ./run_daemon.sh with NPROC=2): rank 0 serves, rank 1
follows over the control channel; renders, cancels and shutdown happen on both together.
Every daemon is a subprocess and every wait has a timeout: a failed collective would hang."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from daemon.media.mp4 import probe
from shared import protocol as p
from studio.client import DaemonDied

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, launch_daemon):
    daemon = launch_daemon(tmp_path_factory.mktemp("two-ranks"), nproc=2, script=True)
    yield daemon
    daemon.stop(timeout=60)
    daemon.kill()


def test_run_daemon_sh_starts_one_rank_per_process_with_sequence_parallel_sizes(two_ranks):
    info = two_ranks.client().info()
    assert (info.parallel.world_size, info.parallel.ulysses_size, info.parallel.ring_size) == (2, 2, 1)
    assert [d.rank for d in info.devices] == [0, 1]


def test_a_render_on_two_ranks(two_ranks, projects, tmp_path):
    client = two_ranks.client(timeout=60)
    job = client.submit(projects.two_lines(), "draft")
    final = client.wait(job.id)
    assert final.state == "done", final.error
    video = probe(client.download(job.id, "video.mp4", tmp_path / "v.mp4").path)
    assert (video.video_codec, video.audio_codec) == ("h264", "aac")
    assert abs(video.duration - final.duration) <= 1 / 25


def test_cancel_stops_every_rank_together_and_they_stay_in_step(two_ranks, projects, watch_until):
    client = two_ranks.client(timeout=60)
    job = client.submit(projects.long_audio(40), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    client.cancel(job.id)
    assert client.wait(job.id).state == "cancelled"
    # Had rank 1 missed the stop, the next job's first collective would hang or fail.
    after = client.submit(projects.two_lines(), "draft")
    assert client.wait(after.id).state == "done"
    assert "ERROR" not in two_ranks.log()


def test_sigterm_stops_both_ranks_cleanly_and_requeues_the_running_job(daemon_factory, projects,
                                                                        watch_until):
    daemon = daemon_factory(nproc=2, script=True)
    client = daemon.client(timeout=60)
    job = client.submit(projects.long_audio(20), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(120)
    log = daemon.log()
    assert "interrupted by shutdown" in log and "queued again" in log
    assert "rank0 INFO daemon: stopped" in log
    assert "rank1 ERROR" not in log and "fatal" not in log

    again = daemon_factory()            # the same state folder, one process
    final = again.client(timeout=60).wait(job.id)
    assert (final.state, final.attempts) == ("done", 1)


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the daemon processes under a torchrun (found via its children's RANK)."""
    torchrun = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True,
                              text=True).stdout.split() or [str(launcher_pid)]
    ranks = {}
    for parent in [launcher_pid, *map(int, torchrun)]:
        for child in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True,
                                    text=True).stdout.split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            for entry in env:
                if entry.startswith(b"RANK="):
                    ranks[int(entry[5:])] = int(child)
    return ranks


def test_a_rank_that_dies_mid_job_ends_the_daemon_with_a_dead_event_and_run_daemon_sh_restarts_it(
        daemon_factory, projects, watch_until):
    daemon = daemon_factory(nproc=2, script=True)
    client = daemon.client(timeout=60)
    job = client.submit(projects.long_audio(20), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    os.kill(rank_pids(daemon.proc.pid)[1], signal.SIGKILL)
    with pytest.raises(DaemonDied, match="lost contact with the other ranks"):
        for _ in client.watch(job.id):
            pass

    daemon.wait_ready()                 # nobody restarts it: run_daemon.sh does
    final = daemon.client(timeout=60).wait(job.id)
    assert (final.state, final.attempts) == ("done", 2)
    assert "run_daemon.sh: the daemon exited with code 1; starting it again in 2 s" in daemon.log()
    assert daemon.proc.poll() is None


def test_a_follower_that_fails_mid_job_fails_the_job_naming_it_and_both_ranks_go_on(
        daemon_factory, projects, monkeypatch):
    monkeypatch.setenv("DUET_INJECT_FAULT", "follower-error")   # rank 1's first job raises
    daemon = daemon_factory(nproc=2, script=True)
    client = daemon.client(timeout=60)
    failed = client.wait(client.submit(projects.long_audio(5), "draft").id)
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert failed.error == ("rank 1 failed: RuntimeError: injected follower error "
                            "(DUET_INJECT_FAULT=follower-error)")
    after = client.wait(client.submit(projects.two_lines(), "draft").id)
    assert after.state == "done", after.error
    assert [d.rank for d in client.info().devices] == [0, 1]
    assert "restarting" not in daemon.log() and "starting it again" not in daemon.log()
