"""The full MultiTalk render end to end on the CPU, from a tiny weights folder in the real layout.

The folder holds the fixture DiT and VAE (symlinked, as released: shards + index +
multitalk.safetensors, Wan2.1_VAE.pth) next to encoders built here in the official layouts,
because the fixture encoders are too narrow to feed the fixture DiT: its text_embedding reads
4096-wide T5 features, img_emb 1280-wide CLIP features and audio_proj 12 × 768 wav2vec2 features
(fixtures README). So the T5 here is 4096 wide with one block, the CLIP tower 1280 wide with two
blocks (one runs), the wav2vec2 12 layers × 768 with thin convolutions — all random.

Renders run at a 64×32 bucket with 2 sampling steps, 29-frame clips and 5 motion frames, so a
few seconds of dialogue make several clips in seconds.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from daemon.backends import InputError, JobInputs, select_backends
from daemon.config import Settings as DaemonSettings
from daemon.control import Control, Runtime
from daemon.media.mp4 import frame_count, probe
from daemon.models.clip import CLIP_CHECKPOINT
from daemon.models.loader import WeightsError
from daemon.models.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR
from daemon.pipeline.clip_cache import ClipCache
from daemon.pipeline.longvideo import plan_clips
from daemon.pipeline.models import (VAE_CHECKPOINT, WAN_FOLDER, WAV2VEC_FOLDER, ModelBundle,
                                    Placement, WeightPaths, synthetic_tokenizer,
                                    write_random_wav2vec)
from daemon.pipeline.multitalk import (MultiTalkBackend, MultiTalkPipeline, PipelineConfig,
                                       RenderResult, read_frames)
from daemon.pipeline.progress import Cancelled, Progress, Reporter
from daemon.tts import TTS
from daemon.tts.timeline import build_soundtrack
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "multitalk-tiny"
TINY_BUCKETS = {"480p": {0.5: (32, 64), 1.0: (32, 32), 2.0: (64, 32)}}
SIZE = (64, 32)                       # the 16:9 bucket above, (width, height)

pytestmark = pytest.mark.skipif(not (FIXTURES / "ckpt").is_dir(), reason=f"{FIXTURES} not present")


# ------------------------------------------------------------------------------ the weights

def _random_t5(dim: int, layers: int, heads: int, vocab: int, width: int, buckets: int) -> dict:
    g = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    state = {"token_embedding.weight": torch.randn(vocab, dim, generator=g),
             "norm.weight": torch.ones(dim)}
    for i in range(layers):
        p = f"blocks.{i}."
        state.update({p + "norm1.weight": torch.ones(dim), p + "norm2.weight": torch.ones(dim),
                      p + "attn.q.weight": rand(width, dim), p + "attn.k.weight": rand(width, dim),
                      p + "attn.v.weight": rand(width, dim), p + "attn.o.weight": rand(dim, width),
                      p + "ffn.gate.0.weight": rand(width, dim), p + "ffn.fc1.weight": rand(width, dim),
                      p + "ffn.fc2.weight": rand(dim, width),
                      p + "pos_embedding.embedding.weight": rand(buckets, heads)})
    return state


def _random_clip(dim: int, layers: int, patch: int, grid: int, mlp: int) -> dict:
    """XLMRobertaCLIP's state_dict layout: the visual tower plus a (stub) text tower."""
    g = torch.Generator().manual_seed(4)
    rand = lambda *shape: torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    state = {"log_scale": torch.tensor(4.6), "textual.token_embedding.weight": rand(10, 8),
             "visual.patch_embedding.weight": rand(dim, 3, patch, patch),
             "visual.cls_embedding": rand(1, 1, dim), "visual.pos_embedding": rand(1, 1 + grid ** 2, dim),
             "visual.pre_norm.weight": torch.ones(dim), "visual.pre_norm.bias": torch.zeros(dim),
             "visual.post_norm.weight": torch.ones(dim), "visual.post_norm.bias": torch.zeros(dim),
             "visual.head": rand(dim, 16)}
    for i in range(layers):
        p = f"visual.transformer.{i}."
        state.update({p + "norm1.weight": torch.ones(dim), p + "norm1.bias": torch.zeros(dim),
                      p + "attn.to_qkv.weight": rand(3 * dim, dim), p + "attn.to_qkv.bias": torch.zeros(3 * dim),
                      p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": torch.zeros(dim),
                      p + "norm2.weight": torch.ones(dim), p + "norm2.bias": torch.zeros(dim),
                      p + "mlp.0.weight": rand(mlp, dim), p + "mlp.0.bias": torch.zeros(mlp),
                      p + "mlp.2.weight": rand(dim, mlp), p + "mlp.2.bias": torch.zeros(dim)})
    return state


