"""Fuzzing project files and uploaded media.

Whatever the bytes of a project file — mutated or truncated zips, crafted headers, zip-slip and
absolute names, symlinks, bombs, duplicate entries, broken images and audio inside an otherwise
valid project — `load_project` raises ProjectError and nothing else, or returns a scene that is
valid (it saves and loads back equal). Over a live daemon the same uploads are refused with
`invalid_project` (submit) or `bad_request` (soundtrack line audio), never `internal`.
"""
from __future__ import annotations

import collections
import io
import random
import struct
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shared import protocol as p
from shared.scene import Line, ProjectError, load_project, save_project
from studio.client import RequestFailed
from tests.conftest import Projects, tone_wav


def noisy_jpeg() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def base_project() -> bytes:
    """Two people (a PNG and a JPEG portrait), one line with its own WAV, one spoken line."""
    scene = Projects().scene([Line(0, "", audio=tone_wav(0.3)), Line(1, "Hi.")])
    scene.cast[1].image = noisy_jpeg()
    return save_project(scene)


BASE = base_project()
with zipfile.ZipFile(io.BytesIO(BASE)) as _archive:
    ENTRIES = {name: _archive.read(name) for name in _archive.namelist()}
ASSETS = sorted(name for name in ENTRIES if name.startswith("assets/"))
assert [a.rsplit(".", 1)[1] for a in ASSETS] == ["png", "jpg", "wav"]


def zip_of(entries: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def loads_or_refuses(data: bytes) -> str:
    """'refused' for a ProjectError; 'loaded' for a scene that saves and loads back equal.
    Any other exception propagates and fails the test."""
    try:
        scene = load_project(data)
    except ProjectError:
        return "refused"
    assert load_project(save_project(scene)) == scene
    return "loaded"


def mutate(draw_int, draw_bytes, data: bytearray, head_bias: int) -> bytearray:
    """A few flips, inserts, deletes or a cut; most land in the first `head_bias` bytes (the
    headers) or the last 200 (a zip's central directory)."""
    for _ in range(draw_int(1, 6)):
        region = draw_int(0, 2)
        if region == 0:
            at = draw_int(0, min(head_bias, len(data)))
        elif region == 1:
            at = max(0, len(data) - 1 - draw_int(0, 200))
        else:
            at = draw_int(0, len(data))
        op = draw_int(0, 3)
        if op == 0 and at < len(data):
            data[at] = draw_int(0, 255)
        elif op == 1:
            data[at:at] = draw_bytes()
        elif op == 2:
            del data[at:at + draw_int(1, 16)]
        else:
            del data[at:]
    return data


@st.composite
def mutated_projects(draw) -> bytes:
    data = bytearray(draw(st.sampled_from([BASE, zip_of(ENTRIES), zip_of(ENTRIES, zipfile.ZIP_STORED)])))
    return bytes(mutate(lambda a, b: draw(st.integers(a, b)),
                        lambda: draw(st.binary(min_size=1, max_size=12)), data, 64))


@settings(max_examples=1500, deadline=None)
@given(mutated_projects())
def test_a_mutated_or_truncated_project_file_is_a_project_error_or_a_valid_scene(data):
    loads_or_refuses(data)


@st.composite
def projects_with_a_mutated_asset(draw) -> bytes:
    name = draw(st.sampled_from(ASSETS))
    data = mutate(lambda a, b: draw(st.integers(a, b)),
                  lambda: draw(st.binary(min_size=1, max_size=12)), bytearray(ENTRIES[name]), 96)
    return zip_of({**ENTRIES, name: bytes(data)})


@settings(max_examples=600, deadline=None)
@given(projects_with_a_mutated_asset())
def test_mutated_images_and_audio_in_a_valid_project_are_a_project_error_or_valid(data):
    loads_or_refuses(data)


# ---- crafted archives: each refused with a ProjectError that names the problem -------------

def patched(data: bytes, name: str, **fields) -> bytes:
    """`data` with central-directory fields of entry `name` overwritten (offsets from the zip
    specification, APPNOTE 4.3.12): version_needed, flags, method, crc, usize."""
    offsets = {"version_needed": (6, "<H"), "flags": (8, "<H"), "method": (10, "<H"),
               "crc": (16, "<I"), "usize": (24, "<I")}
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46:at + 46 + name_len] == name.encode():
            for key, value in fields.items():
                offset, fmt = offsets[key]
                struct.pack_into(fmt, out, at + offset, value)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} not in the archive")


