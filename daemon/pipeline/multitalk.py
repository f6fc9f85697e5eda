"""The full MultiTalk render: scene + soundtrack → clip after clip → the final MP4.

The pipeline has the fixed shape of a diffusers pipeline, once per clip:

    check_inputs       the scene can be rendered here (people, clip length, memory)
    encode_text        T5: prompt and negative prompt (cached per prompt text)
    encode_audio       wav2vec2 windows per speaker for the clip (daemon.pipeline.preprocess)
    encode_image       CLIP of the clip's last conditioning frame (the reference, then motion)
    encode_condition   VAE latent of the conditioning video + the 4-channel frame mask → y
    prepare_latents    seeded noise; the motion latents noised into its head
    denoise            numbered Euler loop: 3 guidance passes (2 with text guide 1), optional
                       APG and TeaCache, a cancel check and a progress event every step
    decode             VAE → frames (on several ranks each decodes a band of rows,
                       daemon.parallel.vae_bands); colour matched to the reference
    assemble           the clips' MP4s → one MP4 with the dialogue audio and subtitles

Long dialogues are a chain of clips (daemon.pipeline.longvideo); each finished clip is written
as its own playable MP4 in the job's folder (clips/clip_NNN.mp4, announced in a progress
message) and stored in the clip cache (daemon.pipeline.clip_cache), so that a re-render after an
edit reuses every clip before the first one the edit reaches.

Randomness: clip k draws its noise from a generator on the compute device seeded from
(seed, k), so a clip depends only on what its cache key holds and the same seed gives the same
video on the same device.

`MultiTalkBackend` (bottom) is what daemon.backends plugs in: `load_backend(settings, runtime,
tts)` builds it on every rank — the parallel groups, the DiT's sequence layout, FSDP shards and
the CFG-parallel guidance runner as the flags ask (daemon.parallel.setup) — and every rank
renders in lockstep, only rank 0 writing files.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import shutil
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import imageio_ffmpeg
import numpy as np
import soundfile
import torch
from PIL import Image, ImageDraw

from daemon.backends import InputError, JobInputs, RenderOutputs, check_line_audio
from daemon.media.mp4 import concat_mp4, frame_count, mux_audio, write_mp4, write_video
from daemon.models.dit_loader import read_dit_config
from daemon.models.lora import LoraSpec
from daemon.models.memory import RunConfig, plan as memory_plan
from daemon.parallel.groups import ParallelGroups
from daemon.parallel.guidance import GuidanceRunner
from daemon.parallel.setup import ParallelPlan, build_parallelism
from daemon.parallel.vae_bands import BandedVAE, RowBands
from daemon.pipeline.clip_cache import ClipCache, ClipKey, sha256_of
from daemon.pipeline.color import match_colors
from daemon.pipeline.draft import CJK_FONT_FILES, LATIN_FONT_FILES, FontBook, active_lines, wrap_text
from daemon.pipeline.longvideo import (MOTION_FRAMES, ClipSpan, frames_to_video, inject_motion,
                                       motion_latent_frames, plan_clips, video_to_frames)
from daemon.pipeline.models import (ModelBundle, Placement, RandomSizes, WeightPaths,
                                    compiles_blocks, describe_lora)
from daemon.pipeline.preprocess import (RESOLUTION_BUCKETS, Buckets, ClipAudio, clip_audio,
                                        condition_video, frame_mask, image_to_video,
                                        nearest_bucket, person_masks, snap_to_bucket)
from daemon.pipeline.progress import Progress, Reporter
from daemon.pipeline.sampler import (euler_step, guide_audio, guide_text_and_audio,
                                     sampling_timesteps, silent_audio)
from daemon.tts.subtitles import to_srt, to_vtt
from daemon.tts.timeline import MIX_RATE, Soundtrack, build_soundtrack
from shared.compose import canvas_size, compose
from shared.protocol import BackendState
from shared.scene import Scene, Settings

log = logging.getLogger(__name__)

FPS = 25
PREVIEW_EVERY_STEPS = 5
PREVIEW_MAX_WIDTH = 320
SUBTITLE_BAND_OPACITY = 0.6

# Adaptive projected guidance (official --use_apg defaults).
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 55.0
# TeaCache for the MultiTalk i2v model (official teacache_init, use_ret_steps=True): the
# polynomial that maps the relative L1 change of the blocks' modulation input e0 to an estimate
# of the change of their output, per resolution preset; the first 5 steps always run.
TEACACHE_COEFFICIENTS = {
    "480p": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    "720p": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}
TEACACHE_WARMUP_STEPS = 5
# Wan 2.1 latent → RGB (a public linear fit of the VAE decoder, used for cheap step previews).
LATENT_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861))
LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


class MultiTalkInputError(InputError):
    """The scene cannot be rendered by MultiTalk as it is; the message says what to change."""


# =============================================================================================
# Settings of one render


@dataclass(frozen=True)
class PipelineConfig:
    """How this daemon renders (not per scene)."""
    motion_frames: int = MOTION_FRAMES
    audio_context_frames: int = 50           # audio on each side of a clip wav2vec2 hears (2 s)
    buckets: Mapping[str, Buckets] = field(default_factory=lambda: RESOLUTION_BUCKETS)
    sample_shift: float | None = None        # daemon --sample_shift, when the scene sets none
    x264_preset: str = "veryfast"
    text_cache_size: int = 16


@dataclass(frozen=True)
class SamplingSettings:
    """What the scene's settings mean for sampling (all of it goes into the clip key)."""
    resolution: str
    steps: int
    shift: float
    text_guide: float
    audio_guide: float
    seed: int
    apg: bool
    teacache: bool
    teacache_threshold: float
    color_correction: bool
    frame_num: int

    @classmethod
    def from_scene(cls, settings: Settings, daemon_shift: float | None) -> "SamplingSettings":
        # The scene's own shift wins; then the daemon's --sample_shift; then the preset default.
        shift = settings.shift if settings.shift is not None else (
            daemon_shift if daemon_shift is not None else settings.effective_shift())
        return cls(settings.resolution, settings.steps, float(shift), settings.text_guide,
                   settings.audio_guide, settings.seed, settings.apg, settings.teacache,
                   settings.teacache_threshold, settings.color_correction, settings.frame_num)

    @property
    def two_pass(self) -> bool:
        """Text guide 1 (LoRA mode): cond and no-audio only."""
        return math.isclose(self.text_guide, 1.0)


