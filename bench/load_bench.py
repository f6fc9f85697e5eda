"""Load on the daemon: many clients, each with its own DEALER socket, send info / status / list /
tts requests back to back for a while, as fast as replies come, while draft renders run. Prints
per-request-type reply latencies (p50 / p99 / max) and writes bench/results/load_cpu.json.

    .venv/bin/python -m bench.load_bench [--clients 50] [--seconds 60] [--procs 5]
                                         [--address tcp://127.0.0.1:8418]

Without --address it starts its own CPU daemon (empty weights: draft backend, espeak TTS) in a
temporary folder. Clients are threads spread over --procs processes, so the clients' own Python
work does not sit behind one GIL. A render is kept running the whole time: when one finishes the
next is submitted. `tts` is busy-limited by design (8 waiting, then `busy`): busy replies are
counted apart and not in the latencies. tests/test_reliability_load.py runs a short version.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from shared.scene import Crop, Line, Person, Scene, Settings, default_placements, save_project
from studio.client import DaemonClient, DaemonError, DaemonUnreachable, RequestFailed

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "load_cpu.json"
KINDS = ("info", "status", "list", "tts")
# Half of the tts requests repeat a line (served from the daemon's TTS cache, as when the
# studio replays a preview), half are new text (synthesized by espeak-ng).
REPEATED_LINES = ("Hello there.", "How are you today?", "Fine, thanks.", "See you soon.")
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Sample:
    kind: str
    outcome: str        # "ok", an error code ("busy", …) or "timeout"
    seconds: float


@dataclass
class KindStats:
    ok: int
    busy: int
    failed: int         # any other error or a timeout
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    per_s: float        # successful replies per second


@dataclass
class LoadResult:
    clients: int
    seconds: float
    stats: dict[str, KindStats]
    failures: dict[str, int] = field(default_factory=dict)   # "kind outcome" → count


def client_loop(address: str, job_id: str, seed: int, stop_at: float, out: list[Sample]) -> None:
    """One client: its own DEALER socket, one request after another until `stop_at`."""
    rng = random.Random(seed)
    with DaemonClient(address, timeout=REQUEST_TIMEOUT_S) as client:
        n = 0
        while time.monotonic() < stop_at:
            kind = rng.choice(KINDS)
            started = time.perf_counter()
            try:
                if kind == "info":
                    client.info()
                elif kind == "status":
                    client.status(job_id)
                elif kind == "list":
                    client.jobs(20)
                else:
                    n += 1
                    text = (rng.choice(REPEATED_LINES) if rng.random() < 0.5
                            else f"Client {seed} says line {n}.")
                    client.tts(text, "espeak:en-us", timeout=REQUEST_TIMEOUT_S)
                outcome = "ok"
            except RequestFailed as e:
                outcome = e.code
            except DaemonUnreachable:
                outcome = "timeout"
            except DaemonError as e:
                outcome = type(e).__name__
            out.append(Sample(kind, outcome, time.perf_counter() - started))


def run_threads(address: str, job_id: str, seeds: list[int], stop_at: float) -> list[Sample]:
    samples: list[Sample] = []     # list.append is atomic: threads share it safely
    threads = [threading.Thread(target=client_loop, args=(address, job_id, seed, stop_at, samples))
               for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def _process_main(args: tuple) -> list[dict]:
    address, job_id, seeds, stop_at_wall = args
    # monotonic clocks are per process: the deadline travels as wall-clock time
    stop_at = time.monotonic() + (stop_at_wall - time.time())
    return [asdict(s) for s in run_threads(address, job_id, seeds, stop_at)]


def run_load(address: str, job_id: str, clients: int, seconds: float, procs: int = 1) -> LoadResult:
    """`clients` clients for `seconds`, as threads (procs=1) or spread over `procs` processes."""
    seeds = list(range(clients))
    if procs <= 1:
        samples = run_threads(address, job_id, seeds, time.monotonic() + seconds)
    else:
        stop_at_wall = time.time() + seconds + 2.0    # + the processes' start-up
        groups = [seeds[i::procs] for i in range(procs)]
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            parts = pool.map(_process_main, [(address, job_id, g, stop_at_wall) for g in groups])
        samples = [Sample(**s) for part in parts for s in part]
    return summarize(samples, clients, seconds)


def summarize(samples: list[Sample], clients: int, seconds: float) -> LoadResult:
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for s in samples:
        by_kind[s.kind].append(s)
        if s.outcome not in ("ok", "busy"):
            failures[f"{s.kind} {s.outcome}"] += 1
    stats = {}
    for kind in KINDS:
        ok = np.array([s.seconds for s in by_kind[kind] if s.outcome == "ok"]) * 1000
        stats[kind] = KindStats(
            ok=len(ok), busy=sum(s.outcome == "busy" for s in by_kind[kind]),
            failed=sum(s.outcome not in ("ok", "busy") for s in by_kind[kind]),
            p50_ms=round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
            p99_ms=round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
            max_ms=round(float(ok.max()), 2) if len(ok) else None,
            per_s=round(len(ok) / seconds, 1))
    return LoadResult(clients, seconds, stats, dict(failures))


def table(result: LoadResult) -> str:
    rows = ["| request | ok | busy | failed | p50 ms | p99 ms | max ms | ok/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, s in result.stats.items():
        rows.append(f"| {kind} | {s.ok} | {s.busy} | {s.failed} | {s.p50_ms} | {s.p99_ms} | "
                    f"{s.max_ms} | {s.per_s} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- the benchmark

def render_project(seconds: float) -> bytes:
    """Two people and one line with its own `seconds`-long recording: a draft render that
    takes about seconds / 15 on an idle 2-core machine."""
    rate = 16000
    t = np.arange(round(seconds * rate)) / rate
    wav = io.BytesIO()
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate,
                    format="WAV", subtype="PCM_16")
    cast = []
    for i, (name, colour) in enumerate((("Ann", (190, 120, 100)), ("Bo", (100, 120, 190)))):
        png = io.BytesIO()
        Image.new("RGB", (96, 128), colour).save(png, format="PNG")
        cast.append(Person(name=name, image=png.getvalue(), crop=Crop(0, 0, 1, 1),
                           placement=default_placements(2)[i], voice="espeak:en-us",
                           lang="en-us"))
    return save_project(Scene(cast=cast, lines=[Line(0, "A long story.", audio=wav.getvalue()),
                                                Line(1, "Indeed.")],
                              settings=Settings(), title="load bench"))


def baseline(address: str, project: bytes, requests: int = 200) -> dict:
    """With nothing else running: one client's latencies, and one render's wall time."""
    with DaemonClient(address, timeout=REQUEST_TIMEOUT_S) as client:
        job = client.submit(project)
        final = client.wait(job.id)
        samples = []
        for i in range(requests):
            for kind, call in (("info", client.info), ("status", lambda: client.status(job.id)),
                               ("list", lambda: client.jobs(20)),
                               ("tts", lambda: client.tts(REPEATED_LINES[i % 4], "espeak:en-us"))):
                started = time.perf_counter()
                call()
                samples.append(Sample(kind, "ok", time.perf_counter() - started))
    stats = summarize(samples, 1, 1.0).stats
    return {"render_wall_s": round(final.finished - final.started, 2),
            "one_client_p50_ms": {k: v.p50_ms for k, v in stats.items()},
            "one_client_p99_ms": {k: v.p99_ms for k, v in stats.items()}}


class RenderKeeper:
    """Keeps one draft render running: submits the next when the last one finishes."""

    def __init__(self, address: str, project: bytes):
        self.client = DaemonClient(address, timeout=120)
        self.project = project
        self.first = self.client.submit(project)
        self.finished: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        job_id = self.first.id
        while True:
            final = self.client.wait(job_id)
            self.finished.append({"id": final.id, "state": final.state,
                                  "wall_s": round(final.finished - final.started, 2)})
            if self._stop.is_set():
                return
            job_id = self.client.submit(self.project).id

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(timeout=600)
        self.client.close()
        return self.finished


def start_daemon(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "weights").mkdir()
    log = open(folder / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "--server_port", str(port),
                             "--state", str(folder / "state"), "--weights", str(folder / "weights")],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    address = f"tcp://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    with DaemonClient(address, timeout=1.0) as probe:
        while True:
            try:
                probe.info()
                return proc, address
            except DaemonUnreachable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon did not start; see {folder / 'daemon.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--procs", type=int, default=5, help="client processes (threads in each)")
    parser.add_argument("--render-seconds", type=float, default=60.0,
                        help="dialogue length of each draft render kept running")
    parser.add_argument("--address", help="an already running daemon (default: start one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="duet-load-") as tmp:
        proc = None
        address = args.address
        if address is None:
            proc, address = start_daemon(Path(tmp))
        try:
            project = render_project(args.render_seconds)
            idle = baseline(address, project)
            keeper = RenderKeeper(address, project)
            load_avg = os.getloadavg()
            result = run_load(address, keeper.first.id, args.clients, args.seconds, args.procs)
            renders = keeper.stop()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    print(f"{args.clients} clients for {args.seconds:.0f} s while draft renders of "
          f"{args.render_seconds:.0f} s dialogue ran ({len(renders)} finished: "
          f"{', '.join(r['state'] + ' in ' + str(r['wall_s']) + ' s' for r in renders)})")
    print(f"alone: a render took {idle['render_wall_s']} s; one client's p50 (ms): "
          f"{idle['one_client_p50_ms']}")
    print(table(result))
    if result.failures:
        print("failures:", result.failures)
    record = {
        "benchmark": "daemon load: clients sending info/status/list/tts during draft renders",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.load_bench " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_avg,
                    "python": platform.python_version(), "platform": platform.platform()},
        "clients": args.clients, "client_processes": args.procs, "seconds": args.seconds,
        "render_seconds_of_dialogue": args.render_seconds, "idle_baseline": idle,
        "renders": renders,
        "requests": {kind: asdict(s) for kind, s in result.stats.items()},
        "failures": result.failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
