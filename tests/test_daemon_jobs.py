"""daemon.jobs: the SQLite job store's life cycle, what a restart does to each state, and the
in-memory JobBoard."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from daemon.jobs import MAX_ATTEMPTS, JobBoard, JobStateError, JobStore
from shared.protocol import ProgressEvent


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "state")


def new_job(store: JobStore, project: bytes = b"PK-project", title: str = "t"):
    return store.create(project, mode="draft", backend="draft", title=title)


def finish_with_video(store: JobStore, job_id: str, data: bytes = b"mp4-bytes"):
    work = store.work_dir(job_id)
    work.mkdir(parents=True, exist_ok=True)
    (work / "video.mp4").write_bytes(data)
    return store.complete(job_id, {"video.mp4": work / "video.mp4"}, ["a warning"], 2.5)


def test_a_new_job_is_queued_with_its_project_stored_and_recorded(store):
    job = new_job(store, b"project-bytes", "My scene")
    assert (job.state, job.title, job.attempts) == ("queued", "My scene", 0)
    assert store.project_path(job.id).read_bytes() == b"project-bytes"
    assert job.artifacts["project.zip"].sha256 == hashlib.sha256(b"project-bytes").hexdigest()
    assert job.artifacts["project.zip"].size == len(b"project-bytes")


def test_jobs_run_in_submission_order_and_each_claim_counts_an_attempt(store):
    a, b = new_job(store), new_job(store)
    first = store.claim_next()
    assert (first.id, first.state, first.attempts) == (a.id, "running", 1)
    assert store.claim_next().id == b.id
    assert store.claim_next() is None


def test_complete_moves_the_file_into_place_and_records_size_and_hash(store):
    job = new_job(store)
    store.claim_next()
    done = finish_with_video(store, job.id, b"0123456789")
    assert (done.state, done.warnings, done.duration) == ("done", ["a warning"], 2.5)
    assert done.artifacts["video.mp4"].size == 10
    assert done.artifacts["video.mp4"].sha256 == hashlib.sha256(b"0123456789").hexdigest()
    assert store.artifact_path(job.id, "video.mp4").read_bytes() == b"0123456789"
    assert not (store.work_dir(job.id) / "video.mp4").exists()


def test_cancelling_a_queued_job_is_immediate_and_it_never_runs(store):
    job = new_job(store)
    assert store.request_cancel(job.id).state == "cancelled"
    assert store.claim_next() is None


def test_cancelling_a_running_job_only_flags_it(store):
    job = new_job(store)
    store.claim_next()
    after = store.request_cancel(job.id)
    assert (after.state, after.cancel_requested) == ("running", True)


def test_cancelling_a_finished_job_changes_nothing(store):
    job = new_job(store)
    store.claim_next()
    finish_with_video(store, job.id)
    assert store.request_cancel(job.id).state == "done"


def test_recover_requeues_an_interrupted_job_keeping_its_attempts(store):
    job = new_job(store)
    store.claim_next()
    report = JobStore(store.root).recover()      # as after kill -9
    assert report.requeued == [job.id]
    again = store.get(job.id)
    assert (again.state, again.attempts, again.started) == ("queued", 1, None)
    assert store.claim_next().attempts == 2


def test_recover_fails_a_job_interrupted_max_attempts_times(store):
    job = new_job(store)
    for _ in range(MAX_ATTEMPTS - 1):
        store.claim_next()
        assert store.recover().requeued == [job.id]
    store.claim_next()
    report = store.recover()
    failed = store.get(job.id)
    assert report.failed == [job.id]
    assert (failed.state, failed.attempts) == ("failed", MAX_ATTEMPTS)
    assert "stopped during this job 3 times" in failed.error


def test_recover_honours_a_cancel_asked_before_the_crash(store):
    job = new_job(store)
    store.claim_next()
    store.request_cancel(job.id)
    assert store.recover().cancelled == [job.id]
    assert store.get(job.id).state == "cancelled"


def test_recover_removes_half_written_outputs_and_orphan_inputs(store):
    job = new_job(store)
    store.claim_next()
    store.work_dir(job.id).mkdir()
    (store.work_dir(job.id) / "video.mp4").write_bytes(b"half")
    (store.job_dir(job.id) / "video.mp4.tmp").write_bytes(b"half")
    orphan = store.jobs_dir / "deadbeef0000"      # a submit killed before its row was written
    (orphan / "input").mkdir(parents=True)
    report = store.recover()
    assert report.removed_orphans == ["deadbeef0000"]
    assert not orphan.exists()
    assert not store.work_dir(job.id).exists()
    assert not (store.job_dir(job.id) / "video.mp4.tmp").exists()


def test_a_clean_shutdown_requeue_does_not_count_as_an_attempt(store):
    job = new_job(store)
    store.claim_next()
    assert (store.requeue(job.id).state, store.get(job.id).attempts) == ("queued", 0)


def test_finished_results_survive_a_reopen(store):
    job = new_job(store)
    store.claim_next()
    before = finish_with_video(store, job.id, b"video")
    reopened = JobStore(store.root)
    reopened.recover()
    assert reopened.get(job.id) == before


def test_delete_removes_the_row_and_the_files_but_not_a_running_job(store):
    running, done = new_job(store), new_job(store)
    store.claim_next()
    store.claim_next()
    finish_with_video(store, done.id)
    with pytest.raises(JobStateError, match="cancel it first"):
        store.delete(running.id)
    store.delete(done.id)
    assert store.get(done.id) is None
    assert not store.job_dir(done.id).exists()
    with pytest.raises(KeyError):
        store.delete(done.id)


def test_list_is_newest_first_and_counts_by_state(store):
    a, b, c = new_job(store), new_job(store), new_job(store)
    store.claim_next()
    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert store.queue_order() == [b.id, c.id]
    assert store.counts() == {"queued": 2, "running": 1, "done": 0, "failed": 0, "cancelled": 0}
    assert store.running_job() == a.id


def test_each_thread_uses_its_own_connection(store):
    job = new_job(store)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(store.get(job.id).state))
    thread.start()
    thread.join()
    assert seen == ["queued"]


def test_the_board_keeps_the_latest_progress_and_cancel_flags():
    board = JobBoard()
    board.post_progress(ProgressEvent(job_id="0123456789ab", phase="tts", step=1, total=2))
    board.post_progress(ProgressEvent(job_id="0123456789ab", phase="frames", step=5, total=9))
    assert board.progress("0123456789ab").phase == "frames"
    assert not board.should_stop("0123456789ab")
    board.request_cancel("0123456789ab")
    assert board.should_stop("0123456789ab")
    board.forget("0123456789ab")
    assert board.progress("0123456789ab") is None and not board.should_stop("0123456789ab")


def test_the_board_wakes_a_waiting_worker_and_remembers_an_early_notify():
    board = JobBoard()
    board.notify_work()                  # before anyone waits: not lost
    assert board.wait_for_work(timeout=5) is True
    assert board.wait_for_work(timeout=0.01) is False
    waiter = threading.Thread(target=lambda: board.wait_for_work(timeout=30))
    waiter.start()
    board.request_stop()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and board.stopping
