"""shared.protocol: every message survives encode → decode unchanged, the wire format is the
documented envelope, and docs/protocol.md describes every message and field."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import msgpack
import pytest

from shared import protocol as p
from shared import scene

SHA = "ab" * 32
PROGRESS = p.ProgressEvent(job_id="0123456789ab", phase="frames", step=25, total=48, clip=1,
                           clips=3, message="rendering", eta_s=1.5, elapsed_s=2.25,
                           preview=b"\xff\xd8jpeg")
JOB = p.JobInfo(id="0123456789ab", state="running", mode="draft", backend="draft", title="Hi",
                created=1.5, started=2.5, finished=None, attempts=2, error=None,
                warnings=["voice af_heart is not installed"],
                artifacts=[p.ArtifactInfo(name="project.zip", size=10, sha256=SHA)],
                progress=PROGRESS, queue_position=None, duration=3.25)

EXAMPLES = [
    p.InfoRequest(),
    p.VoicesRequest(),
    p.TtsRequest(text="Hello there", voice="espeak:en-us", speed=1.25),
    p.SoundtrackRequest(voices=["espeak:en-us", "af_heart"],
                        lines=[p.DialogueLine(speaker=1, text="Hi", voice="espeak:en-gb",
                                              speed=0.75, pause_after=-1.5, audio=b"RIFF....")]),
    p.SubmitRequest(project=b"PK\x03\x04zip", mode="full"),
    p.StatusRequest(job_id="0123456789ab"),
    p.ListRequest(limit=7),
    p.CancelRequest(job_id="0123456789ab"),
    p.DeleteRequest(job_id="0123456789ab"),
    p.FetchRequest(job_id="0123456789ab", artifact="subtitles.vtt", offset=4096, length=1024),
    p.SubscribeRequest(job_id=None),
    p.UnsubscribeRequest(job_id="0123456789ab"),
    p.InfoReply(package="0.1.0", torch="2.13.0", python="3.11.9",
                backends=[p.BackendState(name="draft", state="ready", detail="CPU",
                                         modes=["draft"], models=[])],
                devices=[p.DeviceInfo(rank=0, name="cpu", memory_total=8, memory_used=4)],
                parallel=p.ParallelInfo(world_size=2, ulysses_size=2, ring_size=1),
                queue=p.QueueSummary(queued=1, running="0123456789ab", done=2),
                voices=p.VoiceSummary(total=72, installed=18, languages=["en-us"],
                                      backends=["espeak"]),
                tts={"backends": {"espeak": {"available": True, "notes": []}}, "n": 3},
                limits=p.LimitsInfo(), secure=True),
    p.VoicesReply(voices=[p.VoiceEntry(id="af_heart", backend="kokoro", lang="en-us",
                                       gender="female", label="warm", installed=False)]),
    p.SpeechReply(wav=b"RIFF....WAVE", sample_rate=22050, duration=0.5, voice_used="espeak:en-us",
                  backend="espeak", warning="fell back"),
    p.SoundtrackReply(wav=b"RIFF....WAVE", sample_rate=24000, duration=2.5,
                      timings=[p.LineTiming(line=0, speaker=1, start=0.0, end=1.25)],
                      warnings=["voice af_heart is not installed"]),
    p.JobReply(job=JOB),
    p.JobsReply(jobs=[JOB, dataclasses.replace(JOB, id="ba9876543210", state="queued",
                                               progress=None, queue_position=1)]),
    p.DeletedReply(job_id="0123456789ab"),
    p.ChunkReply(job_id="0123456789ab", artifact="video.mp4", offset=0, data=b"\x00" * 100,
                 size=100, sha256=SHA, eof=True),
    p.SubscribedReply(job_id="0123456789ab", jobs=[JOB]),
    p.UnsubscribedReply(job_id=None),
    p.ErrorReply(code="unknown_voice", message="unknown voice 'x'", field="body.voice"),
    PROGRESS,
    p.JobChangedEvent(job=JOB),
    p.DeadEvent(message="the daemon was stopped"),
]


def test_the_examples_cover_every_message_type():
    assert {type(m) for m in EXAMPLES} == {*p.REQUEST_TYPES.values(), *p.REPLY_TYPES.values(),
                                           *p.EVENT_TYPES.values()}


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    frame = p.encode(message, 41)
    decode = p.decode_request if type(message) in p.REQUEST_TYPES.values() else p.decode_reply
    assert decode(frame) == p.Envelope(id=41, message=message)


def test_a_frame_is_one_msgpack_map_with_version_id_type_and_body():
    frame = p.encode(p.TtsRequest(text="Hi", voice="espeak:en-us"), 7)
    assert msgpack.unpackb(frame) == {"v": p.PROTOCOL_VERSION, "id": 7, "type": "tts",
                                      "body": {"text": "Hi", "voice": "espeak:en-us", "speed": 1.0}}


def test_bytes_travel_as_msgpack_bin_not_str():
    frame = p.encode(p.SubmitRequest(project=b"\x00\x01", mode="draft"), 1)
    assert b"\xc4\x02\x00\x01" in frame     # bin 8, length 2


def test_optional_fields_may_be_left_out_and_take_their_defaults():
    frame = msgpack.packb({"v": 1, "id": 3, "type": "fetch", "body": {"job_id": "0123456789ab"}})
    assert p.decode_request(frame).message == p.FetchRequest(
        job_id="0123456789ab", artifact="video.mp4", offset=0, length=p.DEFAULT_CHUNK_BYTES)


def test_an_integer_is_accepted_where_a_float_is_expected():
    frame = msgpack.packb({"v": 1, "id": 3, "type": "tts",
                           "body": {"text": "a", "voice": "v", "speed": 2}})
    speed = p.decode_request(frame).message.speed
    assert speed == 2.0 and type(speed) is float


def test_request_and_reply_type_names_do_not_collide_with_events():
    assert not set(p.EVENT_TYPES) & set(p.REPLY_TYPES)


def test_the_sender_is_told_about_an_invalid_value_before_it_is_sent():
    with pytest.raises(p.ProtocolError) as e:
        p.encode(p.TtsRequest(text="", voice="espeak:en-us"), 1)
    assert (e.value.code, e.value.field) == ("bad_request", "body.text")


def test_error_reply_cuts_long_messages_to_the_limit():
    reply = p.error_reply("internal", "x" * 10_000)
    assert len(reply.message) == p.MAX_MESSAGE_CHARS
    p.encode(reply, 1)


def test_the_project_limit_matches_the_project_format():
    assert p.MAX_PROJECT_BYTES == scene.MAX_PROJECT_BYTES


def test_the_artifact_names_are_the_documented_five():
    assert p.ARTIFACTS == ("video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav",
                           "project.zip")


DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


@pytest.mark.parametrize("cls", sorted({type(m) for m in EXAMPLES} | {
    p.JobInfo, p.ArtifactInfo, p.VoiceEntry, p.BackendState, p.DeviceInfo, p.VoiceSummary,
    p.QueueSummary, p.ParallelInfo, p.LimitsInfo}, key=lambda c: c.__name__),
    ids=lambda c: c.__name__)
def test_the_protocol_document_describes_every_message_and_field(cls):
    text = DOC.read_text(encoding="utf-8")
    section = re.search(rf"^#+ [^\n]*`{cls.__name__}`[^\n]*$(.*?)(?=^#+ |\Z)", text,
                        re.M | re.S)
    assert section, f"docs/protocol.md has no heading naming `{cls.__name__}`"
    if hasattr(cls, "TYPE"):
        assert f'"{cls.TYPE}"' in section.group(0)
    for f in dataclasses.fields(cls):
        assert f"`{f.name}`" in section.group(1), f"{cls.__name__}.{f.name} is not documented"


def test_the_protocol_document_lists_every_error_code():
    text = DOC.read_text(encoding="utf-8")
    for code in p.ERROR_CODES:
        assert f"`{code}`" in text
