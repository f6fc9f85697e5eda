"""The job loop that runs on every rank.

Rank 0 leads: it takes the next job from the store (sleeping on the JobBoard while there is
none), tells the other ranks about it over the control channel, runs it, records the outcome and
publishes state changes and progress. The other ranks follow: they block in the control
broadcast until rank 0 sends a command, and during a job they meet rank 0 at every progress
check (`reporter.check()`), where one tiny collective carries every rank's status — go on, stop
(cancel or shutdown, from rank 0) or failed (from any rank) — so all ranks leave a job at the
same step. A rank whose part of a job raised joins the next check as failed; every rank then
abandons the job and rank 0 records the failing rank's message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from daemon.backends import Backend, Backends, BackendUnavailable, JobInputs, RenderOutputs
from daemon.config import FAULT_ENV, Settings
from daemon.control import (CONTINUE, END, FAILED, KEEPALIVE_S, STOP, Command, Control,
                            RankFailure)
from daemon.jobs import JobBoard, JobFiles, JobRecord, JobStore
from daemon.models.dit import DiTConfig
from daemon.models.memory import RunConfig, plan, suggest
from daemon.pipeline.progress import Cancelled, Progress, Reporter
from shared import protocol as p
from shared.compose import canvas_size
from shared.scene import ProjectError, Scene, load_project

log = logging.getLogger(__name__)

EVENT_INTERVAL_S = 0.1      # at most this often a progress event per job, besides phase changes
PREVIEW_INTERVAL_S = 1.0    # previews are the big part of an event: at most one per second


class ControlError(RuntimeError):
    """A collective between ranks failed (a rank died): the daemon cannot go on."""


class RanksFailed(RuntimeError):
    """Another rank's part of this job failed; every rank abandons the job."""

    def __init__(self, failures: list[RankFailure]):
        self.failures = failures
        super().__init__("; ".join(f"rank {f.rank} failed: {f.message}" for f in failures)
                         or "a rank failed")


class _Lockstep:
    """One job's agreement between the ranks, the same on every rank: each progress check is
    one collective, and the job ends with exactly one more (`close`) unless a check already
    ended it (stop or failure) — so no rank is ever a collective ahead of the others."""

    def __init__(self, control: Control):
        self.control = control
        self.over = False       # every rank knows the job has ended

    def check(self, status: int = CONTINUE) -> bool:
        """True: stop now (cancel or shutdown). Raises RanksFailed when some rank failed."""
        agreed = self._signal(status)
        if agreed == FAILED:
            self.over = True
            raise RanksFailed(self._gather(None))
        self.over = agreed in (STOP, END)
        return agreed == STOP

    def close(self, error: str | None = None) -> None:
        """The job's last agreement: END, or FAILED with this rank's `error`. Raises
        RanksFailed when only other ranks failed."""
        if self.over:
            return
        self.over = True
        if self._signal(FAILED if error is not None else END) == FAILED:
            failures = self._gather(error)
            if error is None:
                raise RanksFailed(failures)

    def _signal(self, status: int) -> int:
        try:
            return self.control.signal(status)
        except RuntimeError as e:
            raise ControlError(f"lost contact with the other ranks: {e}") from e

    def _gather(self, error: str | None) -> list[RankFailure]:
        try:
            return self.control.gather_failures(error)
        except RuntimeError as e:
            raise ControlError(f"lost contact with the other ranks: {e}") from e


class ProgressTracker:
    """Pipeline Progress → protocol ProgressEvents with an ETA, kept on the board for status
    replies and published to subscribers without flooding them."""

    def __init__(self, job_id: str, board: JobBoard, publish: Callable[[Any], None],
                 clock: Callable[[], float] = time.monotonic):
        self.job_id = job_id
        self.board = board
        self.publish = publish
        self.clock = clock
        self.started = clock()
        self._phase = None
        self._phase_started = 0.0
        self._first_done: tuple[float, int] | None = None   # (when, how many) at the first step
        self._last_event = float("-inf")
        self._last_preview = float("-inf")

    def __call__(self, progress: Progress) -> None:
        now = self.clock()
        new_phase = progress.phase != self._phase
        if new_phase:
            self._phase, self._phase_started = progress.phase, now
            self._first_done = None
        preview = progress.preview if progress.preview and len(progress.preview) <= p.MAX_PREVIEW_BYTES \
            else None
        event = p.ProgressEvent(
            job_id=self.job_id, phase=progress.phase[:32], step=max(progress.step, 0),
            total=max(progress.total, 0), clip=max(progress.clip, 0), clips=max(progress.clips, 0),
            message=progress.message[:p.MAX_MESSAGE_CHARS], eta_s=self._eta(progress, now),
            elapsed_s=now - self.started, preview=preview)
        self.board.post_progress(event)
        phase_done = progress.total > 0 and progress.step >= progress.total
        if new_phase or phase_done or now - self._last_event >= EVENT_INTERVAL_S:
            if preview is not None and now - self._last_preview >= PREVIEW_INTERVAL_S:
                self._last_preview = now
            elif preview is not None:
                event = dataclasses.replace(event, preview=None)
            self._last_event = now
            self.publish(event)

    def _eta(self, progress: Progress, now: float) -> float | None:
        """Seconds left in the current phase at the rate it has run since its first step
        (that one also carries one-off work: encoding, compiling the DiT on a daemon's first
        render, 28 s against 9.4 per step on an H100); until a second step, at the first's rate.
        For clip-based phases the phase spans all clips, so this covers the whole sampling."""
        if progress.total <= 0:
            return None
        if progress.clips > 0 and progress.clip > 0:
            done = (progress.clip - 1) * progress.total + progress.step
            whole = progress.clips * progress.total
        else:
            done, whole = progress.step, progress.total
        if done <= 0:
            return None
        if self._first_done is None:
            self._first_done = (now, done)
        first_at, first_done = self._first_done
        if done > first_done and now > first_at:
            rate = (now - first_at) / (done - first_done)
        elif now > self._phase_started:
            rate = (now - self._phase_started) / done
        else:
            return None
        return max(whole - done, 0) * rate


