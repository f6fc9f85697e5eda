"""shared.protocol decoding is strict: malformed, truncated, oversized, wrong-version,
unknown-field and wrong-type frames are refused with the right error code and field, before
anything large is built, and nothing but ProtocolError ever escapes."""
from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import protocol as p


def frame(body, type_="tts", version=1, request_id=9, **extra) -> bytes:
    return msgpack.packb({"v": version, "id": request_id, "type": type_, "body": body, **extra},
                         use_bin_type=True)


def refused(data: bytes, decode=p.decode_request) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as e:
        decode(data)
    return e.value


TTS = {"text": "Hello", "voice": "espeak:en-us"}


def test_an_unknown_body_field_is_named():
    e = refused(frame({**TTS, "pitch": 3}))
    assert (e.code, e.field, e.request_id) == ("bad_request", "body.pitch", 9)


def test_an_unknown_envelope_field_is_named():
    e = refused(frame(TTS, extra_field=1))
    assert (e.code, e.field) == ("bad_request", "extra_field")


def test_a_missing_field_is_named():
    e = refused(frame({"text": "Hello"}))
    assert (e.code, e.field) == ("bad_request", "body.voice")
    assert "missing" in e.message


def test_a_missing_body_is_refused():
    e = refused(msgpack.packb({"v": 1, "id": 1, "type": "info"}))
    assert (e.code, e.field) == ("bad_request", "body")


@pytest.mark.parametrize("body, field", [
    ({"limit": True}, "body.limit"),            # a bool is not an int
    ({"limit": 1.0}, "body.limit"),             # a float is not an int
    ({"limit": "5"}, "body.limit"),
])
def test_wrong_types_for_an_int_are_refused(body, field):
    e = refused(frame(body, "list"))
    assert (e.code, e.field) == ("bad_request", field)


@pytest.mark.parametrize("body, field", [
    ({**TTS, "speed": True}, "body.speed"),     # a bool is not a number
    ({**TTS, "speed": "fast"}, "body.speed"),
    ({**TTS, "speed": float("nan")}, "body.speed"),
    ({**TTS, "voice": 5}, "body.voice"),
    ({**TTS, "text": b"Hello"}, "body.text"),   # bin where a str belongs
])
def test_wrong_types_for_tts_are_refused(body, field):
    e = refused(frame(body))
    assert (e.code, e.field) == ("bad_request", field)


def test_str_where_bytes_belong_is_refused():
    e = refused(frame({"project": "PK..", "mode": "draft"}, "submit"))
    assert (e.code, e.field) == ("bad_request", "body.project")


def test_a_value_outside_its_range_is_refused():
    e = refused(frame({**TTS, "speed": 9.0}))
    assert (e.code, e.field) == ("bad_request", "body.speed")
    assert "[0.5, 2.0]" in e.message


def test_an_enumerated_value_outside_its_choices_is_refused():
    e = refused(frame({"project": b"x", "mode": "turbo"}, "submit"))
    assert (e.code, e.field) == ("bad_request", "body.mode")


def test_a_job_id_must_match_its_pattern():
    e = refused(frame({"job_id": "../../etc"}, "status"))
    assert (e.code, e.field) == ("bad_request", "body.job_id")


def test_a_string_over_its_field_limit_is_too_large():
    e = refused(frame({**TTS, "text": "a" * (p.MAX_TTS_TEXT + 1)}))
    assert (e.code, e.field) == ("too_large", "body.text")


def test_an_empty_required_string_is_refused():
    e = refused(frame({**TTS, "text": ""}))
    assert (e.code, e.field) == ("bad_request", "body.text")


def test_another_protocol_version_is_bad_version_even_with_an_unknown_body():
    e = refused(frame({"whatever": 1}, "future_type", version=2))
    assert (e.code, e.field, e.request_id) == ("bad_version", "v", 9)
    assert "version 1" in e.message


def test_a_missing_version_is_bad_version():
    e = refused(msgpack.packb({"id": 1, "type": "info", "body": {}}))
    assert e.code == "bad_version"


def test_an_unknown_message_type_is_named():
    e = refused(frame({}, "reboot"))
    assert (e.code, e.field) == ("bad_request", "type")
    assert "info" in e.message        # the known types are listed


def test_a_reply_type_is_not_accepted_as_a_request():
    e = refused(frame({"job_id": "0123456789ab"}, "deleted"))
    assert (e.code, e.field) == ("bad_request", "type")


