"""Reading checkpoint files exactly as they are released.

Every tensor goes straight to the requested device and dtype, one at a time, so a 14B
checkpoint never exists as a full fp32 copy in host memory. `.pth` files are read only with
`torch.load(weights_only=True)` (no pickle code runs); safetensors through their index.
Dtypes are read per tensor from each file: the real multitalk.safetensors mixes fp32 and
16-bit tensors and the real T5 file is bf16.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open

DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
MULTITALK_FILE = "multitalk.safetensors"


class WeightsError(RuntimeError):
    """A weight file is missing, partial or malformed. The message names the file and the fix."""


def download_hint(path: Path) -> str:
    """The command that fetches the file a user is missing (see weights/download.sh)."""
    name = str(path)
    if "wav2vec" in name:
        what = "wav2vec"
    elif "Kokoro" in name:
        what = "kokoro"
    elif MULTITALK_FILE in name or "MultiTalk" in name:
        what = "multitalk"
    else:
        what = "wan"
    return f"run weights/download.sh {what}"


def require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} missing — {download_hint(path)}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (an interrupted download?) — {download_hint(path)}")
    return path


def _place(t: torch.Tensor, device, dtype) -> torch.Tensor:
    # Cast floating tensors only: integer buffers (ids, indices) keep their type.
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def load_pth(path: Path, *, device="cpu", dtype: torch.dtype | None = None,
             key_filter: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """A plain `torch.save(state_dict)` archive, memory-mapped, cast per tensor."""
    path = require_file(Path(path))
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated zip, pickle with code, not a checkpoint at all
        raise WeightsError(f"{path} cannot be read as a weights-only checkpoint ({exc}) — "
                           f"{download_hint(path)}") from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path} is not a state_dict of tensors — {download_hint(path)}")
    out = {}
    for key in list(raw):
        if key_filter is None or key_filter(key):
            out[key] = _place(raw[key], device, dtype)
    return out


def load_safetensors(path: Path, *, device="cpu", dtype: torch.dtype | None = None,
                     keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    path = require_file(Path(path))
    out = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            wanted = list(f.keys()) if keys is None else list(keys)
            for key in wanted:
                out[key] = _place(f.get_tensor(key), device, dtype)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}) — "
                           f"{download_hint(path)}") from exc
    return out


def safetensors_keys(path: Path) -> list[str]:
    path = require_file(Path(path))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}) — "
                           f"{download_hint(path)}") from exc


def read_index(folder: Path, index_name: str = DIT_INDEX) -> dict[str, str]:
    """weight_map {key: file} of a sharded checkpoint; every file it names must exist."""
    folder = Path(folder)
    index_path = require_file(folder / index_name)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except Exception as exc:
        raise WeightsError(f"{index_path} is not a safetensors index ({exc}) — "
                           f"{download_hint(index_path)}") from exc
    for file in sorted(set(weight_map.values())):
        require_file(folder / file)
    return weight_map


def load_sharded(folder: Path, *, index_name: str = DIT_INDEX, device="cpu",
                 dtype: torch.dtype | None = None,
                 key_filter: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """All tensors a safetensors index names, file by file."""
    folder = Path(folder)
    weight_map = read_index(folder, index_name)
    by_file: dict[str, list[str]] = {}
    for key, file in weight_map.items():
        if key_filter is None or key_filter(key):
            by_file.setdefault(file, []).append(key)
    out = {}
    for file, keys in sorted(by_file.items()):
        out.update(load_safetensors(folder / file, device=device, dtype=dtype, keys=keys))
    return out