@dataclass(frozen=True)
class Reference:
    """The render's starting image and person masks."""
    image: Image.Image           # snapped to the preset's bucket
    video: torch.Tensor          # [3, 1, H, W] in [-1, 1] on the device
    masks: torch.Tensor          # [3, H/8, W/8] person 1, person 2, background
    speakers: int

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


@dataclass(frozen=True)
class TextContext:
    cond: torch.Tensor           # [1, tokens, 4096] prompt
    null: torch.Tensor           # [1, tokens, 4096] negative prompt


@dataclass(frozen=True)
class ClipCondition:
    y: torch.Tensor              # [1, 20, F_lat, h, w]: frame mask (4) + VAE latent (16)
    image: torch.Tensor          # [1, 257, 1280] CLIP tokens
    audio: torch.Tensor          # [1, speakers, frame_num, 5, 12, 768]
    motion_latent: torch.Tensor | None   # [16, Fm, h, w] for continuation clips


@dataclass(frozen=True)
class RenderResult:
    video: Path | None           # None on ranks other than 0
    clips: int
    reused: list[int]            # 0-based indices of clips taken from the cache
    frames: int
    warnings: list[str]
    teacache_skipped: int = 0    # block passes TeaCache answered from its cache


# =============================================================================================
# Guidance extras: APG and TeaCache


class MomentumBuffer:
    """Running sum with momentum (official APG): r ← v + momentum·r."""

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.running: torch.Tensor | float = 0.0

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.running = value + self.momentum * self.running
        return self.running


def projected_guidance(diff: torch.Tensor, cond: torch.Tensor, momentum: MomentumBuffer,
                       norm_threshold: float = APG_NORM_THRESHOLD) -> torch.Tensor:
    """Adaptive projected guidance (arXiv 2410.02416, as the official implementation): the
    guidance difference, smoothed by momentum, its L2 norm capped at norm_threshold, and only
    its part orthogonal to the conditional prediction (eta 0). Norms are over all dims but the
    batch; the projection runs in float64."""
    diff = momentum.update(diff)
    dims = tuple(range(1, diff.dim()))
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    d64, c64 = diff.double(), cond.double()
    unit = c64 / c64.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
    parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
    return (d64 - parallel).to(diff.dtype)


class TeaCache:
    """One guidance pass's TeaCache (official `teacache`, use_ret_steps): reuse the transformer
    blocks' residual of an earlier step while the accumulated, polynomially rescaled relative L1
    change of their modulation input e0 stays under the threshold.

    It is the DiT's block cache (daemon.models.dit.BlockCache): the DiT asks `reuse(e0)` before
    its blocks (a residual to add instead of running them, or None) and hands the residual it
    computed to `store`. As in the official code each pass (cond, drop-text, uncond) has its own
    accumulated change, previous e0 and residual, and the first 5 steps of every pass run the
    blocks (official ret_steps = 5 × 3 calls). The official code tells the passes apart by a
    call counter modulo 3; here each pass has its own object, so the 2-pass (LoRA) mode is
    right too.

    Several ranks: the decision depends only on e0 (the same on every rank: same weights, same
    timestep) and on this object's history, so all ranks of a sequence-parallel group — and,
    under FSDP, every rank — skip the same forwards and their collectives stay matched.
    """

    def __init__(self, threshold: float, coefficients: Sequence[float],
                 warmup_steps: int = TEACACHE_WARMUP_STEPS):
        self.threshold = threshold
        self.coefficients = coefficients
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.skipped = 0
        self.accumulated = 0.0
        self.previous_e0: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def rescaled_change(self, e0: torch.Tensor) -> float:
        previous = self.previous_e0
        relative = ((e0 - previous).abs().mean() / previous.abs().mean()).item()
        return float(np.polyval(self.coefficients, relative))

    def reuse(self, e0: torch.Tensor) -> torch.Tensor | None:
        skip = False
        if self.calls >= self.warmup_steps and self.residual is not None:
            self.accumulated += self.rescaled_change(e0)
            skip = self.accumulated < self.threshold
        if not skip:
            self.accumulated = 0.0
        self.previous_e0 = e0.clone()
        self.calls += 1
        self.skipped += skip
        return self.residual if skip else None

    def store(self, residual: torch.Tensor) -> None:
        self.residual = residual


