"""Rank 0's socket: one ZeroMQ ROUTER, owned by one I/O thread.

ZeroMQ sockets are not thread-safe, so only the I/O thread touches the ROUTER. It reads
requests, checks their size before decoding anything, and answers quick requests (info, voices,
status, list, cancel, delete, fetch, subscribe) itself, at once, even while a render runs. TTS
and submit (which validates a whole project) run on one small thread each and hand their reply
back; the worker hands back events. Anything another thread wants sent goes into `_outbox` and a
byte on a pipe wakes the poller — the I/O thread then sends it.

Events go to subscribers (push, no polling): a subscription is a client identity plus the job
it watches (or every job) and the id of its subscribe request, which the events carry. A client
that went away is dropped the first time a send to it fails (ROUTER_MANDATORY).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from daemon.config import AUTHORIZED_CLIENTS, Settings
from daemon.keys import load_server_keys
from daemon.service import Service
from shared import protocol as p

log = logging.getLogger(__name__)

MAX_WAITING = {"tts": 8, "submit": 4}   # requests queued per slow-request thread before busy
EVENT_HWM = 1000
# On exit, how long the socket may still try to deliver the last ("dead") events.
FINAL_LINGER_MS = 500


class ServerError(RuntimeError):
    """The socket could not be set up (port taken, bad keys); the message says the fix."""


class Server:
    def __init__(self, settings: Settings, service: Service,
                 on_failure: Callable[[], None] = lambda: None):
        self.settings = settings
        self.service = service
        self.on_failure = on_failure    # the socket thread died: a deaf daemon must stop
        self.failed = False
        self._ctx = zmq.Context()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pools = {"tts": ThreadPoolExecutor(1, thread_name_prefix="tts"),
                       "submit": ThreadPoolExecutor(1, thread_name_prefix="submit")}
        self._waiting = {"tts": 0, "submit": 0}
        self._waiting_lock = threading.Lock()
        # identity → {job id or None (all jobs): subscribe request id}; I/O thread only.
        self._subscriptions: dict[bytes, dict[str | None, int]] = {}
        self._router: zmq.Socket | None = None
        self._auth: ThreadAuthenticator | None = None
        self._thread: threading.Thread | None = None
        self._quick: dict[type, Callable[[Any], Any]] = {
            p.InfoRequest: service.info, p.VoicesRequest: service.voices,
            p.StatusRequest: service.status, p.ListRequest: service.list,
            p.CancelRequest: service.cancel, p.DeleteRequest: service.delete,
            p.FetchRequest: service.fetch}
        self._slow: dict[type, tuple[str, Callable[[Any], Any]]] = {
            p.TtsRequest: ("tts", service.speak), p.SoundtrackRequest: ("tts", service.soundtrack),
            p.SubmitRequest: ("submit", service.submit)}

    # -- lifecycle (called from the main thread)
    def start(self) -> None:
        """Bind (errors surface here, in the caller) and start the I/O thread."""
        router = self._ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.sndhwm = EVENT_HWM
        # Frames a little over the limit get a too_large reply; far over it, libzmq drops the
        # connection before the bytes pile up in memory.
        router.maxmsgsize = min(2 * self.settings.max_request_bytes, p.MAX_FRAME_BYTES + 2**20)
        if self.settings.curve:
            self._secure(router)
        try:
            router.bind(self.settings.address)
        except zmq.ZMQError as e:
            router.close(linger=0)
            self._stop_auth()
            hint = (" — another daemon may be running; stop it or pick another --server_port"
                    if e.errno == errno.EADDRINUSE else "")
            raise ServerError(f"cannot listen on {self.settings.address}: {e.strerror}{hint}") from None
        self._router = router
        self._thread = threading.Thread(target=self._run, name="zmq-io", daemon=True)
        self._thread.start()

    def stop(self, dead_message: str) -> None:
        """Tell every subscriber the daemon is going (a DeadEvent), close, and wait for the
        I/O thread. Safe to call from any thread, once."""
        if self._thread is not None and self._thread.is_alive():
            self._post(("stop", dead_message))
            self._thread.join(timeout=5)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._stop_auth()
        if self._thread is not None and self._thread.is_alive():
            log.error("the socket thread did not stop; exiting without closing it")
            return
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _secure(self, router: zmq.Socket) -> None:
        folder = self.settings.curve_dir
        try:
            public, secret = load_server_keys(folder)
        except (OSError, ValueError) as e:
            raise ServerError(f"cannot read the CURVE server key in {folder}: {e}") from None
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        # Only clients whose public key is in authorized_clients/ get past the handshake.
        self._auth.configure_curve(domain="*", location=str(folder / AUTHORIZED_CLIENTS))
        router.curve_server = True
        router.curve_publickey = public
        router.curve_secretkey = secret

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # -- for other threads
    def publish(self, event: Any) -> None:
        """Send an event (ProgressEvent, JobChangedEvent) to its subscribers."""
        self._post(("event", event))

    def _post(self, item: tuple) -> None:
        self._outbox.put(item)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass    # the pipe is full of wake-ups already: the I/O thread will drain the outbox

    # -- the I/O thread
    def _run(self) -> None:
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if router in ready:
                    self._read_requests(router)
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    if not self._drain_outbox(router):
                        return
        except Exception:
            log.exception("the socket thread failed; stopping the daemon")
            self.failed = True
            self.on_failure()
        finally:
            router.close(linger=FINAL_LINGER_MS)

    def _read_requests(self, router: zmq.Socket) -> None:
        for _ in range(64):     # then give the outbox a turn
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._on_request(router, frames)

    def _on_request(self, router: zmq.Socket, frames: list[bytes]) -> None:
        identity = frames[0]
        if len(frames) != 2:
            self._reply(router, identity, 0, p.error_reply(
                "bad_request", f"send each request as exactly one frame (got {len(frames) - 1})"))
            return
        frame = frames[1]
        if len(frame) > self.settings.max_request_bytes:
            self._reply(router, identity, 0, p.error_reply(
                "too_large", f"the request is {len(frame)} bytes; this daemon accepts at most "
                             f"{self.settings.max_request_bytes} (make the project smaller: "
                             f"shorter or compressed audio, smaller images)"))
            return
        try:
            envelope = p.decode_request(frame)
        except p.ProtocolError as e:
            self._reply(router, identity, e.request_id, p.error_reply(e.code, e.message, e.field))
            return
        request = envelope.message
        kind = type(request)
        if kind in self._quick:
            self._reply(router, identity, envelope.id, _answer(self._quick[kind], request))
        elif kind in self._slow:
            self._run_slow(router, identity, envelope.id, request)
        elif kind is p.SubscribeRequest:
            self._subscribe(router, identity, envelope.id, request)
        elif kind is p.UnsubscribeRequest:
            subs = self._subscriptions.get(identity, {})
            if request.job_id is None:
                subs.clear()
            else:
                subs.pop(request.job_id, None)
            if not subs:
                self._subscriptions.pop(identity, None)
            self._reply(router, identity, envelope.id, p.UnsubscribedReply(job_id=request.job_id))

    def _run_slow(self, router: zmq.Socket, identity: bytes, request_id: int, request: Any) -> None:
        lane, handler = self._slow[type(request)]
        with self._waiting_lock:
            if self._waiting[lane] >= MAX_WAITING[lane]:
                self._reply(router, identity, request_id, p.error_reply(
                    "busy", f"{MAX_WAITING[lane]} {lane} requests are waiting already; retry shortly"))
                return
            self._waiting[lane] += 1

        def task() -> None:
            try:
                self._post(("send", identity, _encode(_answer(handler, request), request_id)))
            finally:
                with self._waiting_lock:
                    self._waiting[lane] -= 1

        self._pools[lane].submit(task)

    def _subscribe(self, router: zmq.Socket, identity: bytes, request_id: int,
                   request: p.SubscribeRequest) -> None:
        reply = _answer(self.service.subscription_snapshot, request.job_id)
        if isinstance(reply, p.ErrorReply):
            self._reply(router, identity, request_id, reply)
            return
        self._subscriptions.setdefault(identity, {})[request.job_id] = request_id
        self._reply(router, identity, request_id,
                    p.SubscribedReply(job_id=request.job_id, jobs=reply))

    def _drain_outbox(self, router: zmq.Socket) -> bool:
        """Send what other threads handed over; False once asked to stop."""
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return True
            if item[0] == "send":
                self._send(router, item[1], item[2])
            elif item[0] == "event":
                self._fan_out(router, item[1])
            elif item[0] == "stop":
                for identity, subs in list(self._subscriptions.items()):
                    for request_id in set(subs.values()):
                        self._send(router, identity, _encode(p.DeadEvent(message=item[1][:4000]),
                                                             request_id))
                return False

    def _fan_out(self, router: zmq.Socket, event: Any) -> None:
        job_id = event.job_id if isinstance(event, p.ProgressEvent) else event.job.id
        for identity, subs in list(self._subscriptions.items()):
            request_id = subs.get(job_id, subs.get(None))
            if request_id is not None:
                self._send(router, identity, _encode(event, request_id))

    def _reply(self, router: zmq.Socket, identity: bytes, request_id: int, reply: Any) -> None:
        self._send(router, identity, _encode(reply, request_id))

    def _send(self, router: zmq.Socket, identity: bytes, frame: bytes) -> None:
        try:
            router.send_multipart([identity, frame], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("client %s is not reading; a message to it was dropped", identity.hex())
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self._subscriptions.pop(identity, None)     # the client has gone away


def _answer(handler: Callable[[Any], Any], request: Any) -> Any:
    """The handler's reply, or the ErrorReply that its failure maps to — the one place where
    exceptions become error replies."""
    try:
        return handler(request)
    except p.ProtocolError as e:
        return p.error_reply(e.code, e.message, e.field)
    except Exception as e:
        log.exception("request %s failed", type(request).__name__)
        return p.error_reply("internal", f"the daemon failed on this request ({type(e).__name__}: "
                                         f"{e}); this is a bug — the daemon log has the details")


def _encode(message: Any, request_id: int) -> bytes:
    try:
        return p.encode(message, request_id)
    except Exception as e:
        log.exception("cannot encode a %s reply", type(message).__name__)
        return p.encode(p.error_reply("internal", f"the daemon could not encode its "
                                      f"{type(message).__name__} reply: {e}"), request_id)