class Worker:
    def __init__(self, control: Control, backends: Backends, files: JobFiles, *,
                 store: JobStore | None = None, board: JobBoard | None = None,
                 publish: Callable[[Any], None] | None = None,
                 announce: Callable[[JobRecord], None] | None = None,
                 settings: Settings = Settings(), device: torch.device = torch.device("cpu")):
        self.control = control
        self.backends = backends
        self.files = files          # every rank reads a job's input from the shared state folder
        self.store = store          # rank 0 only, like the rest
        self.board = board
        self.publish = publish      # a ProgressEvent to subscribers
        self.announce = announce    # a job's new state to subscribers
        self.settings = settings    # parallel flags, for the memory advice after an OOM
        self.device = device
        self._inject_oom = settings.inject_fault == "gpu-oom"
        self._inject_follower_error = settings.inject_fault == "follower-error" and control.rank > 0

    def run(self) -> None:
        if self.control.rank == 0:
            self._lead()
        else:
            self._follow()

    # -- rank 0
    def _lead(self) -> None:
        while not self.board.stopping:
            with self.board.event_order:
                job = self.store.claim_next()
                if job is not None:
                    self.announce(job)
            if job is None:
                if not self.board.wait_for_work(KEEPALIVE_S):
                    self._command(Command("idle"))   # keepalive: a dead peer shows up here
                continue
            self._run_job(job)
        self._command(Command("shutdown"))

    def _command(self, command: Command) -> None:
        try:
            self.control.send_command(command)
        except RuntimeError as e:
            raise ControlError(f"lost contact with the other ranks: {e}") from e

    def _run_job(self, job: JobRecord) -> None:
        try:
            backend = self.backends.for_mode(job.mode)
        except BackendUnavailable as e:     # queued by an earlier daemon that had the backend
            self._finish(self.store.fail(job.id, str(e)))
            return
        log.info("job %s: running (%s, attempt %d)", job.id, backend.name, job.attempts)
        self._command(Command("run", job_id=job.id, mode=job.mode))
        sync = _Lockstep(self.control)
        tracker = ProgressTracker(job.id, self.board, self.publish)
        reporter = Reporter(tracker, lambda: self._check(sync, job.id))
        work = self.store.work_dir(job.id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            outputs = self._render(backend, job.id, job.mode, work, reporter)
            sync.close()
            record = self.store.complete(job.id, outputs.files, outputs.warnings, outputs.duration)
            log.info("job %s: done", job.id)
        except Cancelled:
            with contextlib.suppress(RanksFailed):      # the job ends cancelled either way
                sync.close()
            if self.board.stopping and not self.store.get(job.id).cancel_requested:
                record = self.store.requeue(job.id)
                log.info("job %s: interrupted by shutdown, queued again", job.id)
            else:
                record = self.store.mark_cancelled(job.id)
                log.info("job %s: cancelled", job.id)
        except ControlError:
            raise
        except Exception as e:
            sync.close(_failure_message(e))        # the other ranks abandon the job too
            # Partial outputs go first: on a full disk, that space lets the store record why.
            shutil.rmtree(work, ignore_errors=True)
            if self.board.stopping:
                # A stop signal reaches the whole process group, so a child (ffmpeg) may die
                # of it before our next check: not the job's fault.
                record = self.store.requeue(job.id)
                log.info("job %s: interrupted by shutdown (%s), queued again", job.id, e)
            elif isinstance(e, torch.OutOfMemoryError):
                log.error("job %s: out of GPU memory: %s", job.id, e)
                _release_gpu_memory()
                record = self.store.fail(job.id, self._out_of_memory_message(e, job))
            elif isinstance(e, RanksFailed):
                log.error("job %s failed on another rank: %s", job.id, e)
                record = self.store.fail(job.id, str(e))
            else:
                log.exception("job %s failed", job.id)
                message = _failure_message(e)
                note = self.store.disk_full_note(e)
                record = self.store.fail(job.id, f"{message} — {note}" if note else message)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._finish(record)

    def _check(self, sync: _Lockstep, job_id: str) -> bool:
        """The per-step check: go on, or stop (cancel or shutdown) on every rank together."""
        if self._inject_oom:
            self._inject_oom = False
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                f"{FAULT_ENV}=gpu-oom)")
        return sync.check(STOP if self.board.should_stop(job_id) else CONTINUE)

    def _out_of_memory_message(self, error: torch.OutOfMemoryError, job: JobRecord) -> str:
        """Why the job failed and, from the memory planner, what would need less memory."""
        first_line = (str(error).strip().splitlines() or ["out of memory"])[0][:300]
        try:
            scene = load_project(self.files.project_path(job.id).read_bytes())
        except (OSError, ProjectError):
            scene = None
        return out_of_memory_advice(first_line, self._run_config(scene),
                                    scene.settings.resolution if scene is not None else None)

    def _run_config(self, scene: Scene | None) -> RunConfig:
        """The memory planner's view of this daemon running `scene`."""
        s = self.settings
        run = RunConfig(world_size=s.world_size, dit_fsdp=s.dit_fsdp, t5_fsdp=s.t5_fsdp,
                        offload_model=s.offload_model,
                        persistent_dit_params=s.num_persistent_param_in_dit)
        if scene is not None:
            width, height = canvas_size(scene.settings)
            run = dataclasses.replace(run, width=width, height=height,
                                      frames=scene.settings.frame_num)
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            run = dataclasses.replace(run, gpu_bytes=int(total))
        return run

    def _render(self, backend: Backend, job_id: str, mode: str, work: Path | None,
                reporter: Reporter) -> RenderOutputs:
        path = self.files.project_path(job_id)
        scene = load_project(path.read_bytes())
        return backend.render(JobInputs(job_id, mode, scene, path), work, reporter)

    def _finish(self, record: JobRecord) -> None:
        self.announce(record)
        self.board.forget(record.id)

    # -- other ranks
    def _follow(self) -> None:
        while True:
            command = self.control.receive_command()
            if command.kind == "shutdown":
                return
            if command.kind != "run":
                continue
            sync = _Lockstep(self.control)
            try:
                backend = self.backends.for_mode(command.mode)
                if backend.distributed:
                    # Only rank 0 writes files: the others get no work folder.
                    reporter = Reporter(None, lambda: self._follower_check(sync))
                    self._render(backend, command.job_id, command.mode, None, reporter)
                else:
                    while not sync.over:        # mirror rank 0's checks until it ends the job
                        self._follower_check(sync)
                sync.close()
            except Cancelled:
                pass
            except RanksFailed as e:
                log.warning("rank %d: job %s abandoned: %s", self.control.rank, command.job_id, e)
            except ControlError:
                raise
            except Exception as e:
                log.exception("rank %d: job %s failed", self.control.rank, command.job_id)
                sync.close(_failure_message(e))

    def _follower_check(self, sync: _Lockstep) -> bool:
        if self._inject_follower_error:
            self._inject_follower_error = False
            raise RuntimeError(f"injected follower error ({FAULT_ENV}=follower-error)")
        return sync.check()