@pytest.mark.parametrize("request_id", [-1, 2**63, "7", True])
def test_the_request_id_must_be_a_non_negative_int(request_id):
    e = refused(msgpack.packb({"v": 1, "id": request_id, "type": "info", "body": {}}))
    assert (e.code, e.field) == ("bad_request", "id")


def test_a_frame_that_is_not_a_map_is_refused():
    assert refused(msgpack.packb([1, "info", {}])).code == "bad_request"


def test_garbage_is_refused():
    assert refused(b"\xc1\x00\x01").code == "bad_request"      # 0xc1 is never used in msgpack


def test_trailing_bytes_are_refused():
    e = refused(frame({}, "info") + b"\x00")
    assert (e.code, "extra bytes" in e.message) == ("bad_request", True)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_a_truncated_frame_is_refused(cut):
    data = frame({**TTS, "text": "a fairly long line of text"})
    e = refused(data[:-cut])
    assert (e.code, "truncated" in e.message) == ("bad_request", True)


def test_a_frame_over_the_limit_is_refused_by_its_length_alone():
    class Huge(bytes):
        def __len__(self):
            return p.MAX_FRAME_BYTES + 1
    e = refused(Huge(b"\x80"))       # never parsed: its length is enough
    assert e.code == "too_large"


def test_a_string_longer_than_any_string_may_be_is_refused_before_decoding():
    # a str 32 header announcing 1 MB, with no bytes behind it
    data = b"\x81\xa1v" + b"\xdb" + struct.pack(">I", p.MAX_STR_BYTES + 1)
    assert refused(data).code == "too_large"


def test_an_array_announcing_too_many_items_is_refused_before_decoding():
    data = b"\xdd" + struct.pack(">I", p.MAX_ARRAY_ITEMS + 1)
    assert refused(data).code == "too_large"


def test_a_map_announcing_too_many_entries_is_refused_before_decoding():
    data = b"\xdf" + struct.pack(">I", p.MAX_MAP_ITEMS + 1)
    assert refused(data).code == "too_large"


def test_nesting_deeper_than_the_limit_is_refused():
    body = {"x": 1}
    for _ in range(p.MAX_DEPTH):
        body = {"x": body}
    e = refused(frame(body, "info"))
    assert (e.code, "nest" in e.message) == ("bad_request", True)


def test_nesting_up_to_the_limit_reaches_the_field_check():
    body: object = 1
    for _ in range(p.MAX_DEPTH - 2):     # envelope and body are two levels
        body = [body]
    e = refused(frame({"limit": body}, "list"))
    assert (e.code, e.field) == ("bad_request", "body.limit")


def test_many_small_values_are_refused_before_they_are_built():
    data = msgpack.packb([[0] * 1000] * (p.MAX_OBJECTS // 1000 + 1))
    assert refused(data).code == "too_large"


@pytest.mark.parametrize("ext", [msgpack.ExtType(5, b"ab"),
                                 msgpack.Timestamp(seconds=1)],
                         ids=["ext", "timestamp"])
def test_msgpack_ext_types_are_refused(ext):
    e = refused(frame({**TTS, "text": ext}))
    assert (e.code, "ext" in e.message) == ("bad_request", True)


def test_a_non_string_map_key_is_refused():
    data = msgpack.packb({"v": 1, "id": 1, "type": "info", "body": {1: 2}})
    assert refused(data).code == "bad_request"


def test_invalid_utf8_is_refused():
    data = frame({**TTS, "text": "Hello"}).replace(b"Hello", b"\xff\xfe\xfd\xfc\xfb")
    assert refused(data).code == "bad_request"


def test_a_reply_frame_is_checked_as_strictly():
    bad = frame({"code": "internal", "message": "x", "field": None, "extra": 1}, "error")
    e = refused(bad, p.decode_reply)
    assert (e.code, e.field) == ("bad_request", "body.extra")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_protocol_error(data):
    try:
        p.decode_request(data)
    except p.ProtocolError as e:
        assert e.code in p.ERROR_CODES


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                    | st.text(max_size=20) | st.binary(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=30))
def test_random_bodies_never_raise_anything_but_protocol_error(body):
    for type_ in p.REQUEST_TYPES:
        try:
            p.decode_request(frame(body, type_))
        except p.ProtocolError as e:
            assert e.code in p.ERROR_CODES
