"""How fast a one-line preview is: espeak-ng and Kokoro, cold (synthesized) and cached.

    .venv/bin/python bench/tts_bench.py                      # CPU, weights/ if present
    .venv/bin/python bench/tts_bench.py --device cuda --save # also writes bench/results/*.json

Targets (issue "Voices and the dialogue soundtrack"): a ≤20-word preview in < 0.3 s with
espeak-ng and < 1 s with Kokoro on a CPU. Without weights/Kokoro-82M the Kokoro rows use a
randomly initialized Kokoro-82M (the real config, the same 81.8 M parameters and the same
compute per output frame) whose duration head is pinned to FRAMES_PER_SYMBOL frames per phoneme
symbol, about the real model's speaking rate; the table says which one ran.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from daemon.tts import TTS  # noqa: E402
from daemon.tts.kokoro import COMPONENTS  # noqa: E402

# Three different 20-word lines, so each cold run really synthesizes.
LINES = {
    "en": ["I was thinking we could take the early train tomorrow and have breakfast by the "
           "sea before the crowds arrive.",
           "Honestly, the best part of the trip was getting lost in that little market and "
           "finding the bakery nobody mentioned.",
           "If the weather holds up this weekend, let us finally paint the fence and then invite "
           "everyone over for dinner."],
    "zh": ["我们明天早上坐第一班火车去海边吃早饭，然后在人多之前散散步。",
           "说实话，这次旅行最好的部分是在小市场里迷路，还找到了一家面包店。",
           "如果这个周末天气好，我们就把篱笆刷好，然后请大家过来吃晚饭。"],
}
FRAMES_PER_SYMBOL = 3       # 75 ms per phoneme symbol ≈ 13 symbols/s, a natural speaking rate
FIXTURE_CONFIG = ROOT.parent / "shared" / "fixtures" / "kokoro" / "config.json"


def random_kokoro(folder: Path, voices: list[str]) -> None:
    """A weights/Kokoro-82M layout holding a random model (see the module docstring)."""
    from kokoro import KModel

    config = json.loads(FIXTURE_CONFIG.read_text())
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=empty)
    with torch.no_grad():
        head = model.predictor.duration_proj.linear_layer
        head.weight.zero_()
        p = FRAMES_PER_SYMBOL / config["max_dur"]
        head.bias.fill_(math.log(p / (1 - p)))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({name: getattr(model, name).state_dict() for name in COMPONENTS},
               folder / "kokoro-v1_0.pth")
    (folder / "voices").mkdir()
    for voice in voices:
        torch.save(torch.randn(510, 1, 256) * 0.2, folder / "voices" / f"{voice}.pt")


def measure(tts: TTS, voice: str, lines: list[str]) -> dict:
    cold, cold_rtf = [], []
    for line in lines:
        start = time.perf_counter()
        speech = tts.synthesize(line, voice)
        seconds = time.perf_counter() - start
        assert not speech.cached and speech.voice_used == voice, (speech.voice_used, speech.warning)
        cold.append(seconds)
        cold_rtf.append(seconds / speech.duration)
    cached = []
    for line in lines:
        start = time.perf_counter()
        assert tts.synthesize(line, voice).cached
        cached.append(time.perf_counter() - start)
    return {"voice": voice, "words": max(_words(line) for line in lines),
            "cold_s": statistics.median(cold), "cold_rtf": statistics.median(cold_rtf),
            "cached_s": statistics.median(cached)}


def _words(line: str) -> int:
    return len(line.split()) if " " in line else len(line)   # Chinese: characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--save", action="store_true", help="write bench/results/tts_*.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        kokoro_kind = "real weights"
        if not (weights / "Kokoro-82M" / "kokoro-v1_0.pth").is_file():
            weights = Path(scratch) / "weights"
            random_kokoro(weights / "Kokoro-82M", ["af_heart", "zf_xiaoxiao"])
            kokoro_kind = f"random weights, {FRAMES_PER_SYMBOL} frames/symbol"
        tts = TTS(weights, Path(scratch) / "cache", device=args.device)
        start = time.perf_counter()
        tts.preload()
        load_s = time.perf_counter() - start

        rows = []
        for backend, voice, lang in (("espeak-ng", "espeak:en-us+f3", "en"),
                                     ("espeak-ng", "espeak:cmn", "zh"),
                                     ("kokoro", "af_heart", "en"),
                                     ("kokoro", "zf_xiaoxiao", "zh")):
            tts.synthesize("Warm up.", voice) if lang == "en" else tts.synthesize("你好。", voice)
            rows.append({"backend": backend, "lang": lang, **measure(tts, voice, LINES[lang])})

    device = args.device if args.device != "cpu" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"TTS preview bench — {platform.node()} — {device} — Kokoro: {kokoro_kind} — "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"Kokoro load + G2P preload: {load_s:.2f} s\n")
    print(f"{'backend':<10} {'lang':<4} {'voice':<16} {'words':>5} {'cold s':>8} "
          f"{'RTF':>6} {'cached s':>9}")
    for row in rows:
        print(f"{row['backend']:<10} {row['lang']:<4} {row['voice']:<16} {row['words']:>5} "
              f"{row['cold_s']:>8.3f} {row['cold_rtf']:>6.3f} {row['cached_s']:>9.4f}")
    print("\nwords: words (English) or characters (Chinese) of the longest line; "
          "cold = synthesized, median of 3 lines; RTF = seconds / seconds of audio")
    if args.save:
        out = ROOT / "bench" / "results" / f"tts_{platform.node()}_{args.device}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "device": device, "host": platform.node(),
            "kokoro": kokoro_kind, "load_s": load_s, "rows": rows,
            # Other work on the machine skews CPU timings; the 1-minute load says how much.
            "load_average_1min": os.getloadavg()[0]}, indent=1))
        print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
