"""Build the MultiTalk DiT from a Wan2.1-I2V folder with the MultiTalk files beside it.

Accepted layouts (no renaming needed):
  * the plain Wan index (`diffusion_pytorch_model.safetensors.index.json`, base keys only) plus
    `multitalk.safetensors` in the same folder — the adapter keys are read from that file;
  * the MultiTalk index that replaces it and maps the adapter keys to `multitalk.safetensors`;
  * a single `diffusion_pytorch_model.safetensors` (no index) plus `multitalk.safetensors`.
The model is built on the meta device and the tensors are assigned as loaded, straight in the
target dtype and device: a 14B checkpoint never exists as a second, fp32 copy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch

from daemon.models.dit import DiTConfig, MultiTalkDiT
from daemon.models.loader import (DIT_INDEX, MULTITALK_FILE, WeightsError, download_hint,
                                  load_safetensors, load_sharded, read_index, require_file,
                                  safetensors_keys)
from daemon.models.lora import LoraSpec, merge_loras

CONFIG_FILE = "config.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"

# Sizes config.json must state; the official class defaults for them (a 1.3B T2V) would only
# produce a confusing shape mismatch later.
_REQUIRED_KEYS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim")
# Read when present, else the official class default.
_OPTIONAL_KEYS = ("text_len", "freq_dim", "eps", "audio_window", "intermediate_dim", "output_dim",
                  "context_tokens", "vae_scale", "norm_input_visual", "norm_output_audio")
# patch_size, window_size, qk_norm, cross_attn_norm and text_dim are deliberately not read: the
# official WanModel lists them in ignore_for_config, so released checkpoints always use the
# class defaults whatever config.json says.

# Keys that the MultiTalk adapter adds to plain Wan2.1-I2V (kept in multitalk.safetensors).
_ADAPTER_KEY = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")


def is_adapter_key(key: str) -> bool:
    return bool(_ADAPTER_KEY.match(key))


def read_dit_config(folder: Path) -> DiTConfig:
    path = require_file(Path(folder) / CONFIG_FILE)
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}) — {download_hint(path)}") from exc
    if raw.get("model_type", "i2v") != "i2v":
        raise WeightsError(f"{path} describes a '{raw['model_type']}' model; MultiTalk needs the "
                           f"Wan2.1-I2V-14B checkpoint — {download_hint(path)}")
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise WeightsError(f"{path} lacks {', '.join(missing)} — {download_hint(path)}")
    values = {key: raw[key] for key in _REQUIRED_KEYS + _OPTIONAL_KEYS if key in raw}
    try:
        return DiTConfig(**values)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: {exc} — {download_hint(path)}") from exc


def _few(keys) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - 5} more)" if len(keys) > 5 else ""
    return ", ".join(keys[:5]) + more


def load_dit_state_dict(folder: Path, expected: dict[str, torch.Size], *, device, dtype
                        ) -> dict[str, torch.Tensor]:
    """Every tensor the model expects, from the folder's shards and multitalk.safetensors."""
    folder = Path(folder)
    if (folder / DIT_INDEX).exists() or not (folder / SINGLE_FILE).exists():
        base_keys = set(read_index(folder))            # names the index file when it is missing
        load_base = lambda keep: load_sharded(folder, device=device, dtype=dtype, key_filter=keep)
    else:
        base_keys = set(safetensors_keys(folder / SINGLE_FILE))
        load_base = lambda keep: load_safetensors(folder / SINGLE_FILE, device=device, dtype=dtype,
                                                  keys=sorted(filter(keep, base_keys)))

    # Adapter keys the index does not map come from multitalk.safetensors beside it.
    adapter_file = folder / MULTITALK_FILE
    adapter_wanted = sorted(k for k in expected if is_adapter_key(k) and k not in base_keys)
    adapter_keys = set(safetensors_keys(adapter_file)) if adapter_wanted else set()

    unexpected = base_keys - set(expected)
    if unexpected:
        raise WeightsError(f"{folder} holds tensors this model does not have: {_few(unexpected)} — "
                           f"is config.json from the same checkpoint? {download_hint(folder)}")
    missing = set(expected) - base_keys - adapter_keys
    if missing:
        where = adapter_file if all(is_adapter_key(k) for k in missing) else folder
        raise WeightsError(f"{where} lacks tensors: {_few(missing)} — {download_hint(where)}")

    state = load_base(lambda key: key in expected)
    if adapter_wanted:
        state.update(load_safetensors(adapter_file, device=device, dtype=dtype, keys=adapter_wanted))
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise WeightsError(f"{folder}: tensor {key} has shape {tuple(state[key].shape)}, "
                               f"config.json implies {tuple(shape)} — {download_hint(folder)}")
    return state


def load_dit(folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
             loras: Sequence[LoraSpec] = (), sequence=None) -> MultiTalkDiT:
    """The MultiTalk DiT of `folder` on `device` in `dtype`, LoRAs merged, in eval mode.

    `sequence`: the token layout over ranks (daemon.parallel.sequence; None = one device).
    """
    cfg = read_dit_config(folder)
    with torch.device("meta"):
        model = MultiTalkDiT(cfg, sequence=sequence)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    state = load_dit_state_dict(folder, expected, device=device, dtype=dtype)
    if loras:
        merge_loras(state, loras)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
