"""The wire protocol between Duet Studio clients and the daemon.

msgpack over ZeroMQ: clients use a DEALER socket, the daemon a ROUTER. Every message is ONE
frame holding one msgpack map, the envelope:

    {"v": PROTOCOL_VERSION, "id": <request id>, "type": "<message type>", "body": {<fields>}}

A reply carries the id of its request; events carry the id of the `subscribe` request that asked
for them. Each message type below is a frozen dataclass defined once, with its field types and
limits; `encode` and `decode_*` are the only places that touch msgpack. Decoding is strict and
checks sizes before anything is built: a frame longer than the limit is refused by its length, the
msgpack structure is scanned (depth, element count, ext types) before unpacking, and unknown,
missing or mistyped fields (a bool is not an int) raise `ProtocolError` naming the field.
docs/protocol.md describes the same thing for people writing their own client.
"""
from __future__ import annotations

import dataclasses
import math
import re
import struct
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Literal

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8418            # the daemon; the Streamlit studio serves HTTP on 8419
DEFAULT_ADDRESS = f"tcp://127.0.0.1:{DEFAULT_PORT}"

# ---------------------------------------------------------------------------------------------
# Limits. A frame longer than MAX_FRAME_BYTES is refused by its length alone.
MAX_PROJECT_BYTES = 512 * 1024 * 1024      # a project zip: the same limit as shared.scene
MAX_FRAME_BYTES = MAX_PROJECT_BYTES + 64 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024          # one `fetch` reply
DEFAULT_CHUNK_BYTES = 1024 * 1024
MAX_PREVIEW_BYTES = 256 * 1024             # a small JPEG inside a progress event
MAX_TTS_TEXT = 2000                        # characters of one `tts` request
MAX_SOUNDTRACK_VOICES = 8                  # a `soundtrack` request: the cast limit of a scene
MAX_SOUNDTRACK_LINES = 500                 # … and its line limit (shared.scene)
MAX_LINE_AUDIO_BYTES = 50 * 1024 * 1024    # a line's own recording (shared.scene)
MAX_AUDIO_SECONDS = 600.0
MAX_STR_BYTES = 64 * 1024                  # any single string
MAX_ARRAY_ITEMS = 10_000
MAX_MAP_ITEMS = 4096
MAX_DEPTH = 10                             # nesting of maps and arrays, the envelope is depth 1
MAX_OBJECTS = 200_000                      # msgpack values in one frame
MAX_MESSAGE_CHARS = 4000                   # error and progress messages
MAX_JOBS_LISTED = 1000

JOB_ID_PATTERN = r"[0-9a-f]{12}"
ARTIFACTS = ("video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav", "project.zip")

