"""The daemon end to end, over the real socket and only through the protocol: a draft render,
progress pushed to subscribers, cancel, quick requests while a render runs, TTS and info.
One single-process CPU daemon serves the whole module."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from daemon.media.mp4 import probe
from shared import protocol as p
from shared.compose import canvas_size
from shared.scene import load_project
from studio.client import RequestFailed

FRAME_S = 1 / 25


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def srt_last_end(text: str) -> float:
    h, m, s, ms = map(int, re.findall(r"--> (\d+):(\d+):(\d+),(\d+)", text)[-1])
    return h * 3600 + m * 60 + s + ms / 1000


def test_a_draft_render_end_to_end(client, projects, tmp_path):
    project = projects.two_lines()
    job = client.submit(project, "draft")
    assert (job.state, job.mode, job.backend, job.title) == ("queued", "draft", "draft", "two lines")
    events = list(client.watch(job.id))
    final = events[-1].job
    assert final.state == "done", final.error
    assert {a.name for a in final.artifacts} == set(p.ARTIFACTS)

    video = client.download(job.id, "video.mp4", tmp_path / "out.mp4")
    info = probe(video.path)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height) == canvas_size(load_project(project).settings) == (896, 448)
    assert abs(info.duration - final.duration) <= FRAME_S

    wav = client.download(job.id, "dialogue.wav", tmp_path / "dialogue.wav")
    audio = soundfile.info(str(wav.path))
    assert abs(audio.frames / audio.samplerate - final.duration) <= FRAME_S
    srt = client.download(job.id, "subtitles.srt", tmp_path / "s.srt").path.read_text()
    assert "Hello Bo, good to see you." in srt and "Hi Ann! Likewise." in srt
    assert srt_last_end(srt) <= final.duration + FRAME_S
    assert "WEBVTT" in client.download(job.id, "subtitles.vtt", tmp_path / "s.vtt").path.read_text()
    stored = client.download(job.id, "project.zip", tmp_path / "project.zip")
    assert stored.path.read_bytes() == project
    assert video.sha256 == hashlib.sha256(video.path.read_bytes()).hexdigest()


def test_progress_is_pushed_to_a_subscriber_of_all_jobs(module_daemon, client, projects):
    watcher = module_daemon.client(timeout=60)
    subscribed = watcher.request(p.SubscribeRequest(job_id=None))
    assert subscribed.job_id is None
    job = client.submit(projects.two_lines(title="watched"), "draft")
    states, phases = [], []
    while not states or states[-1] not in p.TERMINAL_STATES:
        envelope = watcher._next_event(60)
        assert envelope is not None, "no event within 60 s"
        event = envelope.message
        if isinstance(event, p.JobChangedEvent) and event.job.id == job.id:
            states.append(event.job.state)
        elif isinstance(event, p.ProgressEvent) and event.job_id == job.id:
            phases.append(event.phase)
            assert event.elapsed_s >= 0
    assert states == ["queued", "running", "done"]
    assert phases[0] == "tts" and "frames" in phases
    watcher.request(p.UnsubscribeRequest(job_id=None))


def test_progress_steps_rise_within_a_phase_and_carry_an_eta(client, projects):
    job = client.submit(projects.long_audio(20), "draft")
    frames = [e for e in client.watch(job.id)
              if isinstance(e, p.ProgressEvent) and e.phase == "frames"]
    steps = [e.step for e in frames]
    assert steps == sorted(steps) and steps[-1] == frames[-1].total > 20 * 25
    assert any(e.eta_s is not None and e.eta_s > 0 for e in frames)
    assert any(e.preview and e.preview[:2] == b"\xff\xd8" for e in frames)   # a JPEG


def test_quick_requests_are_answered_while_a_render_runs(module_daemon, client, projects, watch_until):
    job = client.submit(projects.long_audio(40), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    other = module_daemon.client(timeout=10)
    info = other.info()
    status = other.status(job.id)
    speech = other.tts("Still here.", "espeak:en-us")
    listed = other.jobs(5)
    # Each reply was made while the render was still going on.
    assert info.queue.running == job.id
    assert status.state == "running" and status.progress.phase == "frames"
    assert soundfile.info(io.BytesIO(speech.wav)).frames > 0
    assert listed[0].id == job.id and listed[0].state == "running"
    assert other.status(job.id).state == "running"
    client.cancel(job.id)
    assert client.wait(job.id).state == "cancelled"


def test_cancel_mid_render_stops_the_job_and_leaves_no_result(module_daemon, client, projects,
                                                              watch_until):
    job = client.submit(projects.long_audio(40), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.ProgressEvent) and e.phase == "frames")
    assert client.cancel(job.id).state in ("running", "cancelled")
    final = client.wait(job.id)
    assert final.state == "cancelled"
    assert [a.name for a in final.artifacts] == ["project.zip"]
    with pytest.raises(RequestFailed) as e:
        client.fetch(job.id, "video.mp4")
    assert e.value.code == "not_found"
    job_dir = module_daemon.state / "jobs" / job.id
    assert sorted(x.name for x in job_dir.iterdir()) == ["input"]


def test_a_queued_job_is_cancelled_at_once(client, projects, watch_until):
    running = client.submit(projects.long_audio(40), "draft")
    watch_until(client, running.id,
                lambda e: isinstance(e, p.JobChangedEvent) and e.job.state == "running")
    queued = client.submit(projects.two_lines(), "draft")
    assert queued.state == "queued" and queued.queue_position == 1
    assert client.cancel(queued.id).state == "cancelled"
    client.cancel(running.id)
    assert client.wait(running.id).state == "cancelled"
    assert client.status(queued.id).started is None


def test_artifacts_of_an_unfinished_job_are_not_ready_and_a_running_job_cannot_be_deleted(
        client, projects, watch_until):
    job = client.submit(projects.long_audio(40), "draft")
    watch_until(client, job.id, lambda e: isinstance(e, p.JobChangedEvent) and e.job.state == "running")
    with pytest.raises(RequestFailed) as not_ready:
        client.fetch(job.id, "video.mp4")
    with pytest.raises(RequestFailed) as conflict:
        client.delete(job.id)
    assert (not_ready.value.code, conflict.value.code) == ("not_ready", "conflict")
    assert client.fetch(job.id, "project.zip").size > 0        # the input is there from the start
    client.cancel(job.id)
    client.wait(job.id)
    client.delete(job.id)
    with pytest.raises(RequestFailed) as gone:
        client.status(job.id)
    assert gone.value.code == "not_found"


def test_a_voice_fallback_is_a_job_warning(client, projects):
    job = client.submit(projects.two_lines(voices=("af_heart", "espeak:en-us")), "draft")
    final = client.wait(job.id)
    assert final.state == "done"
    assert any("af_heart is not installed" in w for w in final.warnings)


def test_fetch_serves_any_range_of_an_artifact(client, projects):
    job = client.submit(projects.two_lines(), "draft")
    assert client.wait(job.id).state == "done"
    whole = client.fetch(job.id, "dialogue.wav", 0, p.MAX_CHUNK_BYTES)
    part = client.fetch(job.id, "dialogue.wav", 100, 50)
    assert whole.eof and not part.eof
    assert part.data == whole.data[100:150] and part.size == whole.size == len(whole.data)
    end = client.fetch(job.id, "dialogue.wav", whole.size, 10)
    assert (end.data, end.eof) == (b"", True)
    with pytest.raises(RequestFailed) as past:
        client.fetch(job.id, "dialogue.wav", whole.size + 1, 10)
    assert (past.value.code, past.value.field) == ("bad_request", "body.offset")


def test_downloads_in_many_chunks_are_checked_and_whole(client, projects, tmp_path):
    job = client.submit(projects.two_lines(), "draft")
    assert client.wait(job.id).state == "done"
    whole = client.read_artifact(job.id, "dialogue.wav")
    got = client.download(job.id, "dialogue.wav", tmp_path / "d.wav", chunk=4096)
    assert got.size == len(whole) > 4096 * 3
    assert got.path.read_bytes() == whole
    assert got.sha256 == hashlib.sha256(whole).hexdigest()
    assert not (tmp_path / "d.wav.part").exists()


def test_tts_returns_a_wav_and_says_when_a_voice_fell_back(client):
    speech = client.tts("Good morning.", "espeak:en-us", speed=1.2)
    data, rate = soundfile.read(io.BytesIO(speech.wav))
    assert rate == speech.sample_rate and abs(len(data) / rate - speech.duration) < 1e-6
    assert (speech.voice_used, speech.backend, speech.warning) == ("espeak:en-us", "espeak", None)
    fallback = client.tts("Good morning.", "af_heart")
    assert fallback.voice_used.startswith("espeak:en-us") and "af_heart" in fallback.warning


def test_voices_lists_the_catalog_with_what_is_installed(client):
    voices = {v.id: v for v in client.voices()}
    assert voices["espeak:en-us"].installed and not voices["af_heart"].installed
    assert voices["af_heart"].lang == "en-us" and voices["af_heart"].backend == "kokoro"


def test_info_reports_backends_devices_queue_voices_and_versions(client):
    info = client.info()
    backends = {b.name: b for b in info.backends}
    assert (backends["draft"].state, backends["draft"].modes) == ("ready", ["draft"])
    assert backends["multitalk"].state == "unavailable"
    assert "Wan2.1-I2V-14B-480P" in backends["multitalk"].detail
    assert (info.protocol, info.parallel.world_size, len(info.devices)) == (p.PROTOCOL_VERSION, 1, 1)
    assert info.devices[0].name.startswith("cpu") and info.devices[0].memory_total > 0
    assert info.torch.startswith("2.") and info.package
    assert info.voices.installed > 0 and "espeak" in info.voices.backends
    assert info.tts["backends"]["espeak"]["available"] is True
    assert info.limits.max_frame_bytes == 8 * 2**20 and info.secure is False


def test_the_worked_example_in_the_protocol_document_runs_as_written(module_daemon, projects,
                                                                     tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    example = re.search(r"## Worked example.*?```python\n(.*?)```", doc, re.S).group(1)
    assert "tcp://127.0.0.1:8418" in example
    (tmp_path / "scene.duet").write_bytes(projects.two_lines())
    script = tmp_path / "example.py"
    script.write_text(example.replace("tcp://127.0.0.1:8418", module_daemon.address))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert probe(tmp_path / "out.mp4").video_codec == "h264"
    assert "frames" in result.stdout
