"""Security: no client-supplied paths anywhere in the protocol, a size limit on every upload
(each tried at limit + 1), loopback unless CURVE says otherwise, and clients without an
authorized key getting no reply and having no effect.

tests/test_daemon_security.py covers the startup rules for remote binds and CURVE on loopback;
tests/test_scene_project.py and tests/test_reliability_fuzz_projects.py cover zip-slip,
absolute paths, symlinks and bombs inside project files."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import typing
import zipfile
from dataclasses import fields
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth

from daemon.config import is_loopback, parse_settings
from shared import protocol as p
from shared import scene as s
from studio.client import DaemonClient, DaemonUnreachable, RequestFailed
from tests.conftest import portrait_png

REPO = Path(__file__).resolve().parents[1]


def raw(type_: str, body: dict) -> bytes:
    return msgpack.packb({"v": 1, "id": 11, "type": type_, "body": body}, use_bin_type=True)


def refused(data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as e:
        p.decode_request(data)
    return e.value


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def exchange(address: str, frame: bytes) -> p.ErrorReply:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    try:
        sock.send(frame)
        assert sock.poll(30_000), "no reply"
        return p.decode_reply(sock.recv()).message
    finally:
        sock.close()


# ------------------------------------------------------------------ no client-supplied paths

# Every text field a client may fill freely, reviewed: none becomes part of a path. Text is
# spoken; a voice id is looked up in the catalog (shared.voices) and only hashed into the TTS
# cache key. Bytes fields are contents, never names. A new free-form field fails this test
# until it is added here after the same review.
FREE_TEXT = {"TtsRequest.text", "TtsRequest.voice", "SoundtrackRequest.voices",
             "DialogueLine.text", "DialogueLine.voice"}


def request_fields():
    """(owner, field, type) of every field a client sends, nested parts included."""
    seen, todo = [], list(p.REQUEST_TYPES.values())
    while todo:
        cls = todo.pop()
        hints = typing.get_type_hints(cls, vars(p))
        for f in fields(cls):
            seen.append((cls, f, hints[f.name]))
            for arg in (hints[f.name], *typing.get_args(hints[f.name])):
                if isinstance(arg, type) and hasattr(arg, "__dataclass_fields__"):
                    todo.append(arg)
    return seen


def test_every_text_field_of_every_request_is_a_closed_choice_a_fixed_pattern_or_reviewed():
    free = set()
    for cls, f, tp in request_fields():
        parts = {tp, *typing.get_args(tp)} - {type(None)}
        if not parts & {str, list[str]}:
            continue                                 # numbers, bytes, Literal choices, parts
        if f.metadata.get("pattern") is not None:
            assert f.metadata["pattern"].pattern == p.JOB_ID_PATTERN, (cls, f.name)
            continue
        free.add(f"{cls.__name__}.{f.name}")
    assert free == FREE_TEXT


PATH_LIKE_JOB_IDS = ["../../etc/passwd", "/etc/passwd", "0123456789ab/..", "..", ".",
                     "0123456789AB", "0123456789ab\n", "0123456789ab\x00", "0123456789abc",
                     "%2e%2e%2f", "~/x", "0123456789a/", "C:\\windows"]
PATH_LIKE_ARTIFACTS = ["../jobs.sqlite3", "/etc/passwd", "input/project.zip",
                       "video.mp4/../../x", "VIDEO.MP4", "video.mp4\x00", "./video.mp4",
                       "work/video.mp4", ""]
JOB_ID_REQUESTS = ["status", "cancel", "delete", "fetch", "subscribe", "unsubscribe"]


@pytest.mark.parametrize("type_", JOB_ID_REQUESTS)
def test_a_path_like_job_id_is_refused_by_every_request_that_takes_one(type_):
    for job_id in PATH_LIKE_JOB_IDS:
        e = refused(raw(type_, {"job_id": job_id}))
        # Longer than an id can be: too_large; otherwise not the pattern: bad_request.
        assert (e.code, e.field) == ("too_large" if len(job_id) > 12 else "bad_request",
                                     "body.job_id"), job_id


def test_a_path_like_artifact_name_is_refused():
    for name in PATH_LIKE_ARTIFACTS:
        e = refused(raw("fetch", {"job_id": "0123456789ab", "artifact": name}))
        assert (e.code, e.field) == ("bad_request", "body.artifact"), name


def test_the_daemon_refuses_path_like_names_and_voices_and_reads_nothing(module_daemon, client):
    for type_, body, field in [
            ("fetch", {"job_id": "../../../etc", "artifact": "video.mp4"}, "body.job_id"),
            ("fetch", {"job_id": "0123456789ab", "artifact": "../jobs.sqlite3"}, "body.artifact"),
            ("delete", {"job_id": "/" * 12}, "body.job_id")]:
        reply = exchange(module_daemon.address, raw(type_, body))
        assert (reply.code, reply.field) == ("bad_request", field)
    for voice in ("../../../../etc/passwd", "/dev/zero", "espeak:../../x"):
        with pytest.raises(RequestFailed) as e:
            client.tts("Hi.", voice)
        assert e.value.code == "unknown_voice"
    assert client.info().protocol == p.PROTOCOL_VERSION


# ------------------------------------------------------------------ a limit on every upload

MiB = 1024 * 1024


def tts(text: str) -> bytes:
    return raw("tts", {"text": text, "voice": "espeak:en-us"})


def soundtrack(voices=("espeak:en-us",), line: dict | None = None, lines: int = 1) -> bytes:
    return raw("soundtrack", {"voices": list(voices),
                              "lines": [line or {"speaker": 0, "text": "Hi"}] * lines})


# name: (a frame with an upload of n, the limit, the field refused, its unit)
LIMITS = {
    "tts text": (lambda n: tts("a" * n), p.MAX_TTS_TEXT, "body.text", "characters"),
    "soundtrack voices": (lambda n: soundtrack(voices=["espeak:en-us"] * n),
                          p.MAX_SOUNDTRACK_VOICES, "body.voices", "items"),
    "soundtrack lines": (lambda n: soundtrack(lines=n), p.MAX_SOUNDTRACK_LINES, "body.lines",
                         "items"),
    "line text": (lambda n: soundtrack(line={"speaker": 0, "text": "a" * n}), p.MAX_TTS_TEXT,
                  "body.lines[0].text", "characters"),
    "line audio": (lambda n: soundtrack(line={"speaker": 0, "audio": bytes(n)}),
                   p.MAX_LINE_AUDIO_BYTES, "body.lines[0].audio", "bytes"),
    "project": (lambda n: raw("submit", {"project": bytes(n)}), p.MAX_PROJECT_BYTES,
                "body.project", "bytes"),
}


@pytest.mark.parametrize("name", LIMITS)
def test_every_upload_is_refused_at_its_limit_plus_one_and_accepted_at_it(name):
    make, limit, field, unit = LIMITS[name]
    p.decode_request(make(limit))                   # at the limit: accepted by the decoder
    e = refused(make(limit + 1))
    assert (e.code, e.field, e.message) == ("too_large", field,
                                            f"{field} has {limit + 1} {unit}; the limit is {limit}")


def test_the_daemon_refuses_a_request_one_byte_over_its_configured_limit(module_daemon):
    limit = 8 * MiB                                 # module_daemon: --max-request-mb 8
    envelope = len(raw("submit", {"project": bytes(limit)})) - limit
    at_limit = raw("submit", {"project": bytes(limit - envelope)})
    assert len(at_limit) == limit
    reply = exchange(module_daemon.address, at_limit)
    assert reply.code == "invalid_project"          # read and checked: not refused for size
    reply = exchange(module_daemon.address, raw("submit", {"project": bytes(limit - envelope + 1)}))
    assert reply.code == "too_large" and f"accepts at most {limit}" in reply.message


def zip_of(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def base_entries(projects) -> dict[str, bytes]:
    project = projects.long_audio(0.5)
    with zipfile.ZipFile(io.BytesIO(project)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_an_image_one_byte_over_its_limit_is_refused_and_at_the_limit_loads(base_entries):
    png = portrait_png((10, 20, 30))
    at_limit = png + bytes(s.MAX_IMAGE_BYTES - len(png))   # trailing bytes after IEND
    assert s.load_project(zip_of({**base_entries, "assets/cast-1.png": at_limit}))
    with pytest.raises(s.ProjectError) as e:
        s.load_project(zip_of({**base_entries, "assets/cast-1.png": at_limit + b"\0"}))
    assert str(e.value) == "cast[0].image: the image is 20.0 MB (limit 20.0 MB); save it smaller"


def test_line_audio_one_byte_over_its_limit_is_refused(base_entries):
    wav = base_entries["assets/line-1.wav"]
    over = wav + bytes(s.MAX_AUDIO_BYTES + 1 - len(wav))
    with pytest.raises(s.ProjectError) as e:
        s.load_project(zip_of({**base_entries, "assets/line-1.wav": over}))
    # The archive's declared sizes are checked first, against the same 50 MiB.
    assert str(e.value) == ("archive entry 'assets/line-1.wav': declares 50.0 MB uncompressed "
                            "(limit 50.0 MB)")


def test_project_json_and_the_whole_project_one_byte_over_are_refused(base_entries):
    document = base_entries["project.json"]
    padded = document + b" " * (s.MAX_DOCUMENT_BYTES + 1 - len(document))
    with pytest.raises(s.ProjectError, match=r"^archive entry 'project.json': declares 4.0 MB "):
        s.load_project(zip_of({**base_entries, "project.json": padded}))
    with pytest.raises(s.ProjectError, match=r"^archive: the project is 512.0 MB"):
        s.load_project(bytes(s.MAX_PROJECT_BYTES + 1))


def test_the_daemon_refuses_oversized_media_packed_into_a_small_project(client, base_entries):
    png = portrait_png((10, 20, 30))
    wav = base_entries["assets/line-1.wav"]
    for name, data, says in [
            ("assets/cast-1.png", png + bytes(s.MAX_IMAGE_BYTES + 1 - len(png)),
             "cast[0].image: the image is 20.0 MB"),
            ("assets/line-1.wav", wav + bytes(s.MAX_AUDIO_BYTES + 1 - len(wav)),
             "archive entry 'assets/line-1.wav': declares 50.0 MB")]:
        project = zip_of({**base_entries, name: data})
        assert len(project) < 1 * MiB                # deflated zeros: cheap to send
        with pytest.raises(RequestFailed) as e:
            client.submit(project)
        assert e.value.code == "invalid_project" and e.value.message.startswith(says)


# ------------------------------------------------------------------ who may connect

@pytest.mark.parametrize("bind, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("*", False), ("192.168.1.5", False), ("eth0", False),
    ("example.org", False)])
def test_only_loopback_addresses_serve_without_curve(bind, loopback):
    assert is_loopback(bind) is loopback


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            local, _, state = row.split()[1:4]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


def test_a_daemon_started_with_defaults_listens_on_loopback_only(module_daemon):
    assert listening_addresses(module_daemon.port) == {"0100007F"}    # 127.0.0.1, little-endian
    assert parse_settings([], env={}).bind == "127.0.0.1"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    made = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "daemon", "--make-curve-keys",
                           str(tmp_path / "keys")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert made.returncode == 0, made.stderr
    return tmp_path / "keys"


def test_a_remote_bind_with_curve_ignores_unauthenticated_clients_entirely(daemon_factory, keys,
                                                                          projects, tmp_path):
    daemon = daemon_factory("--bind", "0.0.0.0", "--curve-dir", str(keys),
                            client_kwargs={"curve_dir": keys})
    assert listening_addresses(daemon.port) == {"00000000"}
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "client")
    shutil.copy(keys / "server.key", stranger / "server.key")
    project = projects.two_lines()
    for curve_dir in (None, stranger):
        with DaemonClient(daemon.address, timeout=1.5, curve_dir=curve_dir) as outsider:
            with pytest.raises(DaemonUnreachable):
                outsider.submit(project, timeout=1.5)
    with DaemonClient(daemon.address, timeout=30, curve_dir=keys) as insider:
        assert insider.info().secure is True
        assert insider.jobs() == []                  # the outsiders' submits never arrived
