"""A daemon killed with SIGKILL mid-render loses nothing: after a restart on the same state
folder the queued job still runs, the interrupted one is queued again and finishes, and earlier
results download byte-identical. A clean stop (SIGTERM) puts the running job back in the queue
without counting it as an attempt, and tells subscribers the daemon is going."""
from __future__ import annotations

import pytest

from shared import protocol as p
from studio.client import DaemonDied


def test_kill_9_mid_render_then_restart_loses_nothing(daemon_factory, projects, watch_until,
                                                      tmp_path):
    first = daemon_factory()
    client = first.client(timeout=60)
    earlier = client.submit(projects.two_lines(title="earlier"), "draft")
    assert client.wait(earlier.id).state == "done"
    before = client.download(earlier.id, "video.mp4", tmp_path / "before.mp4")

    waiting_project = projects.two_lines(title="waiting")
    interrupted = client.submit(projects.long_audio(40, title="interrupted"), "draft")
    watch_until(client, interrupted.id,
                lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    waiting = client.submit(waiting_project, "draft")
    assert client.status(waiting.id).state == "queued"
    first.kill()                                   # SIGKILL: no chance to clean up

    second = daemon_factory()
    client = second.client(timeout=60)
    assert client.status(interrupted.id).state in ("queued", "running")
    finished = client.wait(interrupted.id)
    assert (finished.state, finished.attempts) == ("done", 2)
    after_wait = client.wait(waiting.id)
    assert (after_wait.state, after_wait.attempts) == ("done", 1)
    after = client.download(earlier.id, "video.mp4", tmp_path / "after.mp4")
    assert after.path.read_bytes() == before.path.read_bytes()
    assert after.sha256 == before.sha256
    assert [j.state for j in client.jobs()] == ["done", "done", "done"]


def test_a_clean_stop_requeues_the_running_job_and_announces_itself(daemon_factory, projects,
                                                                    watch_until):
    first = daemon_factory()
    client = first.client(timeout=60)
    job = client.submit(projects.long_audio(20), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    events = client.watch(job.id)
    next(events)                                    # subscribed again; the job is running
    first.proc.send_signal(15)                      # SIGTERM
    with pytest.raises(DaemonDied, match="stopped"):
        for _ in events:
            pass
    assert first.proc.wait(60) == 0

    second = daemon_factory()
    client = second.client(timeout=60)
    final = client.wait(job.id)
    assert (final.state, final.attempts) == ("done", 1)