def refusal(data: bytes) -> str:
    with pytest.raises(ProjectError) as e:
        load_project(data)
    return str(e.value)


def test_a_corrupt_deflate_stream_is_a_project_error():
    data = bytearray(BASE)
    start = data.find(b"project.json", data.find(b"PK\x03\x04")) + len("project.json")
    data[start:start + 40] = b"\xff" * 40        # the start of project.json's deflate stream
    assert refusal(bytes(data)).startswith("archive entry 'project.json': corrupt")


def test_a_zip_version_python_cannot_read_is_a_project_error():
    data = patched(BASE, "project.json", version_needed=135)
    assert refusal(data) == ("archive: unsupported zip format (zip file version 13.5); save the "
                             "project again")


def test_project_json_nested_thousands_deep_is_a_project_error():
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        assert refusal(zip_of({"project.json": deep})) == \
            "project.json: arrays and objects nest too deeply"


def test_an_entry_that_understates_its_size_fails_its_crc_without_inflating_the_rest():
    bomb = zip_of({**ENTRIES, "assets/line-1.wav": ENTRIES["assets/line-1.wav"] + bytes(200 << 20)})
    assert len(bomb) < 2 << 20                   # 200 MB of zeros deflate to ~200 kB
    lying = patched(bomb, "assets/line-1.wav", usize=len(ENTRIES["assets/line-1.wav"]))
    started = time.perf_counter()
    message = refusal(lying)
    assert time.perf_counter() - started < 1.0   # it stopped at the declared size
    assert message.startswith("archive entry 'assets/line-1.wav': corrupt")


def test_names_that_differ_between_directory_and_local_header_are_refused():
    data = bytearray(BASE)
    name_at = data.find(b"assets/cast-1.png")    # local headers come first, then the directory
    data[name_at:name_at + 17] = b"assets/cast-9.png"
    assert refusal(bytes(data)).startswith("archive entry 'assets/cast-1.png': corrupt")


@pytest.mark.parametrize("fields, message", [
    ({"flags": 1}, "archive entry 'assets/cast-1.png': is encrypted"),
    ({"method": 12}, "archive entry 'assets/cast-1.png': unsupported compression (method 12); "
                     "use deflate"),
    ({"method": 99}, "archive entry 'assets/cast-1.png': unsupported compression (method 99); "
                     "use deflate"),
], ids=["encrypted", "bzip2", "aes"])
def test_entries_zipfile_could_not_or_should_not_read_are_refused(fields, message):
    assert refusal(patched(BASE, "assets/cast-1.png", **fields)) == message


def test_too_many_entries_are_refused_before_any_is_read():
    from shared.scene import MAX_ENTRIES
    extra = {f"assets/x{i}.png": b"" for i in range(MAX_ENTRIES)}
    assert refusal(zip_of({**ENTRIES, **extra})) == \
        f"archive: {MAX_ENTRIES + len(ENTRIES)} entries (limit {MAX_ENTRIES})"


@pytest.mark.parametrize("name", ["assets/a\x00.png", "assets/" + "a" * 300 + ".png",
                                  "assets/ä.png", "assets/sub/a.png", "./project.json"])
def test_odd_entry_names_are_refused(name):
    # zipfile itself cuts a name at NUL, so that one is refused as an unreferenced "assets/a".
    assert refusal(zip_of({**ENTRIES, name: b"x"})).startswith("archive entry ")


