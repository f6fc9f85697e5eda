"""One full MultiTalk render end to end — scene to MP4 — with the wall time of every phase.

Random weights at the released sizes (multitalk-14B in bf16, umt5-xxl, CLIP ViT-H, the Wan
VAE, wav2vec2-base) built straight on the GPU — no weight files — then a two-person dialogue
rendered by the daemon's own pipeline (daemon.pipeline.multitalk) at a 480p bucket: text encode,
audio features, CLIP, VAE encode, every sampling step (3 guidance passes), VAE decode, colour
correction, the clip's MP4 and the final mux. The device is synchronised at every phase
boundary so each phase is charged its own GPU work. Peak GPU memory is reported.

usage: python bench/multitalk_e2e.py [--steps 4] [--seconds 3.2] [--resolution 480p]
                                     [--aspect 16:9] [--offload]
       TINY=1 python bench/multitalk_e2e.py     (CPU, tiny random sizes: checks the harness)
Prints a table; writes bench/results/multitalk_e2e_<gpu>.json (and $OUT/ when set) with the
GPU, date, torch version and exact command. A 40-step clip costs about
text + audio + clip + vae_encode + 40 × step + vae_decode + colour + write.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.media.mp4 import probe  # noqa: E402
from daemon.pipeline.clip_cache import ClipCache  # noqa: E402
from daemon.pipeline.models import ModelBundle, Placement, RandomSizes  # noqa: E402
from daemon.pipeline.multitalk import MultiTalkPipeline, PhaseTimer, PipelineConfig  # noqa: E402
from daemon.pipeline.progress import Reporter  # noqa: E402
from daemon.tts.timeline import build_soundtrack  # noqa: E402
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements  # noqa: E402

PEAK_TFLOPS = 790.0                 # measured bf16 GEMM ceiling on H100/H200 (PERF.md)
TINY_BUCKETS = {"480p": {0.5: (32, 64), 1.0: (32, 32), 2.0: (64, 32)}}
PHASES = ("text_encode", "audio_features", "clip_encode", "vae_encode", "sample_step",
          "vae_decode", "color_correction", "clip_write", "mux", "dit_placement")


def dit_flops(tokens: int) -> float:
    """PERF.md's closed form for one multitalk-14B forward: 28.1 GFLOP·L + 0.819 MFLOP·L²."""
    return 28.1e9 * tokens + 0.819e6 * tokens ** 2


