"""DaemonClient: the studio's and the CLI's side of the daemon protocol (shared.protocol).

One DEALER socket per client object; like every ZeroMQ socket it must be used by one thread
only, so make one client per session or thread. Each call sends one request and waits for the
reply with the same id; events that arrive meanwhile are kept for `watch`. When a reply does not
come in time the socket is closed and replaced (dropping the unanswered request, so it cannot be
delivered twice when the daemon comes back) and DaemonUnreachable is raised.

    with DaemonClient("tcp://127.0.0.1:8418") as client:
        job = client.submit(project_bytes, "draft")
        for event in client.watch(job.id):
            ...
        client.download(job.id, "video.mp4", Path("out.mp4"))
"""
from __future__ import annotations

import collections
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import zmq
import zmq.auth

from shared import protocol as p
from shared.scene import Scene


_EVENTS = tuple(p.EVENT_TYPES.values())


class DaemonError(Exception):
    """Anything that went wrong talking to the daemon."""


class DaemonUnreachable(DaemonError):
    """No reply in time: the daemon is not running, not reachable, or refuses our key."""


class RequestFailed(DaemonError):
    """The daemon answered with an error reply."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


class DaemonProtocolError(DaemonError):
    """The daemon sent something this client cannot read (a version mismatch or a bug)."""


class DaemonDied(DaemonError):
    """The daemon announced that it is going away (its last `dead` event)."""


class DownloadError(DaemonError):
    """A downloaded artifact does not match the size or sha256 the daemon announced."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


class DaemonClient:
    def __init__(self, address: str = p.DEFAULT_ADDRESS, timeout: float = 10.0,
                 curve_dir: Path | None = None):
        """`curve_dir` holds server.key (the daemon's public key) and client.key_secret (ours),
        for a daemon that requires CURVE (see `python -m daemon --make-curve-keys`)."""
        self.address = address
        self.timeout = timeout
        self.curve_dir = Path(curve_dir) if curve_dir else None
        self._ctx = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._next_id = 1
        self._events: collections.deque[p.Envelope] = collections.deque()

    # -- lifecycle
    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> "DaemonClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connected(self) -> zmq.Socket:
        if self._socket is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            if self.curve_dir is not None:
                server_public, _ = zmq.auth.load_certificate(str(self.curve_dir / "server.key"))
                public, secret = zmq.auth.load_certificate(str(self.curve_dir / "client.key_secret"))
                sock.curve_serverkey = server_public
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(self.address)
            self._socket = sock
            self._events.clear()
        return self._socket

    # -- the exchange
    def request(self, message: Any, timeout: float | None = None) -> Any:
        """Send one request and return its reply message; RequestFailed for an error reply."""
        request_id = self._send(message)
        reply = self._receive(request_id, self.timeout if timeout is None else timeout)
        if isinstance(reply.message, p.ErrorReply):
            e = reply.message
            raise RequestFailed(e.code, e.message, e.field)
        return reply.message

    def _send(self, message: Any) -> int:
        request_id = self._next_id
        self._next_id += 1
        try:
            frame = p.encode(message, request_id)
        except p.ProtocolError as e:
            # Checked here against the same limits the daemon applies: the same error either way.
            raise RequestFailed(e.code, e.message, e.field) from None
        self._connected().send(frame, copy=False)
        return request_id

    def _receive(self, request_id: int, timeout: float) -> p.Envelope:
        deadline = time.monotonic() + timeout
        sock = self._connected()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(left * 1000, zmq.POLLIN):
                self.close()
                raise DaemonUnreachable(
                    f"no reply from the daemon at {self.address} within {timeout:g} s — is it "
                    f"running (./run_daemon.sh)? If it requires CURVE keys, pass --curve-dir")
            envelope = self._decode(sock.recv())
            if isinstance(envelope.message, _EVENTS):
                self._events.append(envelope)
            elif envelope.id == request_id:
                return envelope
            # else: the late reply to a request that timed out before; nobody waits for it.

    def _decode(self, frame: bytes) -> p.Envelope:
        try:
            return p.decode_reply(frame)
        except p.ProtocolError as e:
            raise DaemonProtocolError(f"cannot read the daemon's message ({e.code}: {e.message})") \
                from None

    # -- requests
    def info(self) -> p.InfoReply:
        return self.request(p.InfoRequest())

    def voices(self) -> list[p.VoiceEntry]:
        return self.request(p.VoicesRequest()).voices

    def tts(self, text: str, voice: str, speed: float = 1.0, timeout: float = 120.0) -> p.SpeechReply:
        return self.request(p.TtsRequest(text=text, voice=voice, speed=speed), timeout=timeout)

    def soundtrack(self, scene: Scene, timeout: float = 120.0) -> p.SoundtrackReply:
        """The scene's dialogue mixed as a render would mix it, and when each line is heard.
        Needs only the voices and the lines, so a scene without portraits works too."""
        return self.request(soundtrack_request(scene), timeout=timeout)

    def submit(self, project: bytes, mode: str = "draft", timeout: float = 120.0) -> p.JobInfo:
        """Queue a render of a project file's bytes (shared.scene.save_project)."""
        return self.request(p.SubmitRequest(project=project, mode=mode), timeout=timeout).job

    def status(self, job_id: str) -> p.JobInfo:
        return self.request(p.StatusRequest(job_id=job_id)).job

    def jobs(self, limit: int = 100) -> list[p.JobInfo]:
        return self.request(p.ListRequest(limit=limit)).jobs

    def cancel(self, job_id: str) -> p.JobInfo:
        return self.request(p.CancelRequest(job_id=job_id)).job

    def delete(self, job_id: str) -> None:
        self.request(p.DeleteRequest(job_id=job_id))

    def fetch(self, job_id: str, artifact: str = "video.mp4", offset: int = 0,
              length: int = p.MAX_CHUNK_BYTES) -> p.ChunkReply:
        return self.request(p.FetchRequest(job_id=job_id, artifact=artifact, offset=offset,
                                           length=length))

    def download(self, job_id: str, artifact: str, path: Path,
                 chunk: int = p.MAX_CHUNK_BYTES) -> Downloaded:
        """Fetch an artifact chunk by chunk into `path` (written to path.part, renamed once it
        is complete and matches the size and sha256 the daemon announced)."""
        path = Path(path)
        part = path.with_name(path.name + ".part")
        try:
            with open(part, "wb") as f:
                chunks = self._artifact_chunks(job_id, artifact, chunk)
                for data in chunks:
                    f.write(data)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return Downloaded(path, *chunks.result)

    def read_artifact(self, job_id: str, artifact: str, chunk: int = p.MAX_CHUNK_BYTES) -> bytes:
        """An artifact in memory, checked like `download`."""
        return b"".join(self._artifact_chunks(job_id, artifact, chunk))

    def _artifact_chunks(self, job_id: str, artifact: str, chunk: int) -> "_Chunks":
        return _Chunks(self, job_id, artifact, chunk)

    # -- events
    def watch(self, job_id: str, idle_check_s: float = 15.0) -> Iterator[Any]:
        """Progress and state events of one job, pushed by the daemon, until it is finished.

        Yields the job's current state first (a JobChangedEvent), then ProgressEvents and
        JobChangedEvents; returns after the event with a final state (done, failed, cancelled).
        After `idle_check_s` without events it subscribes again, which also returns the job's
        state — so a daemon restart or a dropped event cannot leave the watch hanging.
        Raises DaemonDied if the daemon announces its exit, DaemonUnreachable if it is gone."""
        subscribe_id = None
        dead = False
        try:
            while True:
                if subscribe_id is None:
                    subscribe_id = self._send(p.SubscribeRequest(job_id=job_id))
                    reply = self._receive(subscribe_id, self.timeout).message
                    if isinstance(reply, p.ErrorReply):
                        raise RequestFailed(reply.code, reply.message, reply.field)
                    job = reply.jobs[0]
                    yield p.JobChangedEvent(job=job)
                    if job.state in p.TERMINAL_STATES:
                        return
                envelope = self._next_event(idle_check_s)
                if envelope is None:
                    subscribe_id = None         # quiet for a while: ask again
                    continue
                event = envelope.message
                if envelope.id != subscribe_id:
                    continue                    # from an earlier subscription
                if isinstance(event, p.DeadEvent):
                    dead = True
                    raise DaemonDied(event.message)
                yield event
                if isinstance(event, p.JobChangedEvent) and event.job.state in p.TERMINAL_STATES:
                    return
        finally:
            if subscribe_id is not None and self._socket is not None and not dead:
                # Not waited for: its reply is dropped as stale, and a daemon that is gone
                # must not hold the caller up.
                self._send(p.UnsubscribeRequest(job_id=job_id))

    def wait(self, job_id: str, on_event=None) -> p.JobInfo:
        """Block until the job is finished; `on_event(event)` sees every event."""
        final = None
        for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
            if isinstance(event, p.JobChangedEvent):
                final = event.job
        return final

    def _next_event(self, timeout: float) -> p.Envelope | None:
        if self._events:
            return self._events.popleft()
        sock = self._connected()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(left * 1000, zmq.POLLIN):
                return None
            envelope = self._decode(sock.recv())
            if isinstance(envelope.message, _EVENTS):
                return envelope


