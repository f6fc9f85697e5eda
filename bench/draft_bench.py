"""Speed of the CPU draft render: a two-person dialogue (30 s by default) at 480p 16:9, timed end
to end — composite, frames, H.264/AAC encoding, MP4 — from synthetic portraits, tones and text
(no TTS, no weights). Prints one Markdown table row and writes bench/results/draft_cpu.json.

    .venv/bin/python -m bench.draft_bench [--seconds 30] [--cores 2] [--repeat 3]

The requirement it checks: at least 10× faster than real time at 480p on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from daemon.media.mp4 import ffmpeg_exe, probe
from daemon.pipeline.draft import render_draft
from daemon.pipeline.progress import Reporter
from daemon.tts.timeline import MIX_RATE, SPEAKER_RATE, LineTiming, Soundtrack
from shared.compose import canvas_size
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements

RESULTS = Path(__file__).parent / "results" / "draft_cpu.json"

LINES = (
    "Did you see the sunrise this morning? The whole valley was glowing.",
    "I slept through it, sadly. Was it worth getting up that early?",
    "Absolutely. Next time I'm dragging you out of bed, no excuses.",
    "Fine, but only if there's coffee waiting for me at the top.",
)


def portrait(seed: int, shirt: tuple[int, int, int]) -> bytes:
    """A 360×480 stand-in photo: textured backdrop (so the encoder has real detail to code),
    face, eyes, mouth and shirt."""
    rng = np.random.default_rng(seed)
    height, width = 480, 360
    rows, cols = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    backdrop = np.stack([90 + 70 * rows, 100 + 50 * cols, 150 - 40 * rows], axis=-1)
    grain = Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8))
    grain = np.asarray(grain.filter(ImageFilter.GaussianBlur(1.5)), np.float64)
    image = Image.fromarray(np.clip(backdrop + 0.35 * (grain[..., None] - 128), 0, 255)
                            .astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((50, 340, 310, 480), fill=shirt)
    draw.ellipse((95, 80, 265, 330), fill=(222, 170, 138))
    draw.ellipse((135, 175, 165, 195), fill=(45, 32, 30))
    draw.ellipse((195, 175, 225, 195), fill=(45, 32, 30))
    draw.arc((145, 240, 215, 280), 20, 160, fill=(150, 60, 60), width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A voiced tone with a syllable-rate (4 Hz) envelope: enough to drive the level meter."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, 1) ** 2
    pitch = 120 + 40 * seed % 3 + 20 * np.sin(2 * np.pi * 0.7 * t)
    return (0.3 * envelope * np.sin(2 * np.pi * np.cumsum(pitch) / rate)).astype(np.float32)


def dialogue(seconds: float) -> tuple[Scene, Soundtrack]:
    placements = default_placements(2)
    cast = [Person(name=name, image=portrait(i, shirt), crop=Crop(0, 0, 1, 1),
                   placement=placements[i], voice="af_heart", lang="en-us")
            for i, (name, shirt) in enumerate((("Maya", (150, 45, 45)), ("Jonas", (40, 60, 150))))]
    mixed = np.zeros(round(seconds * MIX_RATE), np.float32)
    tracks = [np.zeros(round(seconds * SPEAKER_RATE), np.float32) for _ in cast]
    lines, timings = [], []
    start, k = 0.5, 0
    while start < seconds - 1.0:
        speaker, text = k % 2, LINES[k % len(LINES)]
        length = min(3.2, seconds - start - 0.3)
        lines.append(Line(speaker=speaker, text=text, pause_after=0.4))
        timings.append(LineTiming(line=k, speaker=speaker, start=start, end=start + length,
                                  text=text))
        for track, rate in ((mixed, MIX_RATE), (tracks[speaker], SPEAKER_RATE)):
            voice = speech_like(length, rate, k)
            track[round(start * rate):round(start * rate) + len(voice)] += voice
        start, k = start + length + 0.4, k + 1
    scene = Scene(cast=cast, lines=lines, settings=Settings(resolution="480p", aspect="16:9"),
                  title="Draft benchmark")
    return scene, Soundtrack(mixed=mixed, speakers=tracks, timings=timings, duration=seconds,
                             warnings=[])


def machine_info(cores: list[int]) -> dict:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    ffmpeg = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True)
    return {
        "cpu": model or platform.processor(),
        "cpus_on_machine": os.cpu_count(),
        "cpus_used": len(cores),
        "load_average_before": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ffmpeg": ffmpeg.stdout.splitlines()[0] if ffmpeg.stdout else "",
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="video length")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores to pin to (ffmpeg too)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args()

    available = sorted(os.sched_getaffinity(0))
    cores = available[:args.cores]
    os.sched_setaffinity(0, cores)   # inherited by ffmpeg
    info = machine_info(cores)
    scene, soundtrack = dialogue(args.seconds)
    width, height = canvas_size(scene.settings)

    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "draft.mp4"
        for _ in range(args.repeat):
            before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN)]
            start = time.perf_counter()
            render_draft(scene, soundtrack, out, Reporter())
            walls.append(time.perf_counter() - start)
            after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN)]
            cpus.append(sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
                            for a, b in zip(after, before)))
        media = probe(out)
        size_bytes = out.stat().st_size

    wall = statistics.median(walls)
    speed = media.duration / wall
    print("| resolution | video s | wall s | × real time |")
    print("|---|---|---|---|")
    print(f"| {width}×{height} | {media.duration:.1f} | {wall:.2f} | {speed:.1f}× |")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "draft render (CPU), two-person dialogue, 480p 16:9",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.draft_bench", *sys.argv[1:]]),
        "machine": info,
        "resolution": f"{width}x{height}",
        "video_seconds": media.duration,
        "frames": media.frames,
        "wall_seconds_median": round(wall, 3),
        "wall_seconds_all": [round(w, 3) for w in walls],
        "cpu_seconds_median": round(statistics.median(cpus), 3),
        "times_real_time": round(speed, 2),
        "mp4_bytes": size_bytes,
    }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
