"""The clip cache: keys that see every input, entries that are complete or absent, pruning."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from daemon.pipeline.clip_cache import ClipCache, ClipKey, files_identity, sha256_of


def key(**fields) -> str:
    k = ClipKey()
    for name, value in fields.items():
        k.add(name, value)
    return k.hexdigest()


def test_equal_fields_give_equal_keys_and_any_change_a_new_one():
    base = dict(prompt="two people talk", seed=42, guide=5.0, teacache=False,
                audio=np.arange(6, dtype=np.float32), masks=torch.ones(3, 2, 2), motion="")
    assert key(**base) == key(**base)
    changes = [("prompt", "two people talk."), ("seed", 43), ("guide", 5.000001),
               ("teacache", True), ("audio", np.arange(6, dtype=np.float64)),
               ("audio", np.arange(6, dtype=np.float32).reshape(2, 3)),
               ("masks", torch.ones(3, 2, 2, dtype=torch.float16)), ("motion", "ab12")]
    digests = {key(**(base | {name: value})) for name, value in changes}
    assert len(digests) == len(changes) and key(**base) not in digests


def test_field_boundaries_cannot_be_confused():
    assert key(a="ab", b="c") != key(a="a", b="bc")
    assert key(a=["ab", "c"]) != key(a=["a", "bc"])
    assert key(a=1) != key(a="1") != key(a=1.0)


def test_bfloat16_tensors_hash_by_their_bits():
    x = torch.randn(4, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert key(x=x) == key(x=x.clone()) != key(x=x.float())


def _clip(tmp_path, name: str, size: int = 1000):
    video = tmp_path / f"{name}.mp4"
    video.write_bytes(b"\0" * size)
    return video, np.full((5, 4, 6, 3), 7, np.uint8)


def test_a_stored_clip_comes_back_with_its_motion_frames(tmp_path):
    cache = ClipCache(tmp_path / "cache")
    video, motion = _clip(tmp_path, "a")
    assert cache.get("ab" * 32) is None
    stored = cache.put("ab" * 32, video, motion, frames=24)
    assert not video.exists()                                  # moved into the cache
    found = cache.get("ab" * 32)
    assert found == stored and found.frames == 24
    assert found.video.read_bytes() == b"\0" * 1000
    assert np.array_equal(found.motion(), motion) and found.motion_sha256 == sha256_of(motion)


def test_a_half_written_entry_is_not_found(tmp_path):
    cache = ClipCache(tmp_path / "cache")
    video, motion = _clip(tmp_path, "a")
    stored = cache.put("cd" * 32, video, motion, frames=3)
    (stored.folder / "meta.json").unlink()
    assert cache.get("cd" * 32) is None


def test_storing_a_clip_twice_keeps_the_first(tmp_path):
    cache = ClipCache(tmp_path / "cache")
    first = cache.put("ef" * 32, *_clip(tmp_path, "a", 10), frames=3)
    second = cache.put("ef" * 32, *_clip(tmp_path, "b", 20), frames=3)
    assert first.video == second.video and first.video.stat().st_size == 10
    assert not list((tmp_path / "cache" / ".staging").iterdir())


def test_pruning_removes_the_least_recently_used_entries_first(tmp_path):
    cache = ClipCache(tmp_path / "cache")
    keys = ["01" * 32, "02" * 32, "03" * 32]
    for i, k in enumerate(keys):
        cache.put(k, *_clip(tmp_path, k, 1000), frames=1)
        folder = cache.get(k).folder
        os.utime(folder, (time.time() - 100 + i, time.time() - 100 + i))
    size = lambda k: sum(f.stat().st_size for f in cache._folder(k).iterdir())  # noqa: E731
    cache.max_bytes = size(keys[0]) + size(keys[2])             # room for two of the three
    cache.get(keys[0])                                          # used again: now the newest
    assert cache.prune() == 1
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None


def test_the_weights_identity_changes_when_a_file_is_replaced(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pth"
    a.write_bytes(b"1234")
    b.write_bytes(b"5")
    before = files_identity([a, b])
    assert files_identity([b, a]) == before
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000))
    assert files_identity([a, b]) != before


def test_unhashable_values_are_refused():
    with pytest.raises(TypeError, match="cannot hash a dict"):
        ClipKey().add("x", {"a": 1})
