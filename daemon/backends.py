"""Which renderers this daemon offers, and how one job runs on each.

A backend turns a validated scene into the job's output files. Two exist:
- `draft`: the CPU animatic (daemon.pipeline.draft) over the TTS soundtrack — always available,
  needs no model weights, runs on rank 0 only (the other ranks just mirror its progress checks).
- `multitalk`: the full MultiTalk model, when weights/Wan2.1-I2V-14B-480P is present and the
  pipeline module `daemon.pipeline.multitalk` exists. That module provides
  `load_backend(settings, runtime, tts) -> Backend` (every rank calls it, in lockstep) and its
  backend runs on every rank (`distributed = True`), only rank 0 writing files. On several
  ranks it needs CUDA GPUs: a multi-rank CPU daemon serves drafts only and never builds the
  model's parallel groups.

Every backend has the same shape: `name`, `modes`, `distributed`, `state()` for `info`,
`check_inputs(scene)` called at submit (raises InputError naming the problem) and
`render(job, out_dir, reporter) -> RenderOutputs`, which calls `reporter.check()` between steps.
"""
from __future__ import annotations

import importlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import soundfile

from daemon.config import ConfigError, Settings
from daemon.pipeline.draft import render_draft
from daemon.pipeline.progress import Reporter
from daemon.tts.subtitles import to_srt, to_vtt
from daemon.tts.timeline import MIX_RATE, build_soundtrack
from shared.protocol import BackendState
from shared.scene import ProjectError, Scene, audio_duration

log = logging.getLogger(__name__)

MULTITALK_WEIGHTS = "Wan2.1-I2V-14B-480P"
MULTITALK_MODULE = "daemon.pipeline.multitalk"
DRAFT_FPS = 25


def check_line_audio(scene: Scene, fps: int, error: type[Exception] | None = None) -> None:
    """A line's own audio must decode and last at least one video frame: shorter cannot be shown."""
    error = error or InputError
    for i, line in enumerate(scene.lines):
        if line.audio is None:
            continue
        try:
            seconds = audio_duration(line.audio, f"lines[{i}].audio")
        except ProjectError as e:
            raise error(str(e)) from None
        if seconds < 1.0 / fps:
            raise error(f"lines[{i}].audio: lasts {seconds * 1000:.0f} ms, shorter than one video "
                        f"frame ({1000 / fps:.0f} ms); record a longer take")


class InputError(ValueError):
    """The scene is valid but this backend cannot render it; the message says what to change."""


class BackendUnavailable(RuntimeError):
    """No backend serves the requested mode here; the message says how to get one."""


@dataclass(frozen=True)
class JobInputs:
    job_id: str
    mode: str
    scene: Scene
    project_path: Path


@dataclass(frozen=True)
class RenderOutputs:
    files: dict[str, Path]              # artifact name → complete file in the work folder
    warnings: list[str] = field(default_factory=list)
    duration: float | None = None       # seconds of dialogue


class Backend(Protocol):
    name: str
    modes: tuple[str, ...]
    distributed: bool                   # every rank runs render() in lockstep

    def state(self) -> BackendState: ...
    def check_inputs(self, scene: Scene) -> None: ...
    def render(self, job: JobInputs, out_dir: Path, reporter: Reporter) -> RenderOutputs: ...