def out_of_memory_advice(error_line: str, run: RunConfig, resolution: str | None = None,
                         shape: DiTConfig = DiTConfig(), limit: int = 5) -> str:
    """A failed job's message after the GPU ran out of memory: what the planner expected for
    this run and which daemon configurations fit and need less memory (least intrusive first)."""
    expected = plan(shape, run)
    lines = [f"the GPU ran out of memory during this render ({error_line})."]
    if expected.fits:
        lines.append(f"The memory planner expected it to fit ({expected.describe()}): another "
                     "process may be using the GPU (check nvidia-smi), or this scene needs more "
                     "than planned.")
    else:
        lines.append(f"It needs more than the GPU has: {expected.describe()}.")
    options = [o for o in suggest(shape, run, limit=1000) if o.gpu_peak < expected.gpu_peak]
    if options:
        lines.append("Configurations that need less GPU memory (restart the daemon with their "
                     "flags, e.g. ./run_daemon.sh --nproc 2 --dit_fsdp):")
        lines += [f"  {o.describe()}" for o in options[:limit]]
    else:
        lines.append("No configuration of this daemon needs less GPU memory.")
    lines.append("Or make a draft render" + (", or render at 480p." if resolution == "720p" else "."))
    return "\n".join(lines)


def _release_gpu_memory() -> None:
    """Hand the allocator's cached blocks back after an OOM, so the next job starts clean."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _failure_message(error: Exception) -> str:
    text = str(error) or type(error).__name__
    # Domain errors carry the fix in their message; anything else is a bug worth naming.
    if isinstance(error, (ValueError, RuntimeError, OSError)) and type(error).__module__ != "builtins":
        return text
    return f"{type(error).__name__}: {text}"
