"""`python -m studio.cli` against a real daemon: every command, the progress line, downloads,
and the exit codes a script relies on (0 ok, 1 failed, 2 bad input, 3 unreachable,
4 cancelled, 5 server error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
from PIL import Image

from daemon.media.mp4 import probe
from shared import protocol as p
from studio import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def address(module_daemon) -> str:
    return module_daemon.address


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def run(address: str, *argv: str, capsys) -> tuple[int, str, str]:
    """main() in-process: the same code path as the command, exit code returned."""
    code = cli.main(["--daemon", address, *argv], env={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(address: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio.cli", "--daemon", address, *argv],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=timeout)


def start_process(address: str, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "studio.cli", "--daemon", address, *argv],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_render_downloads_the_video_and_subtitles_draws_progress_and_says_the_notes(address, projects, tmp_path):
    scene = tmp_path / "scene.duet"
    scene.write_bytes(projects.two_lines(voices=("af_heart", "espeak:en-us+f3")))
    result = run_process(address, "render", str(scene), "--out", str(tmp_path / "out.mp4"),
                         "--srt", str(tmp_path / "out.srt"))
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "out.mp4")
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 896, 448)
    assert "Hi Ann! Likewise." in (tmp_path / "out.srt").read_text()
    assert "queued" in result.stderr and "frames" in result.stderr
    assert "out.mp4" in result.stdout
    # the job's notes: no Kokoro weights here, so af_heart's line fell back to espeak-ng
    assert "note: voice af_heart is not installed — using espeak:" in result.stderr


def test_render_accepts_an_official_multitalk_json(address, projects, tmp_path, capsys):
    Image.new("RGB", (640, 360), (120, 110, 100)).save(tmp_path / "two.png")
    for name, seconds in (("a.wav", 1.0), ("b.wav", 0.8)):
        (tmp_path / name).write_bytes(projects.tone_wav(seconds))
    (tmp_path / "input.json").write_text(json.dumps({
        "prompt": "Two people talk.", "cond_image": "two.png", "audio_type": "add",
        "cond_audio": {"person1": "a.wav", "person2": "b.wav"}}))
    code, out, err = run(address, "render", str(tmp_path / "input.json"), "--draft",
                         "--out", str(tmp_path / "mt.mp4"), capsys=capsys)
    assert code == cli.EXIT_OK, err
    assert abs(probe(tmp_path / "mt.mp4").duration - 1.8) <= 1 / 25


def test_info_voices_and_tts(address, tmp_path, capsys):
    code, out, _ = run(address, "info", capsys=capsys)
    assert code == 0 and "draft" in out and "ready" in out and "ranks: 1" in out
    code, out, _ = run(address, "--json", "info", capsys=capsys)
    assert code == 0 and json.loads(out)["protocol"] == p.PROTOCOL_VERSION
    code, out, _ = run(address, "voices", "--installed", "--lang", "en-us", capsys=capsys)
    assert code == 0 and "espeak:en-us" in out and "af_heart" not in out
    code, out, _ = run(address, "tts", "--text", "Hello.", "--voice", "espeak:en-us",
                       "--out", str(tmp_path / "hi.wav"), capsys=capsys)
    assert code == 0 and soundfile.info(str(tmp_path / "hi.wav")).frames > 0


def test_no_wait_then_status_jobs_fetch_and_delete(address, client, projects, tmp_path, capsys):
    scene = tmp_path / "scene.duet"
    scene.write_bytes(projects.two_lines(title="no wait"))
    code, out, _ = run(address, "render", str(scene), "--no-wait", capsys=capsys)
    job_id = out.strip()
    assert code == 0 and len(job_id) == 12
    assert client.wait(job_id).state == "done"
    code, out, _ = run(address, "status", job_id, capsys=capsys)
    assert code == 0 and f"job {job_id}: done" in out and "video.mp4" in out
    code, out, _ = run(address, "jobs", capsys=capsys)
    assert code == 0 and job_id in out and "no wait" in out
    code, out, _ = run(address, "fetch", job_id, "--artifact", "subtitles.vtt",
                       "--out", str(tmp_path / "s.vtt"), capsys=capsys)
    assert code == 0 and (tmp_path / "s.vtt").read_text().startswith("WEBVTT")
    code, out, _ = run(address, "delete", job_id, capsys=capsys)
    assert code == 0
    code, _, err = run(address, "status", job_id, capsys=capsys)
    assert code == cli.EXIT_USAGE and "not_found" in err


@pytest.mark.parametrize("argv, needle", [
    (["tts", "--text", "Hi", "--voice", "zz_nobody", "--out", "x.wav"], "unknown_voice"),
    (["status", "0123456789ab"], "not_found"),
    (["status", "not-an-id"], "bad_request"),
    (["render", "/nonexistent/scene.duet", "--out", "x.mp4"], "cannot read"),
    (["render", "{scene}", "--full", "--out", "x.mp4"], "backend_unavailable"),
    (["render", "{scene}"], "needs --out"),
])
def test_bad_input_exits_2(address, projects, tmp_path, capsys, argv, needle):
    scene = tmp_path / "scene.duet"
    scene.write_bytes(projects.two_lines())
    argv = [a.replace("{scene}", str(scene)) for a in argv]
    code, _, err = run(address, *argv, capsys=capsys)
    assert code == cli.EXIT_USAGE and needle in err


def test_bad_usage_exits_2(address):
    result = run_process(address, "render")
    assert result.returncode == 2 and "usage" in result.stderr


def test_an_unreachable_daemon_exits_3(free_tcp_port):
    result = run_process(f"tcp://127.0.0.1:{free_tcp_port}", "--timeout", "1", "info")
    assert result.returncode == cli.EXIT_UNREACHABLE
    assert "no reply" in result.stderr


def test_the_daemon_address_comes_from_the_environment(address, capsys):
    assert cli.main(["info"], env={"DUET_DAEMON": address}) == 0


def test_a_cancelled_job_exits_4(module_daemon, address, projects, tmp_path):
    scene = tmp_path / "long.duet"
    scene.write_bytes(projects.long_audio(40, title="to cancel"))
    client = module_daemon.client(timeout=60)        # its own subscription to every job
    client.request(p.SubscribeRequest(job_id=None))
    proc = start_process(address, "render", str(scene), "--out", str(tmp_path / "x.mp4"))
    job_id = _next_job_in_state(client, "running")
    client.cancel(job_id)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_CANCELLED and "cancelled" in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_failed_job_exits_1_with_the_reason(module_daemon, address, projects, tmp_path):
    client = module_daemon.client(timeout=60)        # its own subscription to every job
    client.request(p.SubscribeRequest(job_id=None))
    blocker = client.submit(projects.long_audio(40, title="blocker"), "draft")
    scene = tmp_path / "doomed.duet"
    scene.write_bytes(projects.two_lines(title="doomed"))
    proc = start_process(address, "render", str(scene), "--out", str(tmp_path / "x.mp4"))
    doomed = _next_job_in_state(client, "queued", title="doomed")
    # The stored input goes bad while the job waits (a disk fault): the render must fail.
    (module_daemon.state / "jobs" / doomed / "input" / "project.zip").write_bytes(b"garbage")
    client.cancel(blocker.id)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_JOB_FAILED
    assert f"job {doomed} failed" in err and "not a zip" in err


def _next_job_in_state(client, state: str, title: str | None = None) -> str:
    """The id of the next job that reaches `state` (events of an all-jobs subscription)."""
    while True:
        envelope = client._next_event(60)
        assert envelope is not None, f"no job reached {state} within 60 s"
        event = envelope.message
        if (isinstance(event, p.JobChangedEvent) and event.job.state == state
                and (title is None or event.job.title == title)):
            return event.job.id