def wav_with_rate(rate: int, seconds_at_16k: float = 0.3) -> bytes:
    """A valid 16 kHz WAV whose header then claims another sample rate."""
    data = bytearray(tone_wav(seconds_at_16k))
    fmt = data.find(b"fmt ")
    struct.pack_into("<II", data, fmt + 12, rate, rate * 2)   # sample rate, byte rate
    return bytes(data)


@pytest.mark.parametrize("rate", [7999, 384001, 50_000_017, 2**31 - 1])
def test_audio_claiming_an_absurd_sample_rate_is_refused_before_resampling(rate):
    data = zip_of({**ENTRIES, "assets/line-1.wav": wav_with_rate(rate)})
    assert refusal(data) == (f"lines[0].audio: sample rate {rate} Hz is outside 8000–384000 Hz; "
                             "re-export it at 16, 24, 44.1 or 48 kHz")


# ---- a live daemon ----------------------------------------------------------------------------

LIVE_SECONDS = 5.0
MIN_UPLOADS = 150            # measured: ~600 in 5 s on 2 cores (docs/reliability.md)


@pytest.fixture(scope="module")
def client(module_daemon):
    return module_daemon.client(timeout=60)


def test_a_live_daemon_refuses_mutated_uploads_with_their_error_code_never_internal(
        module_daemon, client):
    rng = random.Random(7)
    outcomes: collections.Counter[str] = collections.Counter()
    accepted = []
    deadline = time.monotonic() + LIVE_SECONDS
    while time.monotonic() < deadline:
        name = rng.choice(ASSETS)
        data = mutate(rng.randint, lambda: rng.randbytes(rng.randint(1, 12)),
                      bytearray(ENTRIES[name]), 96)
        as_submit = rng.random() < 0.7 or not name.endswith(".wav")
        try:
            if as_submit:
                job = client.submit(zip_of({**ENTRIES, name: bytes(data)}))
                accepted.append(job.id)
                client.cancel(job.id)       # its render is not what this test is about
                outcomes["submit accepted"] += 1
            else:
                client.request(p.SoundtrackRequest(voices=["espeak:en-us"], lines=[
                    p.DialogueLine(speaker=0, audio=bytes(data))]))
                outcomes["soundtrack accepted"] += 1
        except RequestFailed as e:
            outcomes[f"{'submit' if as_submit else 'soundtrack'} {e.code}"] += 1
    assert sum(outcomes.values()) >= MIN_UPLOADS, outcomes
    assert set(outcomes) <= {"submit accepted", "submit invalid_project", "soundtrack accepted",
                             "soundtrack bad_request"}, outcomes
    assert outcomes["submit invalid_project"] > 0 and outcomes["soundtrack bad_request"] > 0
    for job_id in accepted:
        assert client.wait(job_id).state in ("cancelled", "done")
    assert "Traceback" not in module_daemon.log()
    print(f"\nlive uploads in {LIVE_SECONDS:.0f} s: {dict(outcomes)}")


def test_a_soundtrack_line_claiming_an_absurd_sample_rate_is_refused_at_once(client):
    started = time.monotonic()
    with pytest.raises(RequestFailed) as e:
        client.request(p.SoundtrackRequest(voices=["espeak:en-us"], lines=[
            p.DialogueLine(speaker=0, audio=wav_with_rate(50_000_017, seconds_at_16k=3.0))]))
    assert (e.value.code, e.value.field) == ("bad_request", "body.lines")
    assert e.value.message.startswith("line 1: audio: sample rate 50000017 Hz is outside")
    assert time.monotonic() - started < 10


def test_a_project_that_escapes_its_folder_is_refused_and_writes_nothing(module_daemon, client,
                                                                        tmp_path):
    target = tmp_path / "escaped.png"
    for name in (f"../../../../../../../..{target}", str(target), "assets/../../x.png"):
        evil = zip_of({**ENTRIES, name: ENTRIES["assets/cast-1.png"]})
        with pytest.raises(RequestFailed) as e:
            client.submit(evil)
        assert e.value.code == "invalid_project"
        assert e.value.message.startswith(f"archive entry {name!r}:")
    assert not target.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == []
    assert client.info().protocol == p.PROTOCOL_VERSION