Mode = Literal["draft", "full"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Artifact = Literal["video.mp4", "subtitles.srt", "subtitles.vtt", "dialogue.wav", "project.zip"]
TERMINAL_STATES = ("done", "failed", "cancelled")

ErrorCode = Literal[
    "bad_request",          # malformed frame, unknown type, unknown/missing/mistyped field, bad value
    "bad_version",          # the envelope's "v" is not PROTOCOL_VERSION
    "too_large",            # the frame, a string, a byte field or a list is over its limit
    "not_found",            # no such job, or the job has no such artifact
    "not_ready",            # the artifact exists only once the job is done
    "conflict",             # the job's state forbids it (e.g. deleting a running job)
    "unknown_voice",        # a voice id that is not in the daemon's catalog
    "invalid_project",      # the project zip does not load, or an image/audio/script in it is bad
    "backend_unavailable",  # mode "full" on a daemon without the MultiTalk weights
    "busy",                 # too many requests of this kind are waiting; retry later
    "internal",             # a bug in the daemon; the message says what failed
]
ERROR_CODES: tuple[str, ...] = typing.get_args(ErrorCode)


class ProtocolError(ValueError):
    """A message that cannot be accepted, with the error code to reply with."""

    def __init__(self, code: str, message: str, *, request_id: int = 0, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field


# Every message and part is a frozen, keyword-only dataclass: built by name, never by position.
message = dataclass(frozen=True, kw_only=True)


def spec(default: Any = MISSING, *, factory: Any = MISSING, max_len: int | None = None,
         min_len: int = 0, lo: float | None = None, hi: float | None = None,
         pattern: str | None = None) -> Any:
    """A dataclass field with its wire limits: lengths (chars, bytes or items) and value range."""
    meta = {"max_len": max_len, "min_len": min_len, "lo": lo, "hi": hi,
            "pattern": re.compile(pattern) if pattern else None}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _job_id(default: Any = MISSING) -> Any:
    return spec(default, max_len=12, pattern=JOB_ID_PATTERN)


def _text(max_len: int = MAX_MESSAGE_CHARS, default: Any = MISSING) -> Any:
    return spec(default, max_len=max_len)


# ---------------------------------------------------------------------------------------------
# Requests (client → daemon)

@message
class InfoRequest:
    TYPE: ClassVar[str] = "info"


@message
class VoicesRequest:
    TYPE: ClassVar[str] = "voices"


@message
class TtsRequest:
    """Speak one line; the reply is a WAV file (16-bit PCM mono)."""
    TYPE: ClassVar[str] = "tts"
    text: str = spec(max_len=MAX_TTS_TEXT, min_len=1)
    voice: str = spec(max_len=64, min_len=1)
    speed: float = spec(1.0, lo=0.5, hi=2.0)


@message
class DialogueLine:
    """One line of a `soundtrack` request, as shared.scene.Line: spoken by `voices[speaker]`
    (or its own `voice`), or played from its own `audio` (WAV/FLAC/OGG)."""
    speaker: int = spec(lo=0, hi=MAX_SOUNDTRACK_VOICES - 1)
    text: str = spec("", max_len=MAX_TTS_TEXT)
    voice: str | None = spec(None, max_len=64)
    speed: float = spec(1.0, lo=0.5, hi=2.0)
    # Seconds before the next line; negative overlaps it (by up to a recording's whole length).
    pause_after: float = spec(0.3, lo=-MAX_AUDIO_SECONDS, hi=10.0)
    audio: bytes | None = spec(None, max_len=MAX_LINE_AUDIO_BYTES)


@message
class SoundtrackRequest:
    """Speak every line and mix them in time, as a render would (no job, nothing stored): the
    studio's "play the whole dialogue" and its timeline. Reply: `soundtrack`."""
    TYPE: ClassVar[str] = "soundtrack"
    voices: list[str] = spec(max_len=MAX_SOUNDTRACK_VOICES, min_len=1)   # one per cast member
    lines: list[DialogueLine] = spec(max_len=MAX_SOUNDTRACK_LINES, min_len=1)


@message
class SubmitRequest:
    """Queue a render of a project (the bytes of shared.scene.save_project)."""
    TYPE: ClassVar[str] = "submit"
    project: bytes = spec(max_len=MAX_PROJECT_BYTES, min_len=1)
    mode: Mode = "draft"


@message
class StatusRequest:
    TYPE: ClassVar[str] = "status"
    job_id: str = _job_id()


@message
class ListRequest:
    """The newest jobs first."""
    TYPE: ClassVar[str] = "list"
    limit: int = spec(100, lo=1, hi=MAX_JOBS_LISTED)


@message
class CancelRequest:
    TYPE: ClassVar[str] = "cancel"
    job_id: str = _job_id()


@message
class DeleteRequest:
    """Remove a finished (or queued) job and its files; a running job must be cancelled first."""
    TYPE: ClassVar[str] = "delete"
    job_id: str = _job_id()


@message
class FetchRequest:
    """One chunk of a job's artifact: bytes [offset, offset + length)."""
    TYPE: ClassVar[str] = "fetch"
    job_id: str = _job_id()
    artifact: Artifact = "video.mp4"
    offset: int = spec(0, lo=0, hi=2**53)
    length: int = spec(DEFAULT_CHUNK_BYTES, lo=1, hi=MAX_CHUNK_BYTES)


@message
class SubscribeRequest:
    """Push progress and job-state events of one job (job_id) or of every job (None)."""
    TYPE: ClassVar[str] = "subscribe"
    job_id: str | None = _job_id(None)


@message
class UnsubscribeRequest:
    """Stop events of one job, or all of this client's subscriptions (None)."""
    TYPE: ClassVar[str] = "unsubscribe"
    job_id: str | None = _job_id(None)


# ---------------------------------------------------------------------------------------------
# Parts of replies

@message
class ArtifactInfo:
    name: Artifact
    size: int = spec(lo=0, hi=2**53)
    sha256: str = spec(max_len=64, min_len=64, pattern=r"[0-9a-f]{64}")


@message
class ProgressEvent:
    """Where a running job is. Also pushed as an event to subscribers."""
    TYPE: ClassVar[str] = "progress"
    job_id: str = _job_id()
    phase: str = spec(max_len=32)          # "tts", "frames", "mux", "sample", "decode", …
    step: int = spec(0, lo=0, hi=2**31)    # done in this phase (or in this clip)
    total: int = spec(0, lo=0, hi=2**31)   # 0 = unknown
    clip: int = spec(0, lo=0, hi=2**31)    # 1-based clip; 0 = not clip-based
    clips: int = spec(0, lo=0, hi=2**31)
    message: str = _text(default="")
    eta_s: float | None = spec(None, lo=0.0)    # seconds until the job is done; None = unknown
    elapsed_s: float = spec(0.0, lo=0.0)        # seconds since the job started running
    preview: bytes | None = spec(None, max_len=MAX_PREVIEW_BYTES)   # small JPEG


@message
class JobInfo:
    id: str = _job_id()
    state: JobState = "queued"
    mode: Mode = "draft"
    backend: str = spec("", max_len=32)
    title: str = _text(default="")
    created: float = spec(0.0, lo=0.0)          # unix seconds
    started: float | None = spec(None, lo=0.0)
    finished: float | None = spec(None, lo=0.0)
    attempts: int = spec(0, lo=0, hi=1000)      # times the job started running
    error: str | None = _text(default=None)
    warnings: list[str] = spec(factory=list, max_len=200)
    artifacts: list[ArtifactInfo] = spec(factory=list, max_len=len(ARTIFACTS))
    progress: ProgressEvent | None = None       # the latest, while queued/running
    queue_position: int | None = spec(None, lo=1, hi=2**31)   # 1 = next to run
    duration: float | None = spec(None, lo=0.0)  # seconds of dialogue in the result


@message
class VoiceEntry:
    id: str = spec(max_len=64)
    backend: str = spec(max_len=32)
    lang: str = spec(max_len=32)
    gender: str = spec(max_len=16)
    label: str = spec(max_len=200)
    installed: bool = True


@message
class BackendState:
    name: str = spec(max_len=32)                # "draft", "multitalk"
    state: Literal["ready", "unavailable", "error"] = "ready"
    detail: str = _text(default="")             # what it runs on, or what to download
    modes: list[str] = spec(factory=list, max_len=4)   # the submit modes it serves
    models: list[str] = spec(factory=list, max_len=64)  # models loaded and resident


@message
class DeviceInfo:
    rank: int = spec(lo=0, hi=4096)
    name: str = spec(max_len=200)               # "cpu", "NVIDIA H200"
    memory_total: int = spec(0, lo=0)           # bytes; 0 = unknown
    memory_used: int = spec(0, lo=0)            # bytes at the time of the reply (rank 0) or start


@message
class VoiceSummary:
    total: int = spec(0, lo=0)
    installed: int = spec(0, lo=0)
    languages: list[str] = spec(factory=list, max_len=200)
    backends: list[str] = spec(factory=list, max_len=16)


@message
class QueueSummary:
    queued: int = spec(0, lo=0)
    running: str | None = _job_id(None)
    done: int = spec(0, lo=0)
    failed: int = spec(0, lo=0)
    cancelled: int = spec(0, lo=0)


@message
class ParallelInfo:
    world_size: int = spec(1, lo=1)
    ulysses_size: int = spec(1, lo=1)
    ring_size: int = spec(1, lo=1)
    t5_fsdp: bool = False
    dit_fsdp: bool = False


@message
class LimitsInfo:
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_project_bytes: int = MAX_PROJECT_BYTES
    max_chunk_bytes: int = MAX_CHUNK_BYTES
    max_tts_text: int = MAX_TTS_TEXT


# ---------------------------------------------------------------------------------------------
# Replies (daemon → client)

@message
class InfoReply:
    TYPE: ClassVar[str] = "info"
    protocol: int = PROTOCOL_VERSION
    package: str = spec(max_len=64)
    torch: str = spec(max_len=64)
    python: str = spec(max_len=64)
    backends: list[BackendState] = spec(factory=list, max_len=8)
    devices: list[DeviceInfo] = spec(factory=list, max_len=4096)
    parallel: ParallelInfo = spec(factory=ParallelInfo)
    queue: QueueSummary = spec(factory=QueueSummary)
    voices: VoiceSummary = spec(factory=VoiceSummary)
    tts: dict[str, Any] = spec(factory=dict)    # daemon.tts TTS.info(): informational, free-form
    limits: LimitsInfo = spec(factory=LimitsInfo)
    secure: bool = False                        # CURVE encryption and client keys are required


@message
class VoicesReply:
    TYPE: ClassVar[str] = "voices"
    voices: list[VoiceEntry] = spec(factory=list, max_len=MAX_ARRAY_ITEMS)


@message
class SpeechReply:
    TYPE: ClassVar[str] = "speech"
    wav: bytes = spec(max_len=MAX_PROJECT_BYTES)
    sample_rate: int = spec(lo=1, hi=384_000)
    duration: float = spec(lo=0.0)
    voice_used: str = spec(max_len=64)          # differs from the request when the voice fell back
    backend: str = spec(max_len=32)
    warning: str | None = _text(default=None)


@message
class LineTiming:
    """When one line is heard in a soundtrack, in seconds from its start."""
    line: int = spec(lo=0, hi=MAX_SOUNDTRACK_LINES - 1)     # index into the request's lines
    speaker: int = spec(lo=0, hi=MAX_SOUNDTRACK_VOICES - 1)
    start: float = spec(lo=0.0)
    end: float = spec(lo=0.0)


@message
class SoundtrackReply:
    TYPE: ClassVar[str] = "soundtrack"
    wav: bytes = spec(max_len=MAX_PROJECT_BYTES)   # the mix: 16-bit PCM mono, loudness-normalized
    sample_rate: int = spec(lo=1, hi=384_000)
    duration: float = spec(lo=0.0)
    timings: list[LineTiming] = spec(factory=list, max_len=MAX_SOUNDTRACK_LINES)
    warnings: list[str] = spec(factory=list, max_len=MAX_SOUNDTRACK_LINES)   # voice fallbacks


@message
class JobReply:
    """The job after submit, status or cancel."""
    TYPE: ClassVar[str] = "job"
    job: JobInfo


@message
class JobsReply:
    TYPE: ClassVar[str] = "jobs"
    jobs: list[JobInfo] = spec(factory=list, max_len=MAX_JOBS_LISTED)


@message
class DeletedReply:
    TYPE: ClassVar[str] = "deleted"
    job_id: str = _job_id()


@message
class ChunkReply:
    TYPE: ClassVar[str] = "chunk"
    job_id: str = _job_id()
    artifact: Artifact = "video.mp4"
    offset: int = spec(lo=0, hi=2**53)
    data: bytes = spec(max_len=MAX_CHUNK_BYTES)
    size: int = spec(lo=0, hi=2**53)            # the whole artifact
    sha256: str = spec(max_len=64, min_len=64, pattern=r"[0-9a-f]{64}")   # of the whole artifact
    eof: bool = False                           # this chunk ends the artifact


@message
class SubscribedReply:
    """Events follow with this request's id; `jobs` is their state right now."""
    TYPE: ClassVar[str] = "subscribed"
    job_id: str | None = _job_id(None)
    jobs: list[JobInfo] = spec(factory=list, max_len=MAX_JOBS_LISTED)


@message
class UnsubscribedReply:
    TYPE: ClassVar[str] = "unsubscribed"
    job_id: str | None = _job_id(None)


@message
class ErrorReply:
    TYPE: ClassVar[str] = "error"
    code: ErrorCode = "internal"
    message: str = _text()                      # for people: what went wrong and what to do
    field: str | None = spec(None, max_len=200)  # the offending field, when there is one


# ---------------------------------------------------------------------------------------------
# Events (daemon → subscribed clients, with the subscribe request's id)

@message
class JobChangedEvent:
    """A job changed state (queued → running → done | failed | cancelled)."""
    TYPE: ClassVar[str] = "job_changed"
    job: JobInfo


@message
class DeadEvent:
    """The daemon is going away; sent once to every subscriber before it exits."""
    TYPE: ClassVar[str] = "dead"
    message: str = _text()


Request = (InfoRequest | VoicesRequest | TtsRequest | SoundtrackRequest | SubmitRequest
           | StatusRequest | ListRequest | CancelRequest | DeleteRequest | FetchRequest
           | SubscribeRequest | UnsubscribeRequest)
Reply = (InfoReply | VoicesReply | SpeechReply | SoundtrackReply | JobReply | JobsReply
         | DeletedReply | ChunkReply | SubscribedReply | UnsubscribedReply | ErrorReply)
Event = ProgressEvent | JobChangedEvent | DeadEvent

REQUEST_TYPES: dict[str, type] = {c.TYPE: c for c in typing.get_args(Request)}
REPLY_TYPES: dict[str, type] = {c.TYPE: c for c in typing.get_args(Reply)}
EVENT_TYPES: dict[str, type] = {c.TYPE: c for c in typing.get_args(Event)}


@message
class Envelope:
    id: int
    message: Any


def error_reply(code: str, message: str, field: str | None = None) -> ErrorReply:
    """An ErrorReply whose message is cut to the wire limit."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    return ErrorReply(code=code, message=message, field=field)


# ---------------------------------------------------------------------------------------------
# Encoding

def encode(message: Any, request_id: int) -> bytes:
    """One frame for `message`. The message is checked against its own limits first, so a
    sender learns about a bad value before the peer does."""
    cls = type(message)
    if not (dataclasses.is_dataclass(message) and hasattr(cls, "TYPE")):
        raise TypeError(f"{cls.__name__} is not a protocol message")
    if type(request_id) is not int or not 0 <= request_id < 2**63:
        raise ProtocolError("bad_request", f"request id must be an int in [0, 2^63), got {request_id!r}")
    body = _to_wire(message)
    _from_wire(cls, body, "body")
    frame = msgpack.packb({"v": PROTOCOL_VERSION, "id": request_id, "type": cls.TYPE, "body": body},
                          use_bin_type=True)
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"a {cls.TYPE} message of {len(frame)} bytes is over the "
                                         f"{MAX_FRAME_BYTES}-byte frame limit")
    return frame


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# Decoding

def decode_request(frame: bytes) -> Envelope:
    """A request frame → Envelope(id, request). Raises ProtocolError with the code to reply."""
    return _decode(frame, REQUEST_TYPES, "request")


def decode_reply(frame: bytes) -> Envelope:
    """A reply or event frame → Envelope(id, message). ErrorReply is returned, not raised."""
    return _decode(frame, {**REPLY_TYPES, **EVENT_TYPES}, "reply")


def _decode(frame: bytes, types_by_name: dict[str, type], what: str) -> Envelope:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_request", "a frame must be bytes")
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"the {what} is {len(frame)} bytes; the limit is "
                                         f"{MAX_FRAME_BYTES} (projects up to {MAX_PROJECT_BYTES})")
    frame = bytes(frame)
    scan_msgpack(frame)
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                               max_bin_len=MAX_FRAME_BYTES, max_str_len=MAX_STR_BYTES,
                               max_array_len=MAX_ARRAY_ITEMS, max_map_len=MAX_MAP_ITEMS)
    except ProtocolError:
        raise
    except Exception as exc:    # msgpack raises ValueError, UnicodeDecodeError, StackError, …
        raise ProtocolError("bad_request", f"the {what} is not valid msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", f"the {what} must be a msgpack map (the envelope)")
    request_id = data.get("id")
    request_id = request_id if type(request_id) is int and 0 <= request_id < 2**63 else 0
    version = data.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError("bad_version", f"this daemon speaks protocol version {PROTOCOL_VERSION}"
                            f", the {what} says {version!r}: update the client or the daemon",
                            request_id=request_id, field="v")
    for key in data:
        if key not in ("v", "id", "type", "body"):
            raise ProtocolError("bad_request", f"unknown envelope field {key!r}",
                                request_id=request_id, field=str(key))
    for key in ("id", "type", "body"):
        if key not in data:
            raise ProtocolError("bad_request", f"the envelope has no {key!r} field",
                                request_id=request_id, field=key)
    if type(data["id"]) is not int or not 0 <= data["id"] < 2**63:
        raise ProtocolError("bad_request", "envelope field 'id' must be an int in [0, 2^63)",
                            field="id")
    kind = data["type"]
    cls = types_by_name.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("bad_request", f"unknown {what} type {kind!r}; known: "
                            f"{', '.join(sorted(types_by_name))}", request_id=request_id, field="type")
    try:
        message = _from_wire(cls, data["body"], "body")
    except ProtocolError as exc:
        exc.request_id = request_id
        raise
    return Envelope(id=request_id, message=message)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("bad_request", f"msgpack ext types are not allowed (found ext {code})")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return _HINTS[cls]


def _from_wire(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a decoded map, strictly: every key known, every type exact."""
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", f"{path} must be a map", field=path)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ProtocolError("bad_request", f"unknown field {path}.{key}", field=f"{path}.{key}")
    values = {}
    for name, f in fields.items():
        where = f"{path}.{name}"
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError("bad_request", f"missing field {where}", field=where)
            continue
        values[name] = _value(hints[name], data[name], where, f.metadata)
    return cls(**values)


def _value(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _value(inner[0], value, path, meta)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise ProtocolError("bad_request", f"{path} must be one of {', '.join(map(repr, args))}"
                                f", got {_shown(value)}", field=path)
        return value
    if origin is list:
        _expect(isinstance(value, list), path, "a list", value)
        _check_len(len(value), path, meta, "items")
        return [_value(args[0], v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
    if origin is dict:
        _expect(isinstance(value, dict), path, "a map", value)
        return value
    if dataclasses.is_dataclass(tp):
        return _from_wire(tp, value, path)
    if tp is bool:
        _expect(type(value) is bool, path, "true or false", value)
        return value
    if tp is int:
        _expect(type(value) is int, path, "an integer", value)
        _check_range(value, path, meta)
        return value
    if tp is float:
        _expect(type(value) in (int, float), path, "a number", value)
        value = float(value)
        if not math.isfinite(value):
            raise ProtocolError("bad_request", f"{path} must be a finite number", field=path)
        _check_range(value, path, meta)
        return value
    if tp is str:
        _expect(type(value) is str, path, "a string", value)
        _check_len(len(value), path, meta, "characters")
        pattern = meta.get("pattern")
        if pattern is not None and not pattern.fullmatch(value):
            raise ProtocolError("bad_request", f"{path} {value[:80]!r} does not match "
                                f"{pattern.pattern}", field=path)
        return value
    if tp is bytes:
        _expect(type(value) is bytes, path, "binary (msgpack bin)", value)
        _check_len(len(value), path, meta, "bytes")
        return value
    raise TypeError(f"protocol field {path} has an unsupported type {tp!r}")


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80] if not isinstance(value, bytes) else "bytes"


def _expect(ok: bool, path: str, what: str, value: Any) -> None:
    if not ok:
        raise ProtocolError("bad_request", f"{path} must be {what}, got {_shown(value)}", field=path)


def _check_len(n: int, path: str, meta: typing.Mapping[str, Any], unit: str) -> None:
    max_len = meta.get("max_len")
    if max_len is not None and n > max_len:
        raise ProtocolError("too_large", f"{path} has {n} {unit}; the limit is {max_len}", field=path)
    if n < meta.get("min_len", 0):
        raise ProtocolError("bad_request", f"{path} must not be empty" if n == 0 else
                            f"{path} needs at least {meta['min_len']} {unit}", field=path)


def _check_range(value: float, path: str, meta: typing.Mapping[str, Any]) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ProtocolError("bad_request", f"{path} = {value} is outside {bounds}", field=path)


# ---------------------------------------------------------------------------------------------
# A structural pass over the raw bytes before msgpack builds any object: it bounds nesting and
# the number of values (so a small frame cannot expand into millions of objects), refuses ext
# types (msgpack would otherwise decode ext -1 as a timestamp) and checks string/bin lengths.

_FIXED_WIDTH = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
                0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8}
_SIZED = {0xc4: (1, "bin"), 0xc5: (2, "bin"), 0xc6: (4, "bin"),
          0xd9: (1, "str"), 0xda: (2, "str"), 0xdb: (4, "str")}
_CONTAINER = {0xdc: (2, "array"), 0xdd: (4, "array"), 0xde: (2, "map"), 0xdf: (4, "map")}
_LEN_FORMAT = {1: ">B", 2: ">H", 4: ">I"}


def scan_msgpack(frame: bytes) -> None:
    """Raise ProtocolError unless `frame` is exactly one msgpack value within the limits."""
    n = len(frame)
    pos = 0
    pending = [1]          # values still to read at each open nesting level
    objects = 0

    def length(width: int) -> int:
        nonlocal pos
        if pos + width > n:
            raise ProtocolError("bad_request", "the frame is truncated")
        (value,) = struct.unpack_from(_LEN_FORMAT[width], frame, pos)
        pos += width
        return value

    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= n:
            raise ProtocolError("bad_request", "the frame is truncated")
        objects += 1
        if objects > MAX_OBJECTS:
            raise ProtocolError("too_large", f"the frame holds more than {MAX_OBJECTS} values")
        tag = frame[pos]
        pos += 1
        items, kind = -1, ""
        if tag <= 0x7f or tag >= 0xe0:
            continue
        if 0x80 <= tag <= 0x8f:
            items, kind = tag & 0x0f, "map"
        elif 0x90 <= tag <= 0x9f:
            items, kind = tag & 0x0f, "array"
        elif 0xa0 <= tag <= 0xbf:
            _skip_payload(tag & 0x1f, "str")
            pos += tag & 0x1f
        elif tag in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[tag]
        elif tag in _SIZED:
            width, kind = _SIZED[tag]
            size = length(width)
            _skip_payload(size, kind)
            pos += size
            kind = ""
        elif tag in _CONTAINER:
            width, kind = _CONTAINER[tag]
            items = length(width)
        elif 0xc7 <= tag <= 0xc9 or 0xd4 <= tag <= 0xd8:
            raise ProtocolError("bad_request", "msgpack ext types are not allowed")
        else:
            raise ProtocolError("bad_request", f"byte 0x{tag:02x} at offset {pos - 1} is not msgpack")
        if pos > n:
            raise ProtocolError("bad_request", "the frame is truncated")
        if kind:
            limit = MAX_MAP_ITEMS if kind == "map" else MAX_ARRAY_ITEMS
            if items > limit:
                raise ProtocolError("too_large", f"a {kind} of {items} entries; the limit is {limit}")
            if len(pending) > MAX_DEPTH:
                raise ProtocolError("bad_request", f"maps and arrays nest deeper than {MAX_DEPTH}")
            pending.append(items * 2 if kind == "map" else items)
    if pos != n:
        raise ProtocolError("bad_request", f"{n - pos} extra bytes after the message")


def _skip_payload(size: int, kind: str) -> None:
    limit = MAX_STR_BYTES if kind == "str" else MAX_FRAME_BYTES
    if size > limit:
        raise ProtocolError("too_large", f"a {kind} of {size} bytes; the limit is {limit}")
