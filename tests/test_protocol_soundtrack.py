"""The `soundtrack` request: a dialogue mixed as a render mixes it, with line timings — its wire
form and limits, and a real daemon answering it (espeak-ng voices, a line with its own audio)."""
from __future__ import annotations

import io

import pytest
import soundfile

from conftest import tone_wav
from shared import protocol as p
from shared.scene import Line
from studio import state
from studio.client import RequestFailed, soundtrack_request

VOICES = ["espeak:en-us", "espeak:en-us+f3"]


def request(*lines: p.DialogueLine, voices=VOICES) -> p.SoundtrackRequest:
    return p.SoundtrackRequest(voices=list(voices), lines=list(lines))


def test_a_soundtrack_request_and_reply_survive_the_wire():
    sent = request(p.DialogueLine(speaker=0, text="Hi."),
                   p.DialogueLine(speaker=1, text="", voice="espeak:en-gb", speed=1.5,
                                  pause_after=-2.0, audio=b"RIFF...."))
    assert p.decode_request(p.encode(sent, 9)) == p.Envelope(id=9, message=sent)
    reply = p.SoundtrackReply(wav=b"RIFF", sample_rate=24000, duration=1.5,
                              timings=[p.LineTiming(line=0, speaker=1, start=0.0, end=1.2)],
                              warnings=["voice x fell back"])
    assert p.decode_reply(p.encode(reply, 9)) == p.Envelope(id=9, message=reply)


@pytest.mark.parametrize("bad, code, field", [
    (request(p.DialogueLine(speaker=0, text="a"), voices=["espeak:en-us"] * 9), "too_large",
     "body.voices"),
    (request(p.DialogueLine(speaker=8, text="a")), "bad_request", "body.lines[0].speaker"),
    (request(p.DialogueLine(speaker=0, text="a", pause_after=-601.0)), "bad_request",
     "body.lines[0].pause_after"),
    (request(), "bad_request", "body.lines"),
])
def test_the_limits_are_checked_on_the_wire(bad, code, field):
    body = p._to_wire(bad)
    frame = p.msgpack.packb({"v": 1, "id": 4, "type": "soundtrack", "body": body},
                            use_bin_type=True)
    with pytest.raises(p.ProtocolError) as caught:
        p.decode_request(frame)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_the_studio_sends_a_scenes_voices_and_lines():
    scene = state.new_scene()
    scene.lines = [Line(1, "Hello.", voice="espeak:en-gb", speed=0.75, pause_after=0.5)]
    assert soundtrack_request(scene) == p.SoundtrackRequest(
        voices=["af_heart", "am_michael"],
        lines=[p.DialogueLine(speaker=1, text="Hello.", voice="espeak:en-gb", speed=0.75,
                              pause_after=0.5)])


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def test_the_daemon_mixes_the_lines_in_time(client):
    recording = tone_wav(1.0)
    reply = client.request(request(
        p.DialogueLine(speaker=0, text="Hello there."),
        p.DialogueLine(speaker=1, text="", audio=recording, pause_after=-0.25),
        p.DialogueLine(speaker=0, text="Indeed.", pause_after=0.5)))
    first, second, third = reply.timings
    assert [(t.line, t.speaker) for t in reply.timings] == [(0, 0), (1, 1), (2, 0)]
    assert first.start == 0.0 and first.end > 0.3
    assert second.start == pytest.approx(first.end + 0.3)     # the default pause
    assert second.end - second.start == 1.0                    # the recording, exactly
    assert third.start == pytest.approx(second.end - 0.25)     # overlapping it
    assert reply.duration == pytest.approx(third.end + 0.5)   # the last pause is kept
    samples, rate = soundfile.read(io.BytesIO(reply.wav))
    assert rate == reply.sample_rate == 24000
    assert len(samples) / rate == pytest.approx(reply.duration)
    assert reply.warnings == []


def test_a_voice_that_is_not_installed_is_spoken_by_another_with_a_warning(client):
    reply = client.request(request(p.DialogueLine(speaker=0, text="Hi."),
                                   voices=["af_heart", "espeak:en-us"]))
    assert len(reply.timings) == 1
    assert [w.split(" (")[0] for w in reply.warnings] == [
        "voice af_heart is not installed — using espeak:en-us+f3"]


@pytest.mark.parametrize("bad, code, field, says", [
    (request(p.DialogueLine(speaker=0, text="a"), p.DialogueLine(speaker=2, text="b")),
     "bad_request", "body.lines[1].speaker", "line 2: speaker 2 has no voice (2 voices given)"),
    (request(p.DialogueLine(speaker=0, text="a"), voices=["nobody"]), "unknown_voice",
     "body.voices[0]", "unknown voice 'nobody'"),
    (request(p.DialogueLine(speaker=0, text="  ")), "bad_request", "body.lines[0].text",
     "line 1 is empty: write the line or attach its audio"),
    (request(p.DialogueLine(speaker=0, text="", audio=b"not audio")), "bad_request",
     "body.lines", "line 1: "),
])
def test_a_dialogue_that_cannot_be_mixed_is_an_error_naming_the_line(client, bad, code, field,
                                                                      says):
    with pytest.raises(RequestFailed) as caught:
        client.request(bad)
    assert (caught.value.code, caught.value.field) == (code, field)
    assert caught.value.message.startswith(says)