def _umt5_style_tokenizer(folder: Path) -> None:
    """A tokenizer.json laid out as umt5's: <pad> 0, </s> 1, <unk> 2, `$A </s>`."""
    words = ["▁two", "▁people", "▁talk", "▁a", "▁calm", "▁room", "▁blurry", "▁ugly"]
    folder.mkdir(parents=True)
    synthetic_tokenizer(words).save(str(folder / "tokenizer.json"))


def build_weights(root: Path) -> Path:
    """weights/ as a user has it: Wan2.1-I2V-14B-480P/ (+ multitalk.safetensors), wav2vec2."""
    wan = root / WAN_FOLDER
    wan.mkdir(parents=True)
    for file in (FIXTURES / "ckpt").iterdir():
        (wan / file.name).symlink_to(file)
    (wan / VAE_CHECKPOINT).symlink_to(FIXTURES / VAE_CHECKPOINT)
    torch.save(_random_t5(dim=4096, layers=1, heads=2, vocab=16, width=16, buckets=32),
               wan / T5_CHECKPOINT)
    torch.save(_random_clip(dim=1280, layers=2, patch=14, grid=2, mlp=32), wan / CLIP_CHECKPOINT)
    _umt5_style_tokenizer(wan / T5_TOKENIZER_DIR)
    write_random_wav2vec(root / WAV2VEC_FOLDER, {"intermediate_size": 32, "conv_dim": [32] * 7,
                                                 "num_conv_pos_embeddings": 4,
                                                 "num_conv_pos_embedding_groups": 16}, seed=5)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def bundle(weights) -> ModelBundle:
    return ModelBundle.load(WeightPaths.under(weights), Placement.for_device("cpu"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run slower on two threads than one; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pipeline(bundle: ModelBundle, cache: Path, motion_frames: int = 5) -> MultiTalkPipeline:
    return MultiTalkPipeline(bundle, ClipCache(cache),
                             PipelineConfig(motion_frames=motion_frames, audio_context_frames=8,
                                            buckets=TINY_BUCKETS, x264_preset="ultrafast"))


# ------------------------------------------------------------------------------ scenes

def portrait(colour) -> bytes:
    image = Image.new("RGB", (48, 64), colour)
    image.paste((255, 220, 190), (12, 12, 36, 40))          # a "face"
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def voice(seconds: float, freq: float) -> bytes:
    """A syllable-like tone: 16 kHz, amplitude-modulated at 4 Hz."""
    t = np.arange(round(seconds * 16000)) / 16000
    samples = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    out = io.BytesIO()
    soundfile.write(out, samples.astype(np.float32), 16000, format="WAV")
    return out.getvalue()


def scene(lines: list[Line], **settings) -> Scene:
    """Two people; the lines end with pause_after 0 so the dialogue ends with the last word."""
    placements = default_placements(2)
    cast = [Person("Ada", portrait((190, 90, 70)), Crop(0, 0, 1, 1), placements[0], "espeak:en-us", "en"),
            Person("Bo", portrait((60, 110, 190)), Crop(0, 0, 1, 1), placements[1], "espeak:en-us", "en")]
    base = dict(mode="full", steps=2, frame_num=29, seed=7, subtitles="none")
    return Scene(cast=cast, lines=lines, prompt="two people talk", negative_prompt="blurry ugly",
                 settings=Settings(**(base | settings)))


def render(pipe: MultiTalkPipeline, sc: Scene, out: Path, reporter: Reporter | None = None
           ) -> tuple[RenderResult, list[Progress]]:
    events: list[Progress] = []
    reporter = reporter or Reporter(events.append)
    out.mkdir(parents=True, exist_ok=True)
    return pipe.render(sc, build_soundtrack(sc, tts=None), out, reporter), events


def decoded(path: Path) -> bytes:
    return b"".join(frame.tobytes() for frame in read_frames(path, SIZE))


# ------------------------------------------------------------------------------ tests

def test_two_speaker_dialogue_renders_to_its_length_at_the_bucket_size(bundle, tmp_path):
    sc = scene([Line(0, "", audio=voice(1.0, 220), pause_after=0.2),
                Line(1, "", audio=voice(1.1, 330), pause_after=0)])
    result, events = render(pipeline(bundle, tmp_path / "cache"), sc, tmp_path / "job")

    soundtrack = build_soundtrack(sc, tts=None)
    frames = frame_count(len(soundtrack.mixed), soundtrack.mix_rate, 25)
    assert frames == 58                                       # 2.3 s at 25 fps
    # 29 frames, then 24 new ones per clip (5 motion frames): 29 + 24 ≥ 58 needs 3 clips
    assert result.clips == 3 and result.reused == [] and result.frames == frames
    info = probe(result.video)
    assert (info.width, info.height, info.frames, info.fps) == (64, 32, 58, 25.0)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert abs(info.duration - 58 / 25) < 0.03
    # each finished clip is a playable MP4 of its own frames and audio
    assert [probe(tmp_path / "job" / "clips" / f"clip_{k:03d}.mp4").frames for k in (1, 2, 3)] == [29, 24, 5]
    ready = [e.message for e in events if "clips/clip_" in e.message]
    assert ready == [f"clip {k} of 3: ready: clips/clip_{k:03d}.mp4" for k in (1, 2, 3)]
    steps = [(e.clip, e.step) for e in events if e.phase == "sample" and not e.message]
    assert steps == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert all(e.preview and e.preview[:2] == b"\xff\xd8" for e in events   # JPEG at the last step
               if e.phase == "sample" and not e.message and e.step == 2)


def test_a_compiled_model_says_once_per_video_size_that_its_first_step_compiles(bundle, tmp_path):
    pipe = pipeline(bundle, tmp_path / "cache")
    assert not pipe.compiled                  # CPU: eager; on one GPU the blocks are compiled
    pipe.compiled = True
    note = "compiling the model for this video size (once per daemon)"
    sc = scene([Line(0, "", audio=voice(1.0, 220), pause_after=0.2),
                Line(1, "", audio=voice(1.1, 330), pause_after=0)])
    result, events = render(pipe, sc, tmp_path / "a")
    assert result.clips == 3                  # the same size for every clip: one note
    assert [e.message for e in events if note in e.message] == [f"clip 1 of 3: {note}"]
    _, events = render(pipe, replace(sc, settings=replace(sc.settings, seed=8)), tmp_path / "b")
    assert not [e for e in events if note in e.message]
    _, events = render(pipe, replace(sc, settings=replace(sc.settings, aspect="1:1")), tmp_path / "c")
    assert [e.message for e in events if note in e.message] == [f"clip 1 of 3: {note}"]


def test_the_same_seed_gives_the_same_frames_and_another_seed_other_frames(bundle, tmp_path):
    sc = scene([Line(0, "", audio=voice(0.5, 220)), Line(1, "", audio=voice(0.3, 330), pause_after=0)])
    first, _ = render(pipeline(bundle, tmp_path / "c1"), sc, tmp_path / "a")
    again, _ = render(pipeline(bundle, tmp_path / "c2"), sc, tmp_path / "b")
    other, _ = render(pipeline(bundle, tmp_path / "c3"), replace(sc, settings=replace(sc.settings, seed=8)),
                      tmp_path / "c")
    assert first.clips == 1 and first.reused == again.reused == []
    assert decoded(first.video) == decoded(again.video)
    assert decoded(first.video) != decoded(other.video)


def test_cancel_stops_at_the_next_step_and_keeps_finished_clips(bundle, tmp_path):
    sc = scene([Line(0, "", audio=voice(1.0, 220)), Line(1, "", audio=voice(1.0, 330), pause_after=0)])
    events: list[Progress] = []
    checks = []

    def cancelled() -> bool:
        checks.append(sum(1 for e in events if e.phase == "sample" and e.step and not e.message))
        return checks[-1] == 3            # the first step of clip 2 is done

    pipe = pipeline(bundle, tmp_path / "cache")
    with pytest.raises(Cancelled):
        pipe.render(sc, build_soundtrack(sc, tts=None), tmp_path / "job", Reporter(events.append, cancelled))
    last = [(e.clip, e.step) for e in events if e.phase == "sample" and e.step and not e.message][-1]
    assert last == (2, 1)
    assert not (tmp_path / "job" / "video.mp4").exists()
    # clip 1 was finished before the cancel: a new render starts from it
    result, _ = render(pipe, sc, tmp_path / "job2")
    assert result.reused == [0] and result.clips == 3


def test_editing_the_last_line_reuses_the_clips_before_it(bundle, tmp_path):
    # Lines at 0–0.8 s, 1.0–1.8 s and 2.6–3.0 s (frames 65–75); clips start every 24 frames.
    lines = [Line(0, "", audio=voice(0.8, 220), pause_after=0.2),
             Line(1, "", audio=voice(0.8, 330), pause_after=0.8),
             Line(0, "", audio=voice(0.4, 260), pause_after=0)]
    sc = scene(lines)
    edited = scene(lines[:2] + [Line(0, "", audio=voice(0.4, 400), pause_after=0)])   # new words
    assert [s.start for s in plan_clips(75, 29, 5)] == [0, 24, 48]
    # Clip 2 hears audio frames up to 63 (its last frame 52, window +2, context 8): not line 3,
    # which starts at frame 65. Clip 3 does.

    cache = tmp_path / "cache"
    first, _ = render(pipeline(bundle, cache), sc, tmp_path / "first")
    second, events = render(pipeline(bundle, cache), edited, tmp_path / "second")
    assert first.reused == [] and second.reused == [0, 1] and second.clips == 3
    assert "reused clips 1–2 of 3 from an earlier render" in second.warnings
    assert any(e.message == "clip 3 of 3: reused clips 1–2 of 3 from an earlier render" for e in events)
    assert probe(second.video).frames == 75

    # The reused clips are exactly what a fresh render of the edited scene makes.
    fresh, _ = render(pipeline(bundle, tmp_path / "fresh-cache"), edited, tmp_path / "fresh")
    assert fresh.reused == []
    assert decoded(second.video) == decoded(fresh.video)
    assert decoded(second.video) != decoded(first.video)


def test_a_continuation_clip_is_conditioned_on_the_last_25_frames_as_7_latent_frames(bundle, tmp_path):
    pipe = pipeline(bundle, tmp_path / "cache", motion_frames=25)
    sc = scene([Line(0, "", audio=voice(0.7, 220)), Line(1, "", audio=voice(0.5, 330), pause_after=0)],
               frame_num=33)
    result, _ = render(pipe, sc, tmp_path / "job")
    assert result.clips == 2 and probe(result.video).frames == 38     # 33 + 5 of the next 8

    span = plan_clips(38, 33, 25)[1]
    motion = torch.rand(3, 25, 32, 64) * 2 - 1
    y, motion_latent = pipe.encode_condition(motion, span)
    assert y.shape == (1, 20, 9, 4, 8) and motion_latent.shape == (16, 7, 4, 8)
    assert y[0, :4, :7].eq(1).all() and y[0, :4, 7:].eq(0).all()       # frame mask: 7 latent frames
    torch.testing.assert_close(y[0, 4:, :7], motion_latent, rtol=0, atol=0)

    # The motion latents are noised into the head of the latent at every step and are clean
    # after the last one.
    from daemon.pipeline.multitalk import ClipCondition, ClipProgress, SamplingSettings, TextContext
    from daemon.pipeline.sampler import sampling_timesteps
    s = SamplingSettings.from_scene(sc.settings, None)
    condition = ClipCondition(y, torch.zeros(1, 5, 1280), torch.zeros(1, 2, 33, 5, 12, 768), motion_latent)
    text = TextContext(torch.zeros(1, 3, 4096), torch.zeros(1, 3, 4096))
    generator = torch.Generator().manual_seed(0)
    timesteps = sampling_timesteps(2, s.shift)
    latent = pipe.prepare_latents(y, motion_latent, generator, timesteps[0])
    assert not torch.equal(latent[0, :, :7], motion_latent)
    out, _ = pipe.denoise(latent, text, condition, torch.ones(3, 4, 8), s, timesteps, generator,
                          ClipProgress(Reporter(), span, 2, 2), lead=False)
    torch.testing.assert_close(out[0, :, :7], motion_latent, rtol=0, atol=0)


def test_more_than_two_people_or_bad_clip_lengths_are_refused_before_rendering(bundle, tmp_path):
    pipe = pipeline(bundle, tmp_path / "cache")
    sc = scene([Line(0, "hello")])
    crowd = replace(sc, cast=sc.cast + [replace(sc.cast[0], name="Cy")])
    with pytest.raises(InputError, match="one or two people; this scene has 3"):
        pipe.check_inputs(crowd)
    with pytest.raises(InputError, match="frame_num: 31 must be 4n"):
        pipe.check_inputs(replace(sc, settings=replace(sc.settings, frame_num=31)))


def test_a_too_narrow_encoder_is_named_with_the_fix(weights, tmp_path):
    narrow = tmp_path / "weights"
    (narrow / WAN_FOLDER).mkdir(parents=True)
    for file in (weights / WAN_FOLDER).iterdir():
        (narrow / WAN_FOLDER / file.name).symlink_to(file)
    (narrow / WAN_FOLDER / T5_CHECKPOINT).unlink()
    (narrow / WAN_FOLDER / T5_CHECKPOINT).symlink_to(FIXTURES / T5_CHECKPOINT)       # 64 wide
    (narrow / WAV2VEC_FOLDER).symlink_to(weights / WAV2VEC_FOLDER)
    with pytest.raises(WeightsError, match="64-wide text features, the DiT reads 4096"):
        ModelBundle.load(WeightPaths.under(narrow), Placement.for_device("cpu"))


def test_the_daemon_offers_multitalk_when_the_weights_are_there(weights, tmp_path):
    settings = DaemonSettings(weights=weights, state=tmp_path / "state", backend="auto")
    runtime = Runtime(0, 1, torch.device("cpu"), Control(0, 1, None))
    tts = TTS(weights, tmp_path / "tts-cache")
    backends = select_backends(settings, runtime, tts)
    backend = backends.for_mode("full")
    assert isinstance(backend, MultiTalkBackend)
    assert [s.state for s in backends.states()] == ["ready", "ready"]
    # The daemon's pipeline has the real bucket presets: render through the backend at a tiny
    # size by giving it the test presets (same models, same backend code path).
    backend.pipeline.config = replace(backend.pipeline.config, buckets=TINY_BUCKETS,
                                      motion_frames=5, audio_context_frames=8)
    sc = scene([Line(0, "Hello there."), Line(1, "Hi!")], subtitles="sidecar")
    backend.check_inputs(sc)
    out = tmp_path / "work"
    out.mkdir()
    outputs = backend.render(JobInputs("job1", "full", sc, tmp_path / "project.zip"), out, Reporter())
    assert set(outputs.files) == {"video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav"}
    info = probe(outputs.files["video.mp4"])
    assert info.subtitle_codec == "mov_text" and info.audio_codec == "aac"
    assert "Ada: Hello there." in outputs.files["subtitles.srt"].read_text()
    assert abs(info.duration - outputs.duration) < 0.05


def test_burned_subtitles_darken_the_frames_where_a_line_is_spoken(bundle, tmp_path):
    # "Hi" 0–0.5 s, silence 0.5–0.8 s (frames 13–19), "Bye" 0.8–1.1 s; the second render reuses
    # the clip and only assembles the video again, with the subtitles drawn in.
    lines = [Line(0, "Hi", audio=voice(0.5, 220), pause_after=0.3),
             Line(1, "Bye", audio=voice(0.3, 330), pause_after=0)]
    pipe = pipeline(bundle, tmp_path / "cache")
    plain, _ = render(pipe, scene(lines), tmp_path / "plain")
    burned, _ = render(pipe, scene(lines, subtitles="burn"), tmp_path / "burned")
    assert burned.reused == [0] and probe(burned.video).subtitle_codec is None

    a = np.stack(list(read_frames(plain.video, SIZE))).astype(int)
    b = np.stack(list(read_frames(burned.video, SIZE))).astype(int)
    band = np.abs(a - b)[:, 18:].mean(axis=(1, 2, 3))           # the bottom rows, per frame
    assert band[5] > 30 and band[24] > 30                        # "Hi", "Bye": band and text
    assert band[15] < 12                                         # nobody speaks: re-encode only


def test_every_rank_meets_the_same_progress_checks(bundle, tmp_path):
    """Each check is a collective on several ranks: rank 0 (files) and a follower (none) must
    call it equally often, or the daemon deadlocks."""
    sc = scene([Line(0, "", audio=voice(0.8, 220)), Line(1, "", audio=voice(0.6, 330), pause_after=0)])
    soundtrack = build_soundtrack(sc, tts=None)
    counts = {}
    for rank, out in (("follower", None), ("lead", tmp_path / "job")):
        checks = []
        reporter = Reporter(None, lambda: checks.append(1) or False)
        result = pipeline(bundle, tmp_path / "cache").render(sc, soundtrack, out, reporter)
        counts[rank] = (len(checks), result.clips, result.reused, result.video is None)
    # 2 clips × (1 + 2 steps) + 1 before the mux, on both; only the lead made a file
    assert counts == {"follower": (7, 2, [], True), "lead": (7, 2, [], False)}
