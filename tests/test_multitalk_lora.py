"""`--lora FILE[:SCALE]`: parsed into Settings.loras, merged into the DiT when the MultiTalk
backend loads, listed by `info`, and part of what the clip cache keys on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.backends import select_backends
from daemon.config import ConfigError, LoraFile, parse_settings
from daemon.control import Control, Runtime
from daemon.models.lora import LoraSpec
from daemon.pipeline.models import WAN_FOLDER, WeightPaths, bundle_identity
from tests.test_multitalk_render import FIXTURES, build_weights

Q_WEIGHT = "blocks.0.self_attn.q.weight"


def ints(*shape, seed=0) -> torch.Tensor:
    """Small integers: ΔW and its half are exact in float32, so the merge can be checked exactly."""
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


def write_lora(path: Path, dim: int, rank: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A kohya-style LoRA on the first block's query projection."""
    down, up = ints(rank, dim, seed=1), ints(dim, rank, seed=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up}, str(path))
    return down, up


# ------------------------------------------------------------------------------ the flag

def test_lora_flags_resolve_relative_files_under_weights_and_read_the_scale(tmp_path):
    weights = tmp_path / "weights"
    (weights / "loras").mkdir(parents=True)
    (weights / "loras" / "fusionx.safetensors").write_bytes(b"x")
    elsewhere = tmp_path / "my:lora.safetensors"              # a colon in the name, no scale
    elsewhere.write_bytes(b"x")
    s = parse_settings(["--weights", str(weights), "--lora", "loras/fusionx.safetensors:0.75",
                        "--lora", str(elsewhere)], env={})
    assert s.loras == (LoraFile(weights.resolve() / "loras" / "fusionx.safetensors", 0.75),
                       LoraFile(elsewhere, 1.0))
    assert parse_settings(["--weights", str(weights)], env={}).loras == ()


def test_a_missing_lora_file_is_named_with_the_download_command(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_settings(["--weights", str(tmp_path), "--lora", "loras/absent.safetensors:1.2"], env={})
    assert str(tmp_path / "loras" / "absent.safetensors") in str(e.value)
    assert "weights/download.sh lora" in str(e.value)


@pytest.mark.parametrize("flags, env, needle", [
    (["--lora", "x.safetensors:nan"], {}, "finite"),
    (["--lora", ":0.5"], {}, "give a file"),
    (["--lora", "x.safetensors", "--dit_fsdp", "--ulysses_size", "2"],
     {"RANK": "0", "WORLD_SIZE": "2"}, "--dit_fsdp"),
])
def test_impossible_lora_flags_are_refused(tmp_path, flags, env, needle):
    (tmp_path / "x.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match=needle):
        parse_settings(["--weights", str(tmp_path), *flags], env=env)


# ------------------------------------------------------------------------------ the backend

@pytest.mark.skipif(not (FIXTURES / "ckpt").is_dir(), reason=f"{FIXTURES} not present")
def test_the_backend_merges_the_lora_and_lists_it_in_info(tmp_path):
    weights = build_weights(tmp_path / "weights")
    base = {}
    for file in (weights / WAN_FOLDER).glob("diffusion_pytorch_model*.safetensors"):
        base.update(load_file(str(file)))
    dim = base[Q_WEIGHT].shape[0]
    down, up = write_lora(weights / "loras" / "tiny.safetensors", dim)

    settings = parse_settings(["--weights", str(weights), "--state", str(tmp_path / "state"),
                               "--lora", "loras/tiny.safetensors:0.5"], env={})
    backends = select_backends(settings, Runtime(0, 1, torch.device("cpu"), Control(0, 1, None)),
                               tts=None)
    backend = backends.for_mode("full")
    dit = backend.pipeline.models.dit.state_dict()
    assert torch.equal(dit[Q_WEIGHT], base[Q_WEIGHT] + 0.5 * (up @ down))
    assert torch.equal(dit["blocks.0.self_attn.k.weight"], base["blocks.0.self_attn.k.weight"])

    state = backend.state()
    assert state.state == "ready"
    assert "lora tiny.safetensors ×0.5" in state.models
    assert state.detail.endswith("LoRA tiny.safetensors ×0.5")


@pytest.mark.skipif(not (FIXTURES / "ckpt").is_dir(), reason=f"{FIXTURES} not present")
def test_clips_rendered_with_a_lora_or_another_scale_are_not_reused_for_each_other(tmp_path):
    weights = build_weights(tmp_path / "weights")
    lora = weights / "loras" / "tiny.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"a LoRA")            # the identity reads names, sizes and times only
    paths = WeightPaths.under(weights)
    plain = bundle_identity(paths, [])
    with_lora = bundle_identity(paths, [LoraSpec(lora, 1.0)])
    assert len({plain, with_lora, bundle_identity(paths, [LoraSpec(lora, 0.5)])}) == 3
    assert with_lora == bundle_identity(paths, [LoraSpec(lora, 1.0)])