def combine_guidance(p: dict[str, torch.Tensor], s: SamplingSettings,
                     momentum: dict[str, MomentumBuffer]) -> torch.Tensor:
    """The guided velocity from the passes' predictions: classifier-free guidance, or APG with
    the same scales (official: cond + (s − 1)·APG(difference))."""
    cond = p["cond"]
    if s.two_pass:
        if s.apg:
            return cond + (s.audio_guide - 1) * projected_guidance(cond - p["drop_audio"], cond,
                                                                   momentum["audio"])
        return guide_audio(cond, p["drop_audio"], s.audio_guide)
    if s.apg:
        return (cond
                + (s.text_guide - 1) * projected_guidance(cond - p["drop_text"], cond, momentum["text"])
                + (s.audio_guide - 1) * projected_guidance(p["drop_text"] - p["uncond"], cond,
                                                           momentum["audio"]))
    return guide_text_and_audio(cond, p["drop_text"], p["uncond"], s.text_guide, s.audio_guide)


class PhaseTimer:
    """Wall time per phase of a render (seconds, one entry per occurrence). With `sync` the
    device is synchronised at each boundary, so queued GPU work is charged to its phase (the
    benchmark turns it on; renders leave it off and log approximate times)."""

    def __init__(self, device: torch.device, sync: bool = False):
        self.device = device
        self.sync = sync and device.type == "cuda"
        self.seconds: dict[str, list[float]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize(self.device)
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)

    def total(self, name: str) -> float:
        return sum(self.seconds.get(name, ()))

    def reset(self) -> None:
        self.seconds.clear()

    def summary(self) -> str:
        return ", ".join(f"{name} {sum(times):.1f} s" for name, times in self.seconds.items())


# =============================================================================================
# The pipeline


