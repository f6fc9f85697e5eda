"""daemon.worker.ProgressTracker: pipeline Progress → protocol ProgressEvents with an ETA, the
latest kept for status replies, published without flooding subscribers."""
from __future__ import annotations

import pytest

from daemon.jobs import JobBoard
from daemon.pipeline.progress import Progress
from daemon.worker import EVENT_INTERVAL_S, PREVIEW_INTERVAL_S, ProgressTracker
from shared import protocol as p

JOB = "0123456789ab"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    board, published, clock = JobBoard(), [], Clock()
    tracker = ProgressTracker(JOB, board, published.append, clock)
    return tracker, board, published, clock


def test_the_eta_is_the_rest_of_the_phase_at_its_rate_so_far(setup):
    tracker, board, published, clock = setup
    tracker(Progress(phase="frames", step=0, total=100))
    clock.now += 2.0
    tracker(Progress(phase="frames", step=25, total=100))
    assert board.progress(JOB).eta_s == pytest.approx(6.0)     # 75 frames at 12.5 frames/s
    assert board.progress(JOB).elapsed_s == pytest.approx(2.0)


def test_clip_based_phases_count_every_clip(setup):
    tracker, board, _, clock = setup
    tracker(Progress(phase="sample", step=0, total=40, clip=1, clips=3))
    clock.now += 10.0
    tracker(Progress(phase="sample", step=20, total=40, clip=2, clips=3))
    # 60 of 120 steps in 10 s: 60 left.
    assert board.progress(JOB).eta_s == pytest.approx(10.0)


def test_the_eta_leaves_out_the_first_steps_one_off_work(setup):
    tracker, board, _, clock = setup
    tracker(Progress(phase="sample", step=0, total=40, clip=1, clips=1))
    clock.now += 28.0                    # encoding + compiling + the first step
    tracker(Progress(phase="sample", step=1, total=40, clip=1, clips=1))
    assert board.progress(JOB).eta_s == pytest.approx(39 * 28.0)
    clock.now += 9.5
    tracker(Progress(phase="sample", step=2, total=40, clip=1, clips=1))
    assert board.progress(JOB).eta_s == pytest.approx(38 * 9.5)
    clock.now += 9.0
    tracker(Progress(phase="sample", step=3, total=40, clip=1, clips=1))
    assert board.progress(JOB).eta_s == pytest.approx(37 * 9.25)
    tracker(Progress(phase="mux"))       # a new phase starts its own count
    tracker(Progress(phase="frames", step=0, total=10))
    clock.now += 1.0
    tracker(Progress(phase="frames", step=5, total=10))
    assert board.progress(JOB).eta_s == pytest.approx(1.0)


def test_the_eta_is_unknown_without_a_total_or_any_step_done(setup):
    tracker, board, _, clock = setup
    tracker(Progress(phase="mux"))
    assert board.progress(JOB).eta_s is None
    tracker(Progress(phase="frames", step=0, total=50))
    clock.now += 1
    tracker(Progress(phase="frames", step=0, total=50))
    assert board.progress(JOB).eta_s is None


def test_events_are_throttled_but_phase_changes_and_phase_ends_always_go_out(setup):
    tracker, board, published, clock = setup
    tracker(Progress(phase="frames", step=0, total=100))          # new phase: sent
    for step in range(1, 10):
        clock.now += EVENT_INTERVAL_S / 10
        tracker(Progress(phase="frames", step=step, total=100))   # too soon: kept, not sent
    clock.now += 2 * EVENT_INTERVAL_S
    tracker(Progress(phase="frames", step=10, total=100))         # interval passed: sent
    tracker(Progress(phase="frames", step=100, total=100))        # phase end: sent
    tracker(Progress(phase="mux"))                                # new phase: sent
    assert [(e.phase, e.step) for e in published] == [("frames", 0), ("frames", 10),
                                                      ("frames", 100), ("mux", 0)]
    assert board.progress(JOB).phase == "mux"


def test_previews_are_sent_at_most_once_a_second_and_kept_for_status(setup):
    tracker, board, published, clock = setup
    jpeg = b"\xff\xd8small jpeg"
    tracker(Progress(phase="frames", step=0, total=100, preview=jpeg))
    clock.now += 2 * EVENT_INTERVAL_S
    tracker(Progress(phase="frames", step=5, total=100, preview=jpeg))
    clock.now += PREVIEW_INTERVAL_S
    tracker(Progress(phase="frames", step=10, total=100, preview=jpeg))
    assert [e.preview is not None for e in published] == [True, False, True]
    assert board.progress(JOB).preview == jpeg


def test_an_oversized_preview_is_dropped_and_long_messages_are_cut(setup):
    tracker, board, published, _ = setup
    tracker(Progress(phase="frames", step=1, total=2, message="m" * 10_000,
                     preview=b"x" * (p.MAX_PREVIEW_BYTES + 1)))
    event = published[0]
    assert event.preview is None and len(event.message) == p.MAX_MESSAGE_CHARS
    p.encode(event, 1)      # within every wire limit