class DraftBackend:
    name = "draft"
    modes = ("draft",)
    distributed = False

    def __init__(self, tts):
        self.tts = tts          # None on ranks other than 0: they never render a draft

    def state(self) -> BackendState:
        return BackendState(name=self.name, state="ready", modes=list(self.modes),
                            detail=f"CPU animatic with the real dialogue audio, H.264 + AAC at "
                                   f"{DRAFT_FPS} fps; needs no model weights")

    def check_inputs(self, scene: Scene) -> None:
        check_line_audio(scene, DRAFT_FPS)

    def render(self, job: JobInputs, out_dir: Path, reporter: Reporter) -> RenderOutputs:
        soundtrack = build_soundtrack(job.scene, self.tts, reporter)
        reporter.check()
        render_draft(job.scene, soundtrack, out_dir / "video.mp4", reporter)
        (out_dir / "subtitles.srt").write_text(to_srt(soundtrack.timings), encoding="utf-8")
        (out_dir / "subtitles.vtt").write_text(to_vtt(soundtrack.timings), encoding="utf-8")
        wav = io.BytesIO()
        soundfile.write(wav, soundtrack.mixed, MIX_RATE, format="WAV", subtype="PCM_16")
        (out_dir / "dialogue.wav").write_bytes(wav.getvalue())
        files = {name: out_dir / name
                 for name in ("video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav")}
        return RenderOutputs(files=files, warnings=list(soundtrack.warnings),
                             duration=float(soundtrack.duration))


@dataclass(frozen=True)
class Missing:
    """A backend this daemon does not run, and why."""
    name: str
    modes: tuple[str, ...]
    reason: str
    failed: bool = False    # it was there but failed to load (state "error")

    def state(self) -> BackendState:
        return BackendState(name=self.name, state="error" if self.failed else "unavailable",
                            modes=list(self.modes), detail=self.reason)


class Backends:
    """The backends of this daemon by mode, and the ones it lacks with their reasons."""

    def __init__(self, available: list[Backend], missing: list[Missing]):
        self._by_mode = {mode: b for b in available for mode in b.modes}
        self._available = available
        self._missing = missing

    def for_mode(self, mode: str) -> Backend:
        backend = self._by_mode.get(mode)
        if backend is not None:
            return backend
        reasons = [m.reason for m in self._missing if mode in m.modes]
        raise BackendUnavailable(
            f"this daemon cannot make {mode} renders: {reasons[0] if reasons else 'no backend'}")

    def states(self) -> list[BackendState]:
        return [b.state() for b in self._available] + [m.state() for m in self._missing]


def select_backends(settings: Settings, runtime, tts) -> Backends:
    """Draft always; MultiTalk when its weights and pipeline are here (loaded on every rank)."""
    available: list[Backend] = [DraftBackend(tts)]
    missing: list[Missing] = []
    full = ("full",)
    weights = settings.weights / MULTITALK_WEIGHTS
    if settings.backend == "draft":
        missing.append(Missing("multitalk", full, "disabled with --backend draft; restart the "
                                                  "daemon without it for full renders"))
    elif runtime.world_size > 1 and runtime.device.type != "cuda":
        missing.append(Missing("multitalk", full,
                               f"this daemon runs {runtime.world_size} ranks on the CPU, where "
                               f"MultiTalk is not split over ranks; start one process "
                               f"(./run_daemon.sh --nproc 0) for CPU full renders, or one rank "
                               f"per GPU; draft renders work now"))
    elif not weights.is_dir() and not settings.random_weights:
        missing.append(Missing("multitalk", full,
                               f"{weights} not found — download the weights for full renders "
                               f"(weights/download.sh wan multitalk wav2vec, see weights/README.md)"
                               f"; draft renders work now"))
    else:
        try:
            module = importlib.import_module(MULTITALK_MODULE)
        except ModuleNotFoundError as e:
            if e.name != MULTITALK_MODULE:
                raise
            missing.append(Missing("multitalk", full,
                                   "the weights are present, but this daemon has no MultiTalk "
                                   "pipeline yet (not yet available); draft renders work now"))
        else:
            try:
                available.append(module.load_backend(settings, runtime, tts))
            except Exception as e:    # a bad or partial download must not take draft down too
                log.exception("loading the MultiTalk backend failed")
                missing.append(Missing("multitalk", full, f"failed to load: {e}", failed=True))
    if settings.backend == "multitalk" and len(available) == 1:
        raise ConfigError(f"--backend multitalk: {missing[0].reason}")
    return Backends(available, missing)