def soundtrack_request(scene: Scene) -> p.SoundtrackRequest:
    return p.SoundtrackRequest(
        voices=[person.voice for person in scene.cast],
        lines=[p.DialogueLine(speaker=line.speaker, text=line.text, voice=line.voice,
                              speed=line.speed, pause_after=line.pause_after, audio=line.audio)
               for line in scene.lines])


class _Chunks:
    """Iterates over an artifact's bytes, chunk by chunk; after the last one, checks the total
    size and sha256 against what the daemon announced (DownloadError) and keeps them in
    `result`."""

    def __init__(self, client: DaemonClient, job_id: str, artifact: str, chunk: int):
        self.client, self.job_id, self.artifact, self.chunk = client, job_id, artifact, chunk
        self.result: tuple[int, str] | None = None

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        offset, size, expected = 0, None, None
        while True:
            c = self.client.fetch(self.job_id, self.artifact, offset, self.chunk)
            if size is None:
                size, expected = c.size, c.sha256
            elif (c.size, c.sha256) != (size, expected):
                raise DownloadError(f"{self.artifact} of job {self.job_id} changed during the "
                                    "download; download it again")
            if c.offset != offset or (not c.data and not c.eof):
                raise DownloadError(f"the daemon sent the wrong chunk of {self.artifact}")
            digest.update(c.data)
            offset += len(c.data)
            yield c.data
            if c.eof:
                break
        if offset != size or digest.hexdigest() != expected:
            raise DownloadError(f"{self.artifact} of job {self.job_id}: got {offset} bytes with "
                                f"sha256 {digest.hexdigest()[:12]}…, the daemon announced {size} "
                                f"bytes with {expected[:12]}…; download it again")
        self.result = (size, expected)
