"""One full render through a running daemon, as a user's client sees it: per-phase wall time.

Start the daemon first (e.g. `./run_daemon.sh --random_weights full` on a GPU machine without the
downloads), then:

    python bench/daemon_e2e.py [--daemon tcp://127.0.0.1:8418] [--steps 8] [--renders 2] [--out DIR]

The project: two drawn people side by side, 16:9 480p, two lines carrying their own recorded
audio (tones, so no TTS voice is needed) that together last one 81-frame clip. The script submits
it as a full render over the ZeroMQ socket, timestamps every progress event, downloads the MP4,
probes it, and writes daemon_e2e_<date>.json (phases, wall time, the daemon's info, command).
With --renders N the same project is rendered N times with seeds 1..N (a new seed, so no clip is
reused from the cache): the first render pays for compiling the DiT, the later ones show the
steady state.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.media.mp4 import probe  # noqa: E402
from shared import protocol as p  # noqa: E402
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements, save_project  # noqa: E402
from studio.client import DaemonClient  # noqa: E402


def portrait(skin: tuple[int, int, int], shirt: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (384, 512), (200, 205, 215))
    draw = ImageDraw.Draw(image)
    draw.ellipse((112, 80, 272, 280), fill=skin)
    draw.rectangle((72, 300, 312, 512), fill=shirt)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def recorded_line(seconds: float, freq: float) -> bytes:
    """A voiced-sounding recording: a tone with a 4 Hz syllable envelope."""
    rate = 16000
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    out = io.BytesIO()
    soundfile.write(out, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def project(settings: Settings) -> bytes:
    placements = default_placements(2)
    cast = [Person("Ana", portrait((224, 180, 150), (60, 90, 160)), Crop(0, 0, 1, 1), placements[0], "af_heart", "en"),
            Person("Ben", portrait((150, 110, 85), (160, 60, 60)), Crop(0, 0, 1, 1), placements[1], "am_adam", "en")]
    lines = [Line(0, "Did you see the sunrise?", audio=recorded_line(1.2, 180.0), pause_after=0.2),
             Line(1, "I did, the sky was orange.", audio=recorded_line(1.2, 120.0))]
    scene = Scene(cast, lines, "Two friends talk in a bright kitchen.", "", settings,
                  title="daemon e2e bench")
    return save_project(scene)


def wait_for_full_backend(client: DaemonClient, timeout_s: float) -> p.InfoReply:
    """The daemon's info once its multitalk backend is ready; says every 15 s what it waits on
    (a run cut short by a time limit then still shows how far start-up got)."""
    start = time.monotonic()
    last_said = start
    state = "no answer yet"
    while True:
        try:
            info = client.info()
            state = ", ".join(f"{b.name}={b.state}" for b in info.backends)
            if any(b.name == "multitalk" and b.state == "ready" for b in info.backends):
                return info
        except Exception as e:  # noqa: BLE001 - not up yet
            state = f"no answer yet ({type(e).__name__})"
        now = time.monotonic()
        if now - start > timeout_s:
            raise SystemExit(f"no ready multitalk backend after {timeout_s:.0f} s ({state})")
        if now - last_said >= 15:
            print(f"{now - start:6.0f}s waiting for the daemon: {state}", flush=True)
            last_said = now
        time.sleep(2)


def phases_from(events: list[dict]) -> list[dict]:
    """Consecutive runs of one phase → (phase, start, seconds), from the event timestamps."""
    runs: list[dict] = []
    for e in events:
        if not runs or runs[-1]["phase"] != e["phase"]:
            runs.append(dict(phase=e["phase"], start_s=e["t"], end_s=e["t"], events=0))
        runs[-1]["end_s"] = e["t"]
        runs[-1]["events"] += 1
    for a, b in zip(runs, runs[1:] + [None]):
        a["seconds"] = round((b["start_s"] if b else a["end_s"]) - a["start_s"], 2)
    return runs


def render_once(client: DaemonClient, project_bytes: bytes, mode: str, out: Path) -> dict:
    """Submit one render, print and timestamp its progress events, download its MP4 to
    out/daemon_e2e.mp4; its phases, wall time and events."""
    job = client.submit(project_bytes, mode)
    start = time.monotonic()
    events: list[dict] = []

    def record(event) -> None:
        if isinstance(event, p.ProgressEvent):
            events.append(dict(t=round(time.monotonic() - start, 3), phase=event.phase,
                               step=event.step, total=event.total, clip=event.clip,
                               message=event.message))
            print(f"{events[-1]['t']:8.2f}s {event.phase:10} {event.step}/{event.total} "
                  f"{event.message}", flush=True)

    final = client.wait(job.id, on_event=record)
    wall = time.monotonic() - start
    if final.state != "done":
        raise SystemExit(f"job {final.state}: {final.error}")
    client.download(job.id, "video.mp4", out / "daemon_e2e.mp4")
    return dict(job_wall_s=round(wall, 2), phases=phases_from(events), events=events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--daemon", default=p.DEFAULT_ADDRESS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--renders", type=int, default=1,
                        help="render the project this many times (seeds 1..N)")
    parser.add_argument("--text_guide", type=float, default=Settings.text_guide,
                        help="1 runs two passes per step (what distillation LoRAs use)")
    parser.add_argument("--audio_guide", type=float, default=Settings.audio_guide)
    parser.add_argument("--teacache", action="store_true")
    parser.add_argument("--resolution", default="480p", choices=("480p", "720p"))
    parser.add_argument("--draft", action="store_true",
                        help="a draft render instead (checks this harness on a CPU daemon)")
    parser.add_argument("--ready_timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with DaemonClient(args.daemon, timeout=60.0) as client:
        t0 = time.monotonic()
        info = wait_for_full_backend(client, args.ready_timeout)
        ready_s = time.monotonic() - t0
        mode = "draft" if args.draft else "full"
        renders = []
        for seed in range(1, args.renders + 1):
            settings = Settings(mode=mode, resolution=args.resolution, aspect="16:9",
                                steps=args.steps, text_guide=args.text_guide,
                                audio_guide=args.audio_guide, teacache=args.teacache, seed=seed)
            print(f"render {seed} of {args.renders} (seed {seed})", flush=True)
            renders.append(render_once(client, project(settings), mode, args.out))

    media = probe(args.out / "daemon_e2e.mp4")
    for i, render in enumerate(renders, 1):
        print(f"\nrender {i}: {'phase':<12}{'seconds':>9}")
        for run in render["phases"]:
            print(f"          {run['phase']:<12}{run['seconds']:>9.2f}")
        print(f"          {'job wall':<12}{render['job_wall_s']:>9.2f}")
    print(f"daemon ready after {ready_s:.1f} s")
    print(f"video: {media.width}x{media.height}, {media.frames} frames, {media.duration:.2f} s, "
          f"{media.video_codec}+{media.audio_codec}")
    record = dict(bench="daemon_e2e", date=datetime.date.today().isoformat(),
                  command=" ".join(["python"] + sys.argv), mode=mode, steps=args.steps,
                  resolution=args.resolution, text_guide=args.text_guide,
                  audio_guide=args.audio_guide, teacache=args.teacache,
                  daemon_ready_s=round(ready_s, 1), renders=renders,
                  video=dict(width=media.width, height=media.height, frames=media.frames,
                             duration=media.duration, video_codec=media.video_codec,
                             audio_codec=media.audio_codec),
                  info=repr(info)[:4000])
    path = args.out / f"daemon_e2e_{mode}_{args.resolution}_{record['date']}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