class MultiTalkPipeline:
    def __init__(self, models: ModelBundle, cache: ClipCache, config: PipelineConfig = PipelineConfig(),
                 guidance: GuidanceRunner | None = None, timer: PhaseTimer | None = None,
                 vae_bands: RowBands | None = None):
        """`guidance` runs a step's guidance passes (CFG-parallel over ranks when given one
        built on their groups; one after another by default). `timer` collects phase times.
        `vae_bands`: every rank encodes and decodes a band of rows (None: whole frames)."""
        self.models = models
        self.vae = models.vae if vae_bands is None else BandedVAE(models.vae, vae_bands)
        self.cache = cache
        self.config = config
        self.guidance = guidance or GuidanceRunner(ParallelGroups.single().guidance)
        self.timer = timer or PhaseTimer(models.placement.device)
        self.device = models.placement.device
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Compiled DiT blocks build a graph at each new (latent size, speakers) on first use.
        self.compiled = compiles_blocks(models.placement, models.dit.sequence)
        self._compiled_variants: set[tuple] = set()

    # -- check_inputs
    def check_inputs(self, scene: Scene) -> None:
        """Raise MultiTalkInputError naming what cannot be rendered here."""
        people = len(scene.cast)
        if people not in (1, 2):
            raise MultiTalkInputError(f"cast: MultiTalk animates one or two people; this scene has "
                                      f"{people} — keep two people in it, or make a draft render")
        if not scene.lines:
            raise MultiTalkInputError("lines: the scene has no lines — add at least one")
        s = scene.settings
        if s.resolution not in self.config.buckets:
            raise MultiTalkInputError(f"settings.resolution: {s.resolution!r} is not one of "
                                      f"{', '.join(self.config.buckets)}")
        motion = self.config.motion_frames
        if s.frame_num % 4 != 1 or s.frame_num <= motion:
            raise MultiTalkInputError(f"settings.frame_num: {s.frame_num} must be 4n+1 and more than "
                                      f"the {motion} frames each clip continues from (e.g. 81)")
        check_line_audio(scene, FPS, MultiTalkInputError)
        self._check_memory(s)

    def _check_memory(self, s: Settings) -> None:
        plan = self.models.memory_plan
        if plan is None:
            return
        width, height = self.reference_size(s)
        run = replace(plan.config, width=width, height=height, frames=s.frame_num)
        needed = memory_plan(self.models.dit.cfg, run)
        if not needed.fits:
            raise MultiTalkInputError(f"settings.resolution: {s.resolution} needs {needed.describe()} "
                                      f"— choose 480p, or restart the daemon with more GPUs")

    def reference_size(self, s: Settings) -> tuple[int, int]:
        """(width, height) of the video: the preset's bucket nearest the scene's canvas."""
        width, height = canvas_size(s)
        bucket_h, bucket_w = nearest_bucket(width, height, self.config.buckets[s.resolution])
        return bucket_w, bucket_h

    # -- the whole render
    def render(self, scene: Scene, soundtrack: Soundtrack, out_dir: Path | None,
               reporter: Reporter) -> RenderResult:
        """Render `scene` with its soundtrack. out_dir None: a follower rank (no files)."""
        self.check_inputs(scene)
        self.timer.reset()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        lead = out_dir is not None
        s = SamplingSettings.from_scene(scene.settings, self.config.sample_shift)
        warnings: list[str] = []
        reference = self.prepare_reference(scene)
        total = frame_count(len(soundtrack.mixed), soundtrack.mix_rate, FPS)
        spans = plan_clips(total, s.frame_num, self.config.motion_frames)
        if lead:
            self.cache.prune()
            (out_dir / "clips").mkdir(parents=True, exist_ok=True)
        text = self.encode_text(scene.prompt, scene.negative_prompt, reporter)
        static_key = self.static_key(s, scene, reference)

        reused: list[int] = []
        clip_videos: list[Path] = []
        motion: np.ndarray | None = None
        motion_sha, skipped = "", 0
        try:
            for span in spans:
                reporter.check()
                progress = ClipProgress(reporter, span, len(spans), s.steps)
                audio = self.encode_audio(soundtrack.speakers, span, progress)
                key = self.clip_key(static_key, span, audio, motion_sha)
                # Only a leading run of clips can be reused: later ones continue from new frames.
                cached = self.cache.get(key) if len(reused) == span.index else None
                if cached is not None:
                    reused.append(span.index)
                    motion, motion_sha, clip_video = cached.motion(), cached.motion_sha256, cached.video
                else:
                    if reused and len(reused) == span.index:
                        progress.note(reuse_message(reused, len(spans)))
                    clip_started = time.perf_counter()
                    frames, skips = self.render_clip(span, text, reference, audio, motion, s,
                                                     progress, lead)
                    log.info("clip %d of %d rendered in %.1f s", span.index + 1, len(spans),
                             time.perf_counter() - clip_started)
                    skipped += skips
                    motion = frames[-self.config.motion_frames:]
                    motion_sha = sha256_of(motion)
                    clip_video = None
                    if lead:
                        kept = frames[span.overlap:span.overlap + span.keep]
                        staged = out_dir / "clips" / f".clip_{span.index + 1:03d}.video.mp4"
                        with self.timer.phase("clip_write"):
                            write_video(iter(kept), FPS, reference.size, staged,
                                        preset=self.config.x264_preset)
                            clip_video = self.cache.put(key, staged, motion, span.keep).video
                if lead:
                    clip_videos.append(clip_video)
                    self.announce_clip(span, clip_video, soundtrack, out_dir, progress,
                                       reused=span.index in reused)
        finally:
            self.models.dit_to_host()
        if reused:
            warnings.append(reuse_message(reused, len(spans)))
            if len(reused) == len(spans):
                reporter.report(Progress(phase="sample", message=warnings[-1]))
        if s.teacache:       # a note with the job, as the reuse message is: what it bought
            passes = (len(spans) - len(reused)) * s.steps * (2 if s.two_pass else 3)
            warnings.append(f"TeaCache reused {skipped} of {passes} transformer passes")
        reporter.check()          # every rank: a last chance to cancel before the mux
        video = None
        if lead:
            with self.timer.phase("mux"):
                video = self.assemble(clip_videos, scene, soundtrack, reference.size, out_dir,
                                      reporter)
        log.info("render of %d clip(s), %d reused, in %.1f s: %s%s", len(spans), len(reused),
                 time.perf_counter() - started, self.timer.summary(), self.peak_memory_note())
        return RenderResult(video, len(spans), reused, total, warnings, skipped)

    def peak_memory_note(self) -> str:
        """'; peak GPU memory N GiB' (tensors allocated by torch on this rank) or '' on a CPU."""
        if self.device.type != "cuda":
            return ""
        return f"; peak GPU memory {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"

    # -- preprocessing
    def prepare_reference(self, scene: Scene) -> Reference:
        composite = compose(scene)
        image = snap_to_bucket(composite.image, self.config.buckets[scene.settings.resolution])
        speakers = len(scene.cast)
        masks = person_masks(composite.boxes, composite.image.size, image.size, speakers)
        return Reference(image, image_to_video(image).to(self.device), masks.to(self.device), speakers)

    def encode_text(self, prompt: str, negative: str, reporter: Reporter) -> TextContext:
        """T5 contexts of both prompts; each prompt text is encoded once per daemon."""
        missing = [p for p in dict.fromkeys([prompt, negative]) if p not in self._text_cache]
        if missing:
            reporter.report(Progress(phase="encode", message="text (T5)"))
            with self.timer.phase("text_encode"), torch.no_grad(), \
                    self.models.encoding(self.models.text.encoder):
                contexts = self.models.text.encode(missing)
            for text, context in zip(missing, contexts):
                self._text_cache[text] = context.to("cpu")
        for text in (prompt, negative):
            self._text_cache.move_to_end(text)
        while len(self._text_cache) > self.config.text_cache_size:
            self._text_cache.popitem(last=False)
        return TextContext(self._text_cache[prompt][None].to(self.device),
                           self._text_cache[negative][None].to(self.device))

    def encode_audio(self, tracks: Sequence[np.ndarray], span: ClipSpan,
                     progress: ClipProgress) -> ClipAudio:
        progress.note("audio features (wav2vec2)")
        with self.timer.phase("audio_features"), torch.no_grad():
            return clip_audio(self.models.audio, tracks, span, self.config.audio_context_frames)

    def encode_image(self, frame: torch.Tensor) -> torch.Tensor:
        """CLIP tokens [1, 257, 1280] of one frame [3, 1, H, W] in [-1, 1]."""
        with self.timer.phase("clip_encode"), torch.no_grad(), self.models.encoding(self.models.clip):
            return self.models.clip.encode_videos(frame[None])

    def encode_condition(self, frames: torch.Tensor, span: ClipSpan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """y [1, 20, F_lat, h, w] from the conditioning frames [3, m, H, W], and for continuation
        clips the motion latent: the first 1 + (m−1)/4 latent frames of the same encode."""
        video = condition_video(frames, span.frame_num)
        with self.timer.phase("vae_encode"), torch.no_grad():
            latent = self.vae.encode(video)                               # [16, F_lat, h, w]
        mask = frame_mask(span.condition_frames, span.frame_num, *latent.shape[2:]).to(latent)
        y = torch.cat([mask, latent])[None]
        motion = latent[:, :motion_latent_frames(span.overlap)] if span.overlap else None
        return y, motion

    # -- one clip
    def render_clip(self, span: ClipSpan, text: TextContext, reference: Reference,
                    audio: ClipAudio, motion: np.ndarray | None, s: SamplingSettings,
                    progress: ClipProgress, lead: bool) -> tuple[np.ndarray, int]:
        """The clip's frames, uint8 [frame_num, H, W, 3], and how many block passes TeaCache
        answered from its cache."""
        given = reference.video if motion is None else frames_to_video(motion).to(self.device)
        progress.note("image features (CLIP)")
        image = self.encode_image(given[:, -1:])
        progress.note("conditioning latents (VAE)")
        y, motion_latent = self.encode_condition(given, span)
        condition = ClipCondition(y, image, audio.windows[None].to(self.device), motion_latent)

        generator = torch.Generator(device=self.device).manual_seed(clip_seed(s.seed, span.index))
        timesteps = sampling_timesteps(s.steps, s.shift).to(self.device)
        latent = self.prepare_latents(y, motion_latent, generator, timesteps[0])
        with self.timer.phase("dit_placement"):
            self.models.dit_to_device()
        variant = (tuple(latent.shape), reference.speakers)
        if self.compiled and variant not in self._compiled_variants:
            self._compiled_variants.add(variant)
            progress.note("compiling the model for this video size (once per daemon)")
        latent, skipped = self.denoise(latent, text, condition, reference.masks, s, timesteps,
                                       generator, progress, lead)
        with self.timer.phase("dit_placement"):
            self.models.dit_to_host()
        progress.note("decoding frames (VAE)", step=s.steps)
        with torch.no_grad():
            with self.timer.phase("vae_decode"):
                video = self.vae.decode(latent[0])                      # [3, F, H, W]
            if s.color_correction:
                with self.timer.phase("color_correction"):
                    video = match_colors(video, reference.video[:, 0])
        return video_to_frames(video), skipped

    def prepare_latents(self, y: torch.Tensor, motion_latent: torch.Tensor | None,
                        generator: torch.Generator, t0: torch.Tensor) -> torch.Tensor:
        """Noise [1, 16, F_lat, h, w] (float32); a continuation's motion latents noised to t0."""
        shape = (1, self.models.vae.z_dim, *y.shape[2:])
        latent = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
        if motion_latent is not None:
            noise = torch.randn(motion_latent.shape, generator=generator, device=self.device)
            latent = inject_motion(latent, motion_latent, noise, t0)
        return latent

    def denoise(self, latent: torch.Tensor, text: TextContext, c: ClipCondition,
                masks: torch.Tensor, s: SamplingSettings, timesteps: torch.Tensor,
                generator: torch.Generator, progress: ClipProgress,
                lead: bool) -> tuple[torch.Tensor, int]:
        """The numbered Euler loop over `timesteps` (steps + 1 values, the last 0)."""
        silent = silent_audio(c.audio)
        if s.two_pass:
            passes = {"cond": (text.cond, c.audio), "drop_audio": (text.cond, silent)}
        else:
            passes = {"cond": (text.cond, c.audio), "drop_text": (text.null, c.audio),
                      "uncond": (text.null, silent)}
        branches = list(passes)
        # One TeaCache per pass, new for every clip (the official counter restarts per clip too).
        teacache = {b: TeaCache(s.teacache_threshold, TEACACHE_COEFFICIENTS[s.resolution])
                    for b in branches} if s.teacache else {}
        momentum = {"text": MomentumBuffer(APG_MOMENTUM), "audio": MomentumBuffer(APG_MOMENTUM)}
        steps = len(timesteps) - 1

        def forward(index: int, t: torch.Tensor) -> torch.Tensor:
            branch = branches[index]
            context, audio = passes[branch]
            return self.models.dit(latent, t[None], context, c.image, c.y, audio, masks,
                                   block_cache=teacache.get(branch))

        with torch.no_grad():
            for i in range(steps):
                progress.check()
                t, t_next = timesteps[i], timesteps[i + 1]
                with self.timer.phase("sample_step"):
                    predictions = self.guidance.run(lambda index: forward(index, t), len(passes),
                                                    latent)
                    velocity = combine_guidance(dict(zip(branches, predictions)), s, momentum)
                preview = None
                if lead and ((i + 1) % PREVIEW_EVERY_STEPS == 0 or i + 1 == steps):
                    preview = latent_preview(latent - velocity * (t / 1000))   # predicted x0
                latent = euler_step(latent, velocity, t, t_next)
                if c.motion_latent is not None:
                    noise = torch.randn(c.motion_latent.shape, generator=generator, device=self.device)
                    latent = inject_motion(latent, c.motion_latent, noise, t_next)
                progress.step(i + 1, preview)
        return latent, sum(cache.skipped for cache in teacache.values())

    # -- cache keys
    def static_key(self, s: SamplingSettings, scene: Scene, reference: Reference) -> ClipKey:
        """The part of every clip's key that is the same for the whole render."""
        key = ClipKey()
        key.add("model", self.models.identity).add("dit_dtype", str(self.models.placement.dit_dtype))
        for name, value in vars(s).items():
            key.add(f"settings.{name}", value)
        key.add("motion_frames", self.config.motion_frames)
        key.add("audio_context_frames", self.config.audio_context_frames)
        key.add("prompt", scene.prompt).add("negative_prompt", scene.negative_prompt)
        key.add("reference", np.asarray(reference.image)).add("masks", reference.masks)
        return key

    @staticmethod
    def clip_key(static: ClipKey, span: ClipSpan, audio: ClipAudio, previous_motion: str) -> str:
        key = ClipKey()
        key.add("render", static.hexdigest())
        key.add("clip", [span.index, span.start, span.frame_num, span.overlap, span.keep])
        key.add("audio_window", [audio.first_frame, audio.stop_frame]).add("audio_index", audio.index)
        key.add("audio_samples", [np.asarray(track) for track in audio.samples])
        key.add("previous_motion", previous_motion)
        return key.hexdigest()

    # -- files
    def announce_clip(self, span: ClipSpan, video: Path, soundtrack: Soundtrack, out_dir: Path,
                      progress: ClipProgress, reused: bool) -> Path:
        """The clip as a playable MP4 with its part of the dialogue, in the job's folder, so it
        can be watched before the whole video is done."""
        per_frame = soundtrack.mix_rate // FPS
        first = span.first_new_frame * per_frame
        audio = soundtrack.mixed[first:first + span.keep * per_frame]
        path = out_dir / "clips" / f"clip_{span.index + 1:03d}.mp4"
        mux_audio(video, audio, soundtrack.mix_rate, path)
        how = "reused from an earlier render" if reused else "ready"
        progress.note(f"{how}: clips/{path.name}", step=progress.steps)
        return path

    def assemble(self, clip_videos: list[Path], scene: Scene, soundtrack: Soundtrack,
                 size: tuple[int, int], out_dir: Path, reporter: Reporter) -> Path:
        """video.mp4: the clips joined with the dialogue audio; subtitles burned in or as a
        mov_text track when the scene asks for them (those two re-encode the frames)."""
        out = out_dir / "video.mp4"
        mode = scene.settings.subtitles
        reporter.report(Progress(phase="mux", message="joining the clips"))
        if mode == "none":
            joined = concat_mp4(clip_videos, out_dir / ".joined.mp4")
            mux_audio(joined, soundtrack.mixed, soundtrack.mix_rate, out)
            joined.unlink()
            return out
        frames: Iterator[np.ndarray] = (frame for path in clip_videos for frame in read_frames(path, size))
        srt = None
        if mode == "burn":
            total = frame_count(len(soundtrack.mixed), soundtrack.mix_rate, FPS)
            frames = SubtitleBurner(soundtrack.timings, size, total).burn(frames)
        else:
            srt = to_srt(soundtrack.timings, [person.name for person in scene.cast])
        return write_mp4(frames, FPS, size, soundtrack.mixed, soundtrack.mix_rate, out,
                         subtitles_srt=srt, preset=self.config.x264_preset)


# =============================================================================================
# Helpers


class ClipProgress:
    """Progress of one clip. Everything a clip does reports as phase "sample", so that the
    worker's ETA (rate of the phase so far) spans all clips, encode and decode included."""

    def __init__(self, reporter: Reporter, span: ClipSpan, clips: int, steps: int):
        self.reporter = reporter
        self.clip = span.index + 1
        self.clips = clips
        self.steps = steps

    def note(self, message: str, step: int = 0) -> None:
        self.reporter.report(Progress(phase="sample", step=step, total=self.steps, clip=self.clip,
                                      clips=self.clips, message=f"clip {self.clip} of "
                                                                f"{self.clips}: {message}"))

    def step(self, step: int, preview: bytes | None) -> None:
        self.reporter.report(Progress(phase="sample", step=step, total=self.steps, clip=self.clip,
                                      clips=self.clips, preview=preview))

    def check(self) -> None:
        self.reporter.check()


def reuse_message(reused: list[int], clips: int) -> str:
    return f"reused {describe_clips(reused)} of {clips} from an earlier render"


def clip_seed(seed: int, clip: int) -> int:
    """The generator seed of clip `clip` of a render seeded `seed` (distinct per clip)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{clip}".encode()).digest()[:8], "little") >> 1


def describe_clips(indices: list[int]) -> str:
    """0-based indices → 'clips 1–3' / 'clip 2' / 'clips 1–2, 4'."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a + 1}" if a == b else f"{a + 1}–{b + 1}" for a, b in runs]
    return ("clip " if len(indices) == 1 else "clips ") + ", ".join(parts)


