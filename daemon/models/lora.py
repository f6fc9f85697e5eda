"""Merge LoRA files into DiT weights at load time (W += scale · ΔW, then no runtime cost).

Accepted key conventions (all seen in released Wan2.1 LoRAs, e.g. FusioniX and lightx2v):
  diffusion_model.blocks.0.self_attn.q.lora_down.weight / .lora_up.weight   (kohya-style, dotted)
  lora_unet_blocks_0_self_attn_q.lora_down.weight                            (kohya, underscored)
  <prefix>blocks.0.self_attn.q.lora_A.weight / .lora_B.weight               (PEFT)
  <name>.alpha                          optional; ΔW = (alpha / rank) · up @ down, else up @ down
  <name>.diff / <name>.diff_b           full deltas of a weight (or a bare parameter such as
                                        blocks.N.modulation) / of a bias
with prefixes diffusion_model., model.diffusion_model., transformer. or none. The official
MultiTalk merge ignores `.alpha`; the released LoRAs store alpha = rank or no alpha, where both
agree. Several LoRAs are summed in float32 per weight and rounded once to the weights' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from daemon.models.loader import WeightsError, load_pth, load_safetensors

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
_UNDERSCORED_PREFIX = "lora_unet_"
_SUFFIXES = {  # key ending → role
    ".lora_down.weight": "down", ".lora_A.weight": "down",
    ".lora_up.weight": "up", ".lora_B.weight": "up",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b",
}


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


@dataclass
class _LowRank:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return load_pth(path)


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _resolve(name: str, targets: dict[str, str], underscored: dict[str, str]) -> str | None:
    """LoRA module name → the DiT module/parameter name it patches, or None."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.startswith(_UNDERSCORED_PREFIX):
        return underscored.get(name[len(_UNDERSCORED_PREFIX):].lstrip("_"))
    return name if name in targets else None


def _deltas_of(spec: LoraSpec, state: dict[str, torch.Tensor]) -> dict[str, list]:
    """{state_dict key: [("lowrank", _LowRank, scale) | ("full", tensor, scale)]} of one file."""
    tensors = read_lora(spec.path)
    # Names a LoRA may patch: modules with a weight, and bare parameters (modulation).
    targets = {key[: -len(".weight")]: key for key in state if key.endswith(".weight")}
    targets.update({key: key for key in state if not key.endswith((".weight", ".bias"))})
    underscored = {name.replace(".", "_"): name for name in targets}

    low_rank: dict[str, _LowRank] = {}
    out: dict[str, list] = {}
    unmatched = []
    for key, tensor in tensors.items():
        split = _split_key(key)
        name = split and _resolve(split[0], targets, underscored)
        if not name:
            unmatched.append(key)
            continue
        role = split[1]
        if role == "diff":
            out.setdefault(targets[name], []).append(("full", tensor, spec.scale))
        elif role == "diff_b":
            if f"{name}.bias" not in state:
                unmatched.append(key)
                continue
            out.setdefault(f"{name}.bias", []).append(("full", tensor, spec.scale))
        elif role == "alpha":
            low_rank.setdefault(name, _LowRank()).alpha = float(tensor.float())
        else:
            setattr(low_rank.setdefault(name, _LowRank()), role, tensor)
    if unmatched:
        raise WeightsError(f"{spec.path} has tensors that match no weight of this DiT: "
                           f"{', '.join(sorted(unmatched)[:5])} — is it a LoRA for Wan2.1-I2V-14B?")
    for name, pair in low_rank.items():
        if pair.down is None or pair.up is None:
            raise WeightsError(f"{spec.path}: {name} has only one of lora_down/lora_up — "
                               f"the file is incomplete; download it again")
        out.setdefault(targets[name], []).append(("lowrank", pair, spec.scale))
    if not out:
        raise WeightsError(f"{spec.path} holds no LoRA tensors — is it a LoRA file?")
    return out


def _delta(kind: str, item, scale: float, weight: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    """ΔW in float32 on the weight's device, shaped like the weight."""
    device = weight.device
    if kind == "full":
        delta = item.to(device=device, dtype=torch.float32)
        if delta.shape != weight.shape:
            raise WeightsError(f"{path}: delta for {key} has shape {tuple(delta.shape)}, "
                               f"the DiT weight {tuple(weight.shape)} — a LoRA for another model?")
        return delta * scale
    down = item.down.to(device=device, dtype=torch.float32).flatten(1)   # [rank, in·k]
    up = item.up.to(device=device, dtype=torch.float32).flatten(1)       # [out, rank]
    rank = down.shape[0]
    if up.shape != (weight.shape[0], rank) or down.shape[1] * weight.shape[0] != weight.numel():
        raise WeightsError(f"{path}: LoRA for {key} is {tuple(up.shape)}·{tuple(down.shape)}, "
                           f"the DiT weight {tuple(weight.shape)} — a LoRA for another model?")
    factor = scale * (item.alpha / rank if item.alpha is not None else 1.0)
    return (up @ down).view(weight.shape) * factor


@torch.no_grad()
def merge_loras(state: dict[str, torch.Tensor], loras: Sequence[LoraSpec]) -> dict[str, int]:
    """Add every LoRA's ΔW to `state` in place. → {lora path: number of weights it changed}."""
    per_key: dict[str, list] = {}
    changed: dict[str, int] = {}
    for spec in loras:
        deltas = _deltas_of(spec, state)
        changed[str(spec.path)] = len(deltas)
        for key, items in deltas.items():
            per_key.setdefault(key, []).extend((kind, item, scale, spec.path) for kind, item, scale in items)
    for key, items in per_key.items():
        weight = state[key]
        delta = sum(_delta(kind, item, scale, weight, key, path) for kind, item, scale, path in items)
        state[key] = (weight.float() + delta).to(weight.dtype)   # one rounding, whatever the order
    return changed
