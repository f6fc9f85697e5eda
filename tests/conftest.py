"""Shared test fixtures: a real daemon on a free port with its own state folder, and projects.

`start_daemon` (via the `daemon_factory` fixture) runs `python -m daemon` — or
`torchrun --nproc_per_node=N -m daemon` — as a subprocess, waits until it answers `info`, and
stops it at teardown (SIGTERM, then SIGKILL). Each daemon gets an empty weights folder so tests
are hermetic: TTS is espeak-ng, the backend is draft. `module_daemon` is one such daemon shared
by a test module. `projects` builds small, valid project files (and corrupt ones) in code.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile
from PIL import Image

from shared import protocol as p
from shared.scene import Crop, Line, Person, Scene, Settings, default_placements, save_project
from studio.client import DaemonClient, DaemonUnreachable

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
STARTUP_TIMEOUT_S = 120.0
VOICES = ("espeak:en-us", "espeak:en-us+f3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningDaemon:
    proc: subprocess.Popen
    port: int
    state: Path
    log_path: Path
    address: str = ""
    clients: list[DaemonClient] = field(default_factory=list)

    def client(self, timeout: float = 20.0, **kwargs) -> DaemonClient:
        c = DaemonClient(self.address, timeout=timeout, **kwargs)
        self.clients.append(c)
        return c

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S, **client_kwargs) -> p.InfoReply:
        """Block until the daemon answers `info`; fail with its log if it exits first."""
        deadline = time.monotonic() + timeout
        with DaemonClient(self.address, timeout=1.0, **client_kwargs) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    return probe.info()
                except DaemonUnreachable:
                    continue
        raise AssertionError(f"the daemon did not answer within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean stop), then wait; SIGKILL if it hangs. Returns the exit code."""
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9 the daemon's whole process group (torchrun and its ranks too)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def start_daemon(tmp: Path, *flags: str, state: Path | None = None, nproc: int = 1,
                 port: int | None = None, wait: bool = True, client_kwargs: dict | None = None,
                 weights: Path | None = None, script: bool = False) -> RunningDaemon:
    """Start a daemon whose files live under `tmp` (state, log, empty weights): `python -m
    daemon`, torchrun with `nproc` ranks, or (script=True) ./run_daemon.sh with NPROC=nproc."""
    port = port or free_port()
    state = state or tmp / "state"
    weights = weights or tmp / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"daemon-{port}-{time.monotonic_ns()}.log"
    args = ["--server_port", str(port), "--state", str(state), "--weights", str(weights), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NCCL_NVLS_ENABLE": "0"}
    if script:
        cmd = [str(REPO / "run_daemon.sh"), *args]
        env["NPROC"] = str(nproc)
    elif nproc > 1:
        cmd = [str(PYTHON), "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "daemon", *args]
    else:
        cmd = [str(PYTHON), "-m", "daemon", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    daemon = RunningDaemon(proc, port, state, log_path, address=f"tcp://127.0.0.1:{port}")
    if wait:
        daemon.wait_ready(**(client_kwargs or {}))
    return daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """start(*flags, **kw) → RunningDaemon; every daemon started is stopped at teardown."""
    started: list[RunningDaemon] = []

    def start(*flags: str, **kwargs) -> RunningDaemon:
        kwargs.setdefault("state", tmp_path / "state")
        d = start_daemon(tmp_path, *flags, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop(timeout=30)
        d.kill()


@pytest.fixture(scope="session")
def launch_daemon() -> Callable[..., RunningDaemon]:
    """start_daemon itself, for fixtures of a wider scope that manage the daemon's life."""
    return start_daemon


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory) -> Iterator[RunningDaemon]:
    """One single-process CPU daemon for a whole test module (requests up to 8 MB)."""
    tmp = tmp_path_factory.mktemp("daemon")
    d = start_daemon(tmp, "--max-request-mb", "8")
    yield d
    d.stop(timeout=30)
    d.kill()


# ------------------------------------------------------------------------------- projects

def portrait_png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 128), colour).save(out, format="PNG")
    return out.getvalue()


def tone_wav(seconds: float, rate: int = 16000, freq: float = 220.0) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate,
                    format="WAV", subtype="PCM_16")
    return out.getvalue()


class Projects:
    """Small project files for render tests (2 people, 16:9 480p, espeak voices)."""

    tone_wav = staticmethod(tone_wav)

    def scene(self, lines: list[Line], voices: tuple[str, str] = VOICES, title: str = "test") -> Scene:
        placements = default_placements(2)
        cast = [Person(name=name, image=portrait_png(colour), crop=Crop(0, 0, 1, 1),
                       placement=placements[i], voice=voices[i], lang="en-us")
                for i, (name, colour) in enumerate((("Ann", (190, 120, 100)),
                                                    ("Bo", (100, 120, 190))))]
        return Scene(cast=cast, lines=lines, settings=Settings(), title=title)

    def two_lines(self, voices: tuple[str, str] = VOICES, title: str = "two lines") -> bytes:
        """A few seconds of dialogue: the quick render."""
        return save_project(self.scene([Line(0, "Hello Bo, good to see you."),
                                        Line(1, "Hi Ann! Likewise.")], voices, title))

    def long_audio(self, seconds: float = 60.0, title: str = "long") -> bytes:
        """A line with its own recording `seconds` long: a render that takes a few seconds,
        for tests that act while it runs."""
        return save_project(self.scene([Line(0, "A long story.", audio=tone_wav(seconds)),
                                        Line(1, "Indeed.")], title=title))

    @staticmethod
    def rewrite(project: bytes, replace: dict[str, bytes] | None = None,
                document: Callable[[dict], None] | None = None) -> bytes:
        """The same zip with some entries' bytes replaced and/or project.json edited in place
        (to make invalid projects that save_project would refuse to write)."""
        entries = {}
        with zipfile.ZipFile(io.BytesIO(project)) as z:
            for name in z.namelist():
                entries[name] = z.read(name)
        for name, data in (replace or {}).items():
            entries[name] = data
        if document is not None:
            doc = json.loads(entries["project.json"])
            document(doc)
            entries["project.json"] = json.dumps(doc).encode()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for name, data in entries.items():
                z.writestr(name, data)
        return out.getvalue()

    @staticmethod
    def entries(project: bytes) -> list[str]:
        with zipfile.ZipFile(io.BytesIO(project)) as z:
            return z.namelist()


@pytest.fixture(scope="session")
def projects() -> Projects:
    return Projects()


def wait_for_event(client: DaemonClient, job_id: str, predicate, timeout_s: float = 120.0):
    """Watch a job until `predicate(event)` holds; return that event (fail if the job ends
    first)."""
    deadline = time.monotonic() + timeout_s
    for event in client.watch(job_id):
        if predicate(event):
            return event
        if isinstance(event, p.JobChangedEvent) and event.job.state in p.TERMINAL_STATES:
            raise AssertionError(f"job {job_id} ended ({event.job.state}) before the awaited event")
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching event for job {job_id} within {timeout_s} s")
    raise AssertionError(f"the watch of job {job_id} ended without the awaited event")


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def watch_until() -> Callable:
    return wait_for_event
