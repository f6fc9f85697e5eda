"""Loading the DiT from a Wan folder: accepted layouts and errors that say the fix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.dit_loader import is_adapter_key, load_dit, read_dit_config
from daemon.models.loader import WeightsError

FIXTURE_CKPT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "multitalk-tiny" / "ckpt"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
SHARD2 = "diffusion_pytorch_model-00002-of-00002.safetensors"


@pytest.fixture
def ckpt(tmp_path) -> Path:
    folder = tmp_path / "Wan2.1-I2V-14B-480P"
    shutil.copytree(FIXTURE_CKPT, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def official_tensors() -> dict[str, torch.Tensor]:
    out = {}
    for file in FIXTURE_CKPT.glob("*.safetensors"):
        out.update(load_file(str(file)))
    return out


def write_plain_wan_index(folder: Path) -> None:
    """The index Wan2.1 ships: base shards only, no adapter keys."""
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != "multitalk.safetensors"}
    (folder / INDEX).write_text(json.dumps(index))


def test_multitalk_index_layout_loads_every_tensor_unchanged(ckpt):
    model = load_dit(ckpt, dtype=torch.float32)
    want = official_tensors()
    got = model.state_dict()
    assert set(got) == set(want) and len(got) == 113
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_plain_wan_index_takes_the_adapter_from_multitalk_safetensors_beside_it(ckpt):
    write_plain_wan_index(ckpt)
    model = load_dit(ckpt, dtype=torch.float32)
    want = official_tensors()
    assert torch.equal(model.state_dict()["audio_proj.proj1.weight"], want["audio_proj.proj1.weight"])
    assert torch.equal(model.state_dict()["blocks.1.norm_x.bias"], want["blocks.1.norm_x.bias"])


def test_weights_are_cast_to_the_requested_dtype(ckpt):
    model = load_dit(ckpt, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_config_ignores_the_keys_the_official_loader_ignores_and_defaults_audio_keys(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    for key in ("audio_window", "intermediate_dim", "output_dim", "context_tokens", "vae_scale",
                "norm_input_visual", "norm_output_audio"):
        raw.pop(key)
    raw.update(patch_size=[1, 4, 4], text_dim=512, qk_norm=False, cross_attn_norm=False)
    (ckpt / "config.json").write_text(json.dumps(raw))
    cfg = read_dit_config(ckpt)
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.text_len) == (128, 2, 2, 32)
    assert cfg.patch_size == (1, 2, 2) and cfg.text_dim == 4096
    assert (cfg.audio_window, cfg.intermediate_dim, cfg.output_dim, cfg.context_tokens,
            cfg.vae_scale, cfg.norm_input_visual, cfg.norm_output_audio) == (5, 512, 768, 32, 4, True, True)


def test_missing_shard_names_the_file_and_the_download_command(ckpt):
    (ckpt / SHARD2).unlink()
    with pytest.raises(WeightsError, match=rf"{SHARD2} missing — run weights/download.sh wan"):
        load_dit(ckpt, dtype=torch.float32)


def test_missing_adapter_names_multitalk_safetensors_and_its_download(ckpt):
    write_plain_wan_index(ckpt)
    (ckpt / "multitalk.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"multitalk\.safetensors missing — run weights/download.sh multitalk"):
        load_dit(ckpt, dtype=torch.float32)


def test_truncated_shard_is_reported_as_unreadable(ckpt):
    data = (ckpt / SHARD2).read_bytes()
    (ckpt / SHARD2).write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=rf"{SHARD2}.*run weights/download.sh wan"):
        load_dit(ckpt, dtype=torch.float32)


def test_missing_config_names_config_json(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"config\.json missing — run weights/download.sh wan"):
        load_dit(ckpt, dtype=torch.float32)


def test_adapter_file_lacking_keys_lists_them(ckpt):
    write_plain_wan_index(ckpt)
    adapter = load_file(str(ckpt / "multitalk.safetensors"))
    del adapter["blocks.1.norm_x.weight"], adapter["audio_proj.norm.bias"]
    save_file(adapter, str(ckpt / "multitalk.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"multitalk\.safetensors lacks tensors: "
                                           r"audio_proj\.norm\.bias, blocks\.1\.norm_x\.weight"):
        load_dit(ckpt, dtype=torch.float32)


def test_unexpected_keys_are_listed(ckpt):
    index = json.loads((ckpt / INDEX).read_text())
    index["weight_map"]["blocks.2.ffn.0.weight"] = SHARD2
    (ckpt / INDEX).write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"does not have: blocks\.2\.ffn\.0\.weight"):
        load_dit(ckpt, dtype=torch.float32)


def test_config_that_disagrees_with_the_tensors_is_a_shape_error(ckpt):
    raw = json.loads((ckpt / "config.json").read_text())
    raw["ffn_dim"] = 512
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match=r"blocks\.0\.ffn\.0\.weight has shape \(256, 128\), config\.json implies \(512, 128\)"):
        load_dit(ckpt, dtype=torch.float32)


def test_adapter_keys_are_exactly_the_ones_plain_wan_lacks():
    keys = official_tensors().keys()
    adapter = sorted(k for k in keys if is_adapter_key(k))
    assert len(adapter) == 8 * 2 + 10
    assert "blocks.0.audio_cross_attn.kv_linear.weight" in adapter and "audio_proj.proj1_vf.bias" in adapter
    assert not any(is_adapter_key(k) for k in ("blocks.0.cross_attn.k_img.weight", "blocks.0.norm3.weight"))
