"""Bad input gets a specific error reply, nothing is stored, and the daemon keeps serving.

Each case goes through the real socket to a real daemon (started with --max-request-mb 8).
After each one the daemon must still answer `info`, and neither the job table nor the jobs
folder may have grown."""
from __future__ import annotations

import msgpack
import pytest
import zmq

from shared import protocol as p
from shared.scene import Line, save_project
from studio.client import RequestFailed

LIMIT = 8 * 2**20


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def raw_exchange(address: str, frames: list[bytes]) -> p.Envelope:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        assert sock.poll(30_000), "no reply"
        return p.decode_reply(sock.recv())
    finally:
        sock.close()


def envelope(type_: str, body: dict, **overrides) -> bytes:
    return msgpack.packb({"v": 1, "id": 5, "type": type_, "body": body, **overrides},
                         use_bin_type=True)


TTS = {"text": "Hi", "voice": "espeak:en-us"}

RAW_CASES = {
    "not msgpack": ([b"\xc1garbage"], "bad_request", None),
    "two frames": ([envelope("info", {}), b"more"], "bad_request", None),
    "another version": ([envelope("info", {}, v=2)], "bad_version", "v"),
    "unknown type": ([envelope("reboot", {})], "bad_request", "type"),
    "unknown field": ([envelope("tts", {**TTS, "pitch": 1})], "bad_request", "body.pitch"),
    "bool for an int": ([envelope("list", {"limit": True})], "bad_request", "body.limit"),
    "missing field": ([envelope("tts", {"text": "Hi"})], "bad_request", "body.voice"),
    "ext type": ([envelope("tts", {**TTS, "text": msgpack.ExtType(1, b"x")})], "bad_request", None),
    "text over its limit": ([envelope("tts", {**TTS, "text": "a" * 2001})], "too_large", "body.text"),
    "frame over the daemon's limit": ([b"\x00" * (LIMIT + 1)], "too_large", None),
    "malformed job id": ([envelope("status", {"job_id": "../../x"})], "bad_request", "body.job_id"),
}


def stored(module_daemon, client) -> tuple[int, int]:
    return len(client.jobs(1000)), len(list((module_daemon.state / "jobs").iterdir()))


@pytest.mark.parametrize("name", RAW_CASES)
def test_a_malformed_request_gets_its_error_code_and_the_daemon_serves_on(module_daemon, client,
                                                                          name):
    frames, code, field = RAW_CASES[name]
    before = stored(module_daemon, client)
    reply = raw_exchange(module_daemon.address, frames).message
    assert isinstance(reply, p.ErrorReply)
    assert (reply.code, reply.field) == (code, field), reply.message
    assert client.info().protocol == p.PROTOCOL_VERSION
    assert stored(module_daemon, client) == before


def test_an_error_reply_carries_the_request_id_when_it_could_be_read(module_daemon):
    reply = raw_exchange(module_daemon.address, [envelope("list", {"limit": 0})])
    assert (reply.id, reply.message.code) == (5, "bad_request")


def corrupt_image(projects) -> bytes:
    project = projects.two_lines()
    return projects.rewrite(project, {"assets/cast-1.png": b"\x89PNG\r\n\x1a\nnot really"})


def corrupt_audio(projects) -> bytes:
    project = projects.long_audio(1.0)
    assert "assets/line-1.wav" in projects.entries(project)
    return projects.rewrite(project, {"assets/line-1.wav": b"RIFF\x10\x00\x00\x00WAVEjunk"})


def empty_script(projects) -> bytes:
    return projects.rewrite(projects.two_lines(), document=lambda d: d.update(lines=[]))


def unknown_voice(projects) -> bytes:
    return projects.two_lines(voices=("espeak:en-us", "zz_nobody"))


def audio_shorter_than_a_frame(projects) -> bytes:
    scene = projects.scene([Line(0, "", audio=projects.tone_wav(0.01)), Line(1, "Hm?")])
    return save_project(scene)


PROJECT_CASES = {
    "not a zip": (lambda projects: b"this is not a zip", "draft", "invalid_project", "not a zip"),
    "corrupt image": (corrupt_image, "draft", "invalid_project", "cast[0].image"),
    "corrupt audio": (corrupt_audio, "draft", "invalid_project", "lines[0].audio"),
    "empty script": (empty_script, "draft", "invalid_project", "script is empty"),
    "unknown voice": (unknown_voice, "draft", "unknown_voice", "zz_nobody"),
    "audio shorter than a frame": (audio_shorter_than_a_frame, "draft", "invalid_project",
                                   "shorter than one video frame"),
    "full mode without weights": (lambda projects: projects.two_lines(), "full",
                                  "backend_unavailable", "Wan2.1-I2V-14B-480P"),
}


@pytest.mark.parametrize("name", PROJECT_CASES)
def test_a_bad_project_is_refused_at_submit_and_nothing_is_stored(module_daemon, client, projects,
                                                                  name):
    make, mode, code, needle = PROJECT_CASES[name]
    project = make(projects)
    before = stored(module_daemon, client)
    with pytest.raises(RequestFailed) as e:
        client.submit(project, mode)
    assert e.value.code == code, e.value.message
    assert needle in e.value.message
    assert client.info().queue.queued == 0
    assert stored(module_daemon, client) == before


def test_the_backend_unavailable_message_says_draft_works_now(client, projects):
    with pytest.raises(RequestFailed) as e:
        client.submit(projects.two_lines(), "full")
    assert "draft renders work now" in e.value.message and e.value.field == "body.mode"


@pytest.mark.parametrize("request_, code", [
    (p.StatusRequest(job_id="0123456789ab"), "not_found"),
    (p.CancelRequest(job_id="0123456789ab"), "not_found"),
    (p.DeleteRequest(job_id="0123456789ab"), "not_found"),
    (p.FetchRequest(job_id="0123456789ab"), "not_found"),
    (p.SubscribeRequest(job_id="0123456789ab"), "not_found"),
    (p.TtsRequest(text="Hi", voice="zz_nobody"), "unknown_voice"),
], ids=lambda x: type(x).__name__ if not isinstance(x, str) else x)
def test_requests_about_unknown_things_are_refused(client, request_, code):
    with pytest.raises(RequestFailed) as e:
        client.request(request_)
    assert e.value.code == code
