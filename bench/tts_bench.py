"""How fast a one-line preview is: espeak-ng and Kokoro, cold (synthesized) and cached.

    .venv/bin/python bench/tts_bench.py                      # CPU, weights/ if present
    .venv/bin/python bench/tts_bench.py --device cuda --save # also writes bench/results/*.json
    .venv/bin/python bench/tts_bench.py --threads 2,8,16     # Kokoro at each torch thread count

Targets (issue "Voices and the dialogue soundtrack"): a ≤20-word preview in < 0.3 s with
espeak-ng and < 1 s with Kokoro on a CPU. Without weights/Kokoro-82M the Kokoro rows use a
randomly initialized Kokoro-82M (the real config, the same 81.8 M parameters and the same
compute per output frame) whose duration head is pinned to FRAMES_PER_SYMBOL frames per phoneme
symbol, about the real model's speaking rate; the table says which one ran.

Kokoro's floor on a CPU is arithmetic: its decoder and iSTFTNet generator take about 54 GFLOP
(fp32 convolutions) per second of audio, so a 9-second line needs about 490 GFLOP. A 2-core AVX2
CPU does about 150 GFLOP/s (2 threads, sgemm): 3.2 s at best; under 1 s needs roughly 16 cores.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import shlex
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


ESPEAK_ROWS = (("espeak-ng", "espeak:en-us+f3", "en"), ("espeak-ng", "espeak:cmn", "zh"))
KOKORO_ROWS = (("kokoro", "af_heart", "en"), ("kokoro", "zf_xiaoxiao", "zh"))
WARM_UP = {"en": "Warm up.", "zh": "你好。"}


def thread_counts(text: str) -> list[int]:
    """'--threads 2,8,16' → [2, 8, 16]; '' → torch's default count."""
    if not text:
        return [torch.get_num_threads()]
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--threads {text!r}: expected counts like 2 or 2,8,16") from None
    if any(count < 1 for count in counts):
        raise SystemExit(f"--threads {text!r}: every count must be at least 1")
    return counts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure_rows(tts: TTS, rows: tuple, threads: int | None) -> list[dict]:
    measured = []
    for backend, voice, lang in rows:
        tts.synthesize(WARM_UP[lang], voice)
        load = os.getloadavg()[0]
        measured.append({"backend": backend, "lang": lang, "threads": threads,
                         **measure(tts, voice, LINES[lang]), "load_average_1min": load})
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="",
                        help="torch thread counts for the Kokoro rows, e.g. 2,8,16 "
                             "(default: torch's own, one per core)")
    parser.add_argument("--save", action="store_true", help="write bench/results/tts_*.json")
    args = parser.parse_args()
    counts = thread_counts(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights
        kokoro_kind = "real weights"
        if not (weights / "Kokoro-82M" / "kokoro-v1_0.pth").is_file():
            weights = Path(scratch) / "weights"
            random_kokoro(weights / "Kokoro-82M", ["af_heart", "zf_xiaoxiao"])
            kokoro_kind = f"random weights, {FRAMES_PER_SYMBOL} frames/symbol"
        rows, load_s = [], {}
        for threads in counts:
            torch.set_num_threads(threads)
            # A fresh cache per thread count: every Kokoro row must synthesize.
            tts = TTS(weights, Path(scratch) / f"cache-{threads}", device=args.device)
            start = time.perf_counter()
            tts.preload()
            load_s[threads] = time.perf_counter() - start
            if not rows:
                rows += measure_rows(tts, ESPEAK_ROWS, None)   # a subprocess: no torch threads
            rows += measure_rows(tts, KOKORO_ROWS, threads)

    device = args.device if args.device != "cpu" else f"cpu: {cpu_model()}, {os.cpu_count()} cores"
    print(f"TTS preview bench — {platform.node()} — {device} — torch {torch.__version__} — "
          f"Kokoro: {kokoro_kind}")
    print("Kokoro load + G2P preload: " +
          ", ".join(f"{seconds:.2f} s ({threads} threads)" for threads, seconds in load_s.items()))
    print()
    print(f"{'backend':<10} {'lang':<4} {'voice':<16} {'threads':>7} {'words':>5} {'cold s':>8} "
          f"{'RTF':>6} {'cached s':>9} {'load':>5}")
    for row in rows:
        threads = "-" if row["threads"] is None else row["threads"]
        print(f"{row['backend']:<10} {row['lang']:<4} {row['voice']:<16} {threads:>7} "
              f"{row['words']:>5} {row['cold_s']:>8.3f} {row['cold_rtf']:>6.3f} "
              f"{row['cached_s']:>9.4f} {row['load_average_1min']:>5.1f}")
    print("\nwords: words (English) or characters (Chinese) of the longest line; "
          "cold = synthesized, median of 3 lines; RTF = seconds / seconds of audio; "
          "load: 1-minute load average before the row (other work skews CPU timings)")
    if args.save:
        out = ROOT / "bench" / "results" / f"tts_{platform.node()}_{args.device}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]), "device": device,
            "host": platform.node(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "thread_counts": counts, "kokoro": kokoro_kind,
            "kokoro_load_s": {str(threads): seconds for threads, seconds in load_s.items()},
            "rows": rows, "load_average_1min": os.getloadavg()[0]}, indent=1))
        print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