def latent_preview(x0: torch.Tensor) -> bytes:
    """A small JPEG of the predicted clean latent's last frame through the linear latent→RGB fit
    (no VAE decode: a few microseconds)."""
    frame = x0[0, :, -1].float()                                          # [16, h, w]
    factors = torch.tensor(LATENT_RGB_FACTORS, device=frame.device)
    bias = torch.tensor(LATENT_RGB_BIAS, device=frame.device)
    rgb = torch.einsum("chw,cr->hwr", frame, factors) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(pixels)
    width = min(PREVIEW_MAX_WIDTH, image.width * 8)
    image = image.resize((width, max(1, round(image.height * width / image.width))), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


def read_frames(path: Path, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The frames of an MP4 as uint8 [H, W, 3] arrays."""
    width, height = size
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    next(reader)                                                         # the metadata
    for data in reader:
        yield np.frombuffer(data, np.uint8).reshape(height, width, 3)


class SubtitleBurner:
    """The lines being spoken, drawn at the bottom of each frame on a darkened band."""

    def __init__(self, timings, size: tuple[int, int], frames: int):
        self.timings = timings
        self.width, self.height = size
        self.active = active_lines(timings, frames, FPS)
        self.fonts = FontBook(LATIN_FONT_FILES, CJK_FONT_FILES)
        unit = min(size)
        self.font_size = max(10, round(unit / 18))
        self.margin = max(4, round(unit / 40))

    def burn(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for i, frame in enumerate(frames):
            texts = [self.timings[j].text for j in self.active[i] if self.timings[j].text.strip()]
            yield self.draw(frame, texts) if texts else frame

    def draw(self, frame: np.ndarray, texts: list[str]) -> np.ndarray:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        rows = [(row, font) for text in texts
                for font in [self.fonts.font_for(text, self.font_size)]
                for row in wrap_text(text, font, self.width - 4 * self.margin)]
        line_height = round(self.font_size * 1.3)
        top = max(0, self.height - 2 * self.margin - len(rows) * line_height)
        band = image.crop((0, top, self.width, self.height))
        image.paste(Image.eval(band, lambda v: int(v * (1 - SUBTITLE_BAND_OPACITY))), (0, top))
        y = top + self.margin
        for row, font in rows:
            draw.text((self.width / 2, y), row, font=font, fill=(255, 255, 255), anchor="ma")
            y += line_height
        return np.asarray(image)


# =============================================================================================
# The backend the daemon plugs in (daemon.backends)

WORK_FOLDER = "multitalk"          # under the daemon's state folder


class MultiTalkBackend:
    name = "multitalk"
    modes = ("full",)
    distributed = True

    def __init__(self, pipeline: MultiTalkPipeline, tts, *, rank: int = 0, world_size: int = 1,
                 share_dir: Path | None = None, parallel: str = ""):
        self.pipeline = pipeline
        self.tts = tts                    # rank 0 only
        self.rank = rank
        self.world_size = world_size
        self.share_dir = share_dir        # where rank 0 hands the soundtrack to the others
        self.parallel = parallel          # how the ranks share the work, for `info`

    def state(self) -> BackendState:
        models = self.pipeline.models
        detail = models.describe() + (f"; {self.parallel}" if self.world_size > 1 else "")
        return BackendState(name=self.name, state="ready", modes=list(self.modes), detail=detail,
                            models=["multitalk-14B", "umt5-xxl", "clip-vit-h-14", "wan2.1-vae",
                                    "chinese-wav2vec2-base"]
                                   + [f"lora {describe_lora(spec)}" for spec in models.loras])

    def check_inputs(self, scene: Scene) -> None:
        self.pipeline.check_inputs(scene)

    def render(self, job: JobInputs, out_dir: Path | None, reporter: Reporter) -> RenderOutputs:
        soundtrack = self._soundtrack(job, reporter)
        try:
            result = self.pipeline.render(job.scene, soundtrack, out_dir, reporter)
        finally:
            if self.rank == 0 and self.share_dir is not None:
                shutil.rmtree(self.share_dir / job.job_id, ignore_errors=True)
        if out_dir is None:
            return RenderOutputs(files={})
        names = [person.name for person in job.scene.cast]
        (out_dir / "subtitles.srt").write_text(to_srt(soundtrack.timings, names), encoding="utf-8")
        (out_dir / "subtitles.vtt").write_text(to_vtt(soundtrack.timings, names), encoding="utf-8")
        wav = io.BytesIO()
        soundfile.write(wav, soundtrack.mixed, MIX_RATE, format="WAV", subtype="PCM_16")
        (out_dir / "dialogue.wav").write_bytes(wav.getvalue())
        files = {name: out_dir / name
                 for name in ("video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav")}
        return RenderOutputs(files=files, warnings=list(soundtrack.warnings) + result.warnings,
                             duration=float(soundtrack.duration))

    def _soundtrack(self, job: JobInputs, reporter: Reporter) -> Soundtrack:
        """Rank 0 speaks the lines; with several ranks it hands the audio over through the
        shared state folder, and the next progress check (a collective every rank joins) is the
        point after which the file is complete."""
        if self.world_size == 1:
            return build_soundtrack(job.scene, self.tts, reporter)
        path = self.share_dir / job.job_id / "soundtrack.npz"
        if self.rank == 0:
            try:
                # Progress only: a cancel check here would be a collective the others are not in.
                soundtrack = build_soundtrack(job.scene, self.tts, Reporter(reporter.report))
                path.parent.mkdir(parents=True, exist_ok=True)
                staging = path.with_name(".soundtrack.npz")
                with open(staging, "wb") as f:
                    np.savez(f, mixed=soundtrack.mixed, speakers=np.stack(soundtrack.speakers),
                             duration=np.float64(soundtrack.duration))
                staging.replace(path)
            finally:
                reporter.check()      # the others wait here, made or not (then they find no file)
            return soundtrack
        reporter.check()
        if not path.is_file():
            raise RuntimeError(f"rank {self.rank}: rank 0 could not make the soundtrack of job "
                               f"{job.job_id} (its log says why)")
        with np.load(path) as data:
            return Soundtrack(data["mixed"], list(data["speakers"]), [], float(data["duration"]))


def load_backend(settings, runtime, tts) -> MultiTalkBackend:
    """Every rank, in the same order (daemon.config.Settings, daemon.control.Runtime, whose
    process groups exist): build the parallel groups the flags ask for, then load the models
    once — the DiT with this rank's sequence layout, sharded with --dit_fsdp, LoRAs merged; T5
    sharded with --t5_fsdp — and a pipeline whose guidance passes run CFG-parallel with
    --cfg_parallel."""
    paths = WeightPaths.under(settings.weights)
    plan = ParallelPlan.from_settings(settings)
    placement = model_placement(settings, runtime.device)
    sizes = getattr(RandomSizes, settings.random_weights)() if settings.random_weights else None
    dit_config = sizes.dit if sizes else read_dit_config(paths.wan)
    parallel = build_parallelism(plan, rank=runtime.rank, local_rank=settings.local_rank,
                                 device=runtime.device, num_heads=dit_config.num_heads,
                                 dtype=placement.dit_dtype)
    run = RunConfig(frames=settings.frame_num, world_size=settings.world_size,
                    dit_fsdp=settings.dit_fsdp, t5_fsdp=settings.t5_fsdp, fp8=settings.fp8,
                    cfg_parallel=settings.cfg_parallel)
    if sizes:
        log.warning("--random_weights %s: random models, no weight files; renders are noise",
                    sizes.label)
        models = ModelBundle.random(sizes, placement, sequence=parallel.sequence, fp8=settings.fp8)
    else:
        loras = [LoraSpec(lora.path, lora.scale) for lora in settings.loras]
        models = ModelBundle.load(paths, placement, run=run, loras=loras, sequence=parallel.sequence,
                                  dit_mesh=parallel.dit_mesh, t5_mesh=parallel.t5_mesh,
                                  fp8=settings.fp8)
    work = Path(settings.state) / WORK_FOLDER
    pipeline = MultiTalkPipeline(models, ClipCache(work / "clips"),
                                 PipelineConfig(sample_shift=settings.sample_shift),
                                 guidance=parallel.guidance, vae_bands=parallel.vae_bands)
    log.info("multitalk backend ready: %s; %s", models.describe(), plan.describe())
    return MultiTalkBackend(pipeline, tts, rank=runtime.rank, world_size=runtime.world_size,
                            share_dir=work / "jobs", parallel=plan.describe())


def model_placement(settings, device: torch.device) -> Placement:
    """Where the models live. A DiT sharded with --dit_fsdp stays on its GPU: its shard is what
    saves the memory that --offload_model or --num_persistent_param_in_dit would, and FSDP
    owns its parameters, so those two flags do not apply to it."""
    offload, persistent = settings.offload_model, settings.num_persistent_param_in_dit
    if settings.dit_fsdp and (offload or persistent is not None):
        if torch.device(device).type == "cuda":
            log.warning("--dit_fsdp: the sharded DiT stays on the GPU; --offload_model and "
                        "--num_persistent_param_in_dit are ignored")
        offload, persistent = False, None
    return Placement.for_device(device, offload_model=offload, persistent_dit_params=persistent)
