"""Finished clips kept on disk, keyed by everything that determines them, for re-renders.

A clip is a pure function of: the model (weight files), the sampling settings, the seed, the
prompts, the reference image, the person masks, the audio it hears (the speaker samples its
features are computed from) and — for every clip but the first — the motion frames it continues
from. `ClipKey` hashes all of it; equal keys mean bit-identical clips. So after a user edits
line k, a re-render finds every clip before the first one whose audio window reaches line k and
renders from there on.

An entry is a folder `<root>/<key[:2]>/<key>/`:
    video.mp4     the frames the clip adds to the video (H.264, no audio) — concatenated at the end
    motion.npy    its last motion frames, uint8 [M, H, W, 3] — what the next clip continues from
    meta.json     frame count, size and the motion frames' sha256 (the next clip's key needs it)
written to a temporary folder and renamed into place, so an entry is complete or absent.
`prune` keeps the cache under a size budget, least recently used entries first; it runs before
a render, never during one, so the clips a render is assembling stay in place.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

CACHE_FORMAT = "duet-clip-1"     # bump when what a clip is made of changes meaning
VIDEO_FILE = "video.mp4"
MOTION_FILE = "motion.npy"
META_FILE = "meta.json"


class ClipKey:
    """sha256 over named fields, each written with its name, type and length (no ambiguity
    between fields however their bytes happen to line up)."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self.add("format", CACHE_FORMAT)

    def add(self, name: str, value) -> "ClipKey":
        kind, data = _encode(value)
        for part in (name.encode(), kind.encode(), data):
            self._digest.update(struct.pack("<Q", len(part)))
            self._digest.update(part)
        return self

    def hexdigest(self) -> str:
        return self._digest.copy().hexdigest()


def _encode(value) -> tuple[str, bytes]:
    if isinstance(value, bool):
        return "bool", b"1" if value else b"0"
    if isinstance(value, int):
        return "int", str(value).encode()
    if isinstance(value, float):
        return "float", repr(value).encode()
    if isinstance(value, str):
        return "str", value.encode()
    if isinstance(value, bytes):
        return "bytes", value
    if value is None:
        return "none", b""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        header = f"{value.dtype}{tuple(value.shape)}"
        if value.dtype == torch.bfloat16:       # numpy has no bfloat16: hash the raw bits
            value = value.view(torch.int16)
        return "tensor", header.encode() + value.numpy().tobytes()
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
        return "array", f"{value.dtype}{value.shape}".encode() + value.tobytes()
    if isinstance(value, (list, tuple)):
        parts = [_encode(item) for item in value]
        return "seq", b"".join(struct.pack("<Q", len(k)) + k.encode() + struct.pack("<Q", len(d)) + d
                               for k, d in parts)
    raise TypeError(f"cannot hash a {type(value).__name__} into a clip key")


def sha256_of(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def files_identity(files: Iterable[Path]) -> str:
    """A short id of a set of weight files from their names, sizes and modification times —
    cheap (no reading of 80 GB), and it changes when a file is replaced."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class CachedClip:
    key: str
    folder: Path
    frames: int                 # frames in video.mp4
    motion_sha256: str

    @property
    def video(self) -> Path:
        return self.folder / VIDEO_FILE

    def motion(self) -> np.ndarray:
        return np.load(self.folder / MOTION_FILE)


class ClipCache:
    def __init__(self, root: Path, max_bytes: int = 50 * 1024 ** 3):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> CachedClip | None:
        folder = self._folder(key)
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not (folder / VIDEO_FILE).is_file() or not (folder / MOTION_FILE).is_file():
            return None
        os.utime(folder)                        # recently used: pruned last
        return CachedClip(key, folder, int(meta["frames"]), str(meta["motion_sha256"]))

    def put(self, key: str, video: Path, motion: np.ndarray, frames: int) -> CachedClip:
        """Store a finished clip: `video` (moved in), its motion frames and frame count."""
        folder = self._folder(key)
        staging = self.root / ".staging" / f"{key}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            shutil.move(str(video), staging / VIDEO_FILE)
            np.save(staging / MOTION_FILE, np.ascontiguousarray(motion, dtype=np.uint8))
            meta = {"frames": frames, "motion_sha256": sha256_of(motion),
                    "motion_shape": list(motion.shape), "created": time.time()}
            (staging / META_FILE).write_text(json.dumps(meta))
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():                 # an equal clip from another render: same bytes
                shutil.rmtree(staging)
            else:
                os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.get(key)

    def prune(self) -> int:
        """Remove least recently used entries until the cache fits max_bytes; returns how many."""
        entries = []
        for folder in self.root.glob("??/*"):
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append((folder.stat().st_mtime, size, folder))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, folder in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed += 1
        return removed