def portrait(colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (384, 512), colour)
    draw = ImageDraw.Draw(image)
    draw.ellipse((112, 80, 272, 280), fill=(230, 190, 160))          # a face-like oval
    draw.rectangle((80, 300, 304, 512), fill=tuple(c // 2 for c in colour))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def speech_like(seconds: float, pitch: float, seed: int) -> bytes:
    """16 kHz voiced noise with syllable-rate amplitude: wav2vec2 sees speech-like energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * 16000)) / 16000
    voiced = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    samples = 0.2 * envelope * (voiced + 0.05 * rng.standard_normal(t.size))
    out = io.BytesIO()
    soundfile.write(out, samples.astype(np.float32), 16000, format="WAV")
    return out.getvalue()


def bench_scene(seconds: float, steps: int, resolution: str, aspect: str, frame_num: int) -> Scene:
    placements = default_placements(2)
    cast = [Person("Ada", portrait((170, 80, 60)), Crop(0, 0, 1, 1), placements[0], "espeak:en-us", "en"),
            Person("Bo", portrait((50, 90, 170)), Crop(0, 0, 1, 1), placements[1], "espeak:en-us", "en")]
    half = seconds / 2
    lines = [Line(0, "", audio=speech_like(half - 0.1, 180.0, 1), pause_after=0.1),
             Line(1, "", audio=speech_like(half, 120.0, 2), pause_after=0.0)]
    settings = Settings(mode="full", resolution=resolution, aspect=aspect, steps=steps, seed=1,
                        subtitles="none", frame_num=frame_num)
    return Scene(cast=cast, lines=lines, settings=settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (40 in production)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="dialogue length (default 3.2 s: one 81-frame clip; TINY 1.2 s)")
    parser.add_argument("--resolution", default="480p", choices=("480p", "720p"))
    parser.add_argument("--aspect", default="16:9")
    parser.add_argument("--offload", action="store_true",
                        help="--offload_model: the DiT visits the GPU only for sampling")
    parser.add_argument("--persistent", type=int, default=None, metavar="N",
                        help="--num_persistent_param_in_dit N: the rest of the DiT streams from "
                             "the host")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                        help="folder for the JSON record (default bench/results)")
    parser.add_argument("--no-files", action="store_true",
                        help="render as a follower rank does: no clip MP4s and no mux (for a "
                             "machine without ffmpeg)")
    opts = parser.parse_args()

    tiny = os.environ.get("TINY") == "1"
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    seconds = opts.seconds or (1.2 if tiny else 3.2)
    frame_num = 33 if tiny else 81
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    t0 = time.perf_counter()
    sizes = RandomSizes.tiny() if tiny else RandomSizes.full()
    placement = Placement.for_device(device, offload_model=opts.offload,
                                     persistent_dit_params=opts.persistent)
    bundle = ModelBundle.random(sizes, placement)
    build_s = time.perf_counter() - t0
    print(f"models: {bundle.describe()}; built in {build_s:.1f} s", flush=True)

    timer = PhaseTimer(device, sync=True)
    with tempfile.TemporaryDirectory(prefix="duet-e2e-") as tmp:
        config = PipelineConfig(buckets=TINY_BUCKETS) if tiny else PipelineConfig()
        pipeline = MultiTalkPipeline(bundle, ClipCache(Path(tmp) / "cache"), config, timer=timer)
        scene = bench_scene(seconds, opts.steps, opts.resolution, opts.aspect, frame_num)
        soundtrack = build_soundtrack(scene, tts=None)
        out = None if opts.no_files else Path(tmp) / "job"
        if out is not None:
            out.mkdir()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = pipeline.render(scene, soundtrack, out, Reporter())
        render_s = time.perf_counter() - t0
        if result.video is not None:
            info = probe(result.video)
            assert (info.frames, info.audio_codec) == (result.frames, "aac"), info
    peak_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0

    width, height = pipeline.reference_size(scene.settings)
    tokens = (frame_num - 1) // 4 + 1
    tokens *= (height // 16) * (width // 16)
    steps = timer.seconds.get("sample_step", [])
    step_median = statistics.median(steps[1:] or steps)      # the first step also warms up
    forwards_per_step = 2 if scene.settings.text_guide == 1 else 3
    phases = {name: round(timer.total(name), 3) for name in PHASES if name in timer.seconds}
    row = dict(resolution=f"{width}x{height}", frames=result.frames, clips=result.clips,
               tokens=tokens, steps=opts.steps, step_first_s=round(steps[0], 3),
               step_median_s=round(step_median, 3),
               forward_s=round(step_median / forwards_per_step, 3),
               phases_s=phases, render_s=round(render_s, 2), build_s=round(build_s, 1),
               peak_gib=round(peak_gib, 1),
               est_40_step_clip_s=round(render_s - sum(steps) + 40 * step_median, 1))
    if not tiny:
        flops = dit_flops(tokens)
        row.update(tflops=round(flops / (step_median / forwards_per_step) / 1e12, 1),
                   x_floor=round(step_median / forwards_per_step / (flops / (PEAK_TFLOPS * 1e12)), 2))

    print(f"\n{'phase':<20}{'seconds':>10}{'count':>7}")
    for name in PHASES:
        if name in timer.seconds:
            print(f"{name:<20}{timer.total(name):>10.3f}{len(timer.seconds[name]):>7}")
    print(f"{'sampling step':<20}{step_median:>10.3f}{'':>7}  (median; first {steps[0]:.3f})")
    print(f"{'render total':<20}{render_s:>10.3f}{'':>7}  {result.frames} frames {width}x{height}, "
          f"{result.clips} clip(s), {tokens} tokens")
    print(f"{'peak GPU memory':<20}{peak_gib:>9.1f}G")
    print(f"estimated 40-step clip: {row['est_40_step_clip_s']} s")

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    record = dict(bench="multitalk_e2e", gpu=gpu, date=datetime.date.today().isoformat(),
                  torch=torch.__version__, command=" ".join(["python"] + sys.argv),
                  tiny=tiny, offload_model=opts.offload, persistent_dit_params=opts.persistent,
                  files=not opts.no_files,
                  dit_dtype=str(bundle.placement.dit_dtype),
                  row=row)
    tag = "tiny" if tiny else gpu.replace(" ", "_").replace("/", "_")
    tag += "_offload" if opts.offload else ""
    tag += f"_persistent{opts.persistent}" if opts.persistent is not None else ""
    targets = [opts.results] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"multitalk_e2e_{tag}.json"
        path.write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
