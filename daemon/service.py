"""What each request does, on rank 0: typed request in, typed reply out.

The socket side (daemon.server) decides which thread runs a handler; here every failure the
client caused is raised as a ProtocolError carrying the error code and a message that says what
to do. Nothing is stored until a submitted project has passed every check.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import platform
import sqlite3
from pathlib import Path
from typing import Any, Callable

import soundfile
import torch

from daemon.backends import Backends, BackendUnavailable, InputError
from daemon.config import PACKAGE_VERSION, Settings
from daemon.jobs import JobBoard, JobRecord, JobStateError, JobStore
from daemon.tts.timeline import build_soundtrack
from shared import protocol as p
from shared.scene import (Crop, Line, Person, Placement, ProjectError, Scene, audio_duration,
                          load_project)
from shared.voices import VoiceError, closest_installed, voice_info

log = logging.getLogger(__name__)


class Service:
    def __init__(self, settings: Settings, store: JobStore, board: JobBoard, backends: Backends,
                 tts, devices: Callable[[], list[p.DeviceInfo]],
                 publish: Callable[[Any], None]):
        self.settings = settings
        self.store = store
        self.board = board
        self.backends = backends
        self.tts = tts
        self.devices = devices
        self.publish = publish      # hands an event to the socket thread; any thread may call it

    # -- quick requests (answered on the socket thread)
    def info(self, request: p.InfoRequest) -> p.InfoReply:
        counts = self.store.counts()
        voices = self.tts.voices()
        s = self.settings
        return p.InfoReply(
            package=PACKAGE_VERSION, torch=str(torch.__version__), python=platform.python_version(),
            backends=self.backends.states(), devices=self.devices(),
            parallel=p.ParallelInfo(world_size=s.world_size, ulysses_size=s.ulysses_size,
                                    ring_size=s.ring_size, t5_fsdp=s.t5_fsdp, dit_fsdp=s.dit_fsdp),
            queue=p.QueueSummary(queued=counts["queued"], running=self.store.running_job(),
                                 done=counts["done"], failed=counts["failed"],
                                 cancelled=counts["cancelled"]),
            voices=p.VoiceSummary(total=len(voices), installed=sum(v.installed for v in voices),
                                  languages=sorted({v.lang for v in voices if v.installed}),
                                  backends=sorted({v.backend for v in voices if v.installed})),
            tts=plain(self.tts.info()),
            limits=p.LimitsInfo(max_frame_bytes=s.max_request_bytes,
                                max_project_bytes=min(p.MAX_PROJECT_BYTES, s.max_request_bytes)),
            secure=s.curve)

    def voices(self, request: p.VoicesRequest) -> p.VoicesReply:
        return p.VoicesReply(voices=[
            p.VoiceEntry(id=v.id, backend=v.backend, lang=v.lang, gender=v.gender, label=v.label,
                         installed=bool(v.installed)) for v in self.tts.voices()])

    def status(self, request: p.StatusRequest) -> p.JobReply:
        return p.JobReply(job=self.job_info(self._record(request.job_id), with_preview=True))

    def list(self, request: p.ListRequest) -> p.JobsReply:
        order = self.store.queue_order()
        return p.JobsReply(jobs=[self.job_info(r, order) for r in self.store.list(request.limit)])

    def cancel(self, request: p.CancelRequest) -> p.JobReply:
        record = self._record(request.job_id)
        # One atomic step in the store decides: queued → cancelled now, running → flagged. Only
        # its result tells which (the worker may have claimed the job since the read above).
        after = self.store.request_cancel(record.id)
        if after.state == "running":
            self.board.request_cancel(record.id)    # the worker stops at its next check
        elif after.state != record.state:
            self.publish(p.JobChangedEvent(job=self.job_info(after)))
        return p.JobReply(job=self.job_info(after))

    def delete(self, request: p.DeleteRequest) -> p.DeletedReply:
        try:
            self.store.delete(request.job_id)
        except KeyError:
            raise self._not_found(request.job_id) from None
        except JobStateError as e:
            raise p.ProtocolError("conflict", str(e), field="body.job_id") from None
        self.board.forget(request.job_id)
        return p.DeletedReply(job_id=request.job_id)

    def fetch(self, request: p.FetchRequest) -> p.ChunkReply:
        record = self._record(request.job_id)
        artifact = record.artifacts.get(request.artifact)
        if artifact is None:
            if record.state in ("queued", "running"):
                raise p.ProtocolError("not_ready", f"job {record.id} is {record.state}; "
                                      f"{request.artifact} exists once it is done", field="body.artifact")
            raise p.ProtocolError("not_found", f"job {record.id} ({record.state}) has no "
                                  f"{request.artifact}; it has: {', '.join(sorted(record.artifacts))}",
                                  field="body.artifact")
        if request.offset > artifact.size:
            raise p.ProtocolError("bad_request", f"offset {request.offset} is past the end of "
                                  f"{request.artifact} ({artifact.size} bytes)", field="body.offset")
        with open(self.store.artifact_path(record.id, request.artifact), "rb") as f:
            f.seek(request.offset)
            data = f.read(request.length)
        return p.ChunkReply(job_id=record.id, artifact=request.artifact, offset=request.offset,
                            data=data, size=artifact.size, sha256=artifact.sha256,
                            eof=request.offset + len(data) >= artifact.size)

    def subscription_snapshot(self, job_id: str | None) -> list[p.JobInfo]:
        """The current state of what a subscription covers: that job, or every unfinished job."""
        if job_id is not None:
            return [self.job_info(self._record(job_id), with_preview=True)]
        order = self.store.queue_order()
        return [self.job_info(r, order) for r in self.store.list(p.MAX_JOBS_LISTED)
                if r.state in ("queued", "running")]

    # -- slow requests (run on their own threads)
    def speak(self, request: p.TtsRequest) -> p.SpeechReply:
        self._known_voice(request.voice, "body.voice")
        try:
            speech = self.tts.synthesize(request.text, request.voice, request.speed)
        except VoiceError as e:
            raise p.ProtocolError("unknown_voice", str(e), field="body.voice") from None
        except ValueError as e:     # the TTS's own SpeechError: text it cannot say as asked
            raise p.ProtocolError("bad_request", str(e), field="body.text") from None
        wav = io.BytesIO()
        soundfile.write(wav, speech.samples, speech.sample_rate, format="WAV", subtype="PCM_16")
        return p.SpeechReply(wav=wav.getvalue(), sample_rate=int(speech.sample_rate),
                             duration=len(speech.samples) / speech.sample_rate,
                             voice_used=speech.voice_used, backend=speech.backend,
                             warning=speech.warning)

    def soundtrack(self, request: p.SoundtrackRequest) -> p.SoundtrackReply:
        """The dialogue mixed as a render would mix it, for listening before rendering."""
        scene = self._dialogue_scene(request)
        try:
            track = build_soundtrack(scene, self.tts)
        except VoiceError as e:
            raise p.ProtocolError("unknown_voice", str(e), field="body.lines") from None
        except ValueError as e:     # SoundtrackError, SpeechError, AudioDecodeError: line named
            raise p.ProtocolError("bad_request", str(e), field="body.lines") from None
        wav = io.BytesIO()
        soundfile.write(wav, track.mixed, track.mix_rate, format="WAV", subtype="PCM_16")
        return p.SoundtrackReply(
            wav=wav.getvalue(), sample_rate=track.mix_rate, duration=track.duration,
            timings=[p.LineTiming(line=t.line, speaker=t.speaker, start=t.start, end=t.end)
                     for t in track.timings],
            warnings=[_cut(w) for w in track.warnings])

    def _dialogue_scene(self, request: p.SoundtrackRequest) -> Scene:
        """A Scene holding just what a soundtrack needs: one voice per speaker, the lines."""
        for j, voice in enumerate(request.voices):
            self._known_voice(voice, f"body.voices[{j}]")
        cast = [Person(name=f"Speaker {j + 1}", image=None, crop=Crop(0.0, 0.0, 1.0, 1.0),
                       placement=Placement(0.5, 0.5, 1.0), voice=voice, lang="")
                for j, voice in enumerate(request.voices)]
        lines = []
        for i, line in enumerate(request.lines):
            where = f"body.lines[{i}]"
            if line.speaker >= len(cast):
                raise p.ProtocolError("bad_request", f"line {i + 1}: speaker {line.speaker} has "
                                      f"no voice ({len(cast)} voices given)", field=f"{where}.speaker")
            if line.voice is not None:
                self._known_voice(line.voice, f"{where}.voice")
            if not line.text.strip() and line.audio is None:
                raise p.ProtocolError("bad_request", f"line {i + 1} is empty: write the line or "
                                      "attach its audio", field=f"{where}.text")
            if line.audio is not None:
                # The limits a project's line audio has (length, sample rate), checked before
                # anything is decoded in full or resampled.
                try:
                    audio_duration(line.audio, "audio")
                except ProjectError as e:
                    raise p.ProtocolError("bad_request", f"line {i + 1}: {e}",
                                          field="body.lines") from None
            lines.append(Line(speaker=line.speaker, text=line.text, voice=line.voice,
                              speed=line.speed, pause_after=line.pause_after, audio=line.audio))
        scene = Scene(cast=cast, lines=lines)
        self._check_voices(scene)
        return scene

    def submit(self, request: p.SubmitRequest) -> p.JobReply:
        if self.store.counts()["queued"] >= self.settings.max_queued:
            raise p.ProtocolError("busy", f"{self.settings.max_queued} jobs are queued already; "
                                  "wait for some to finish (or cancel some) and submit again")
        try:
            backend = self.backends.for_mode(request.mode)
        except BackendUnavailable as e:
            raise p.ProtocolError("backend_unavailable", str(e), field="body.mode") from None
        scene = self._load(request.project)
        self._check_voices(scene)
        try:
            backend.check_inputs(scene)
        except InputError as e:
            raise p.ProtocolError("invalid_project", str(e), field="body.project") from None
        with self.board.event_order:
            try:
                record = self.store.create(request.project, mode=request.mode,
                                           backend=backend.name, title=scene.title)
            except (OSError, sqlite3.Error) as e:
                note = self.store.disk_full_note(e)
                if note is None:
                    raise
                raise p.ProtocolError("busy", f"the daemon cannot store the project: {note}") \
                    from None
            info = self.job_info(record)
            self.publish(p.JobChangedEvent(job=info))
        self.board.notify_work()
        return p.JobReply(job=info)

    # -- helpers
    def job_info(self, record: JobRecord, queue_order: list[str] | None = None,
                 with_preview: bool = False) -> p.JobInfo:
        position = None
        if record.state == "queued":
            order = self.store.queue_order() if queue_order is None else queue_order
            position = order.index(record.id) + 1 if record.id in order else None
        progress = self.board.progress(record.id) if record.state == "running" else None
        if progress is not None and not with_preview and progress.preview is not None:
            progress = dataclasses.replace(progress, preview=None)
        return p.JobInfo(
            id=record.id, state=record.state, mode=record.mode, backend=record.backend,
            title=record.title[:p.MAX_MESSAGE_CHARS], created=record.created,
            started=record.started, finished=record.finished, attempts=record.attempts,
            error=_cut(record.error), warnings=[_cut(w) for w in record.warnings[:200]],
            artifacts=[p.ArtifactInfo(name=a.name, size=a.size, sha256=a.sha256)
                       for a in sorted(record.artifacts.values(), key=lambda a: a.name)],
            progress=progress, queue_position=position, duration=record.duration)

    def _record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise self._not_found(job_id)
        return record

    @staticmethod
    def _not_found(job_id: str) -> p.ProtocolError:
        return p.ProtocolError("not_found", f"no job {job_id}; `python -m studio.cli jobs` lists "
                               "the jobs this daemon has", field="body.job_id")

    @staticmethod
    def _load(project: bytes) -> Scene:
        try:
            return load_project(project)
        except ProjectError as e:
            raise p.ProtocolError("invalid_project", str(e), field="body.project") from None

    def _known_voice(self, voice: str, field: str) -> None:
        try:
            voice_info(voice)
        except VoiceError as e:
            raise p.ProtocolError("unknown_voice", str(e), field=field) from None

    def _check_voices(self, scene: Scene) -> None:
        """Every line that is spoken by TTS has a voice the catalog knows and that (or a
        fallback of the same language) is installed."""
        installed = {v.id for v in self.tts.voices() if v.installed}
        for i, line in enumerate(scene.lines):
            if line.audio is not None:
                continue
            voice = scene.voice_of(i)
            try:
                closest_installed(voice, installed)
            except VoiceError as e:
                raise p.ProtocolError("unknown_voice", f"lines[{i}] ({scene.cast[line.speaker].name}"
                                      f"): {e}", field="body.project") from None


def _cut(text: str | None, limit: int = p.MAX_MESSAGE_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "…"


def plain(value: Any, depth: int = 0) -> Any:
    """A JSON-like copy of `value` that fits the protocol's limits (for free-form `info` parts)."""
    if depth > 4:
        return str(value)[:200]
    if isinstance(value, dict):
        return {str(k)[:200]: plain(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in list(value)[:500]]
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return plain(value.__dict__, depth)
    return str(value)[:2000]
