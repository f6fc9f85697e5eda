"""LoRA merge at load: every key convention gives the exact expected merged weight.

LoRA factors are small integers and scales powers of two, so every ΔW is exact in float32 and
the merged weight is W + ΣΔW rounded once — the expectation can be exact.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.dit_loader import load_dit
from daemon.models.loader import WeightsError
from daemon.models.lora import LoraSpec, merge_loras

CKPT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "multitalk-tiny" / "ckpt"


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    out = {}
    for file in CKPT.glob("*.safetensors"):
        out.update(load_file(str(file)))
    return out


def ints(*shape, seed=0) -> torch.Tensor:
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float()


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_kohya_dotted_keys_with_alpha_scale_by_alpha_over_rank(tmp_path, base):
    down, up = ints(4, 128, seed=1), ints(128, 4, seed=2)
    lora = write(tmp_path / "a.safetensors", {
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)})
    state = dict(base)
    changed = merge_loras(state, [LoraSpec(lora, scale=0.5)])
    assert changed == {str(lora): 1}
    want = base["blocks.0.self_attn.q.weight"] + (up @ down) * (0.5 * 2.0 / 4)
    assert torch.equal(state["blocks.0.self_attn.q.weight"], want)
    assert torch.equal(state["blocks.0.self_attn.k.weight"], base["blocks.0.self_attn.k.weight"])


def test_underscored_kohya_keys_without_alpha_use_the_plain_product(tmp_path, base):
    down, up = ints(2, 128, seed=3), ints(128, 2, seed=4)
    lora = write(tmp_path / "b.safetensors", {
        "lora_unet_blocks_1_cross_attn_k_img.lora_down.weight": down,
        "lora_unet_blocks_1_cross_attn_k_img.lora_up.weight": up})
    state = dict(base)
    merge_loras(state, [LoraSpec(lora)])
    assert torch.equal(state["blocks.1.cross_attn.k_img.weight"],
                       base["blocks.1.cross_attn.k_img.weight"] + up @ down)


def test_peft_lora_a_b_keys_and_conv_patch_embedding(tmp_path, base):
    a, b = ints(2, 128, seed=5), ints(256, 2, seed=6)
    conv_down, conv_up = ints(3, 36, 1, 2, 2, seed=7), ints(128, 3, 1, 1, 1, seed=8)
    lora = write(tmp_path / "c.safetensors", {
        "transformer.blocks.0.ffn.0.lora_A.weight": a, "transformer.blocks.0.ffn.0.lora_B.weight": b,
        "diffusion_model.patch_embedding.lora_A.weight": conv_down,
        "diffusion_model.patch_embedding.lora_B.weight": conv_up})
    state = dict(base)
    merge_loras(state, [LoraSpec(lora, scale=2.0)])
    assert torch.equal(state["blocks.0.ffn.0.weight"], base["blocks.0.ffn.0.weight"] + (b @ a) * 2)
    conv_delta = (conv_up.flatten(1) @ conv_down.flatten(1)).view(128, 36, 1, 2, 2)
    assert torch.equal(state["patch_embedding.weight"], base["patch_embedding.weight"] + conv_delta * 2)


def test_diff_and_diff_b_patch_weights_biases_and_bare_parameters(tmp_path, base):
    norm_w, norm_b, head_b, mod = ints(128, seed=9), ints(128, seed=10), ints(64, seed=11), ints(1, 6, 128, seed=12)
    lora = write(tmp_path / "d.safetensors", {
        "diffusion_model.blocks.0.norm3.diff": norm_w, "diffusion_model.blocks.0.norm3.diff_b": norm_b,
        "diffusion_model.head.head.diff_b": head_b, "diffusion_model.blocks.1.modulation.diff": mod})
    state = dict(base)
    merge_loras(state, [LoraSpec(lora, scale=0.25)])
    assert torch.equal(state["blocks.0.norm3.weight"], base["blocks.0.norm3.weight"] + norm_w * 0.25)
    assert torch.equal(state["blocks.0.norm3.bias"], base["blocks.0.norm3.bias"] + norm_b * 0.25)
    assert torch.equal(state["head.head.bias"], base["head.head.bias"] + head_b * 0.25)
    assert torch.equal(state["blocks.1.modulation"], base["blocks.1.modulation"] + mod * 0.25)


def test_several_loras_on_one_weight_add_their_scaled_deltas(tmp_path, base):
    key = "diffusion_model.blocks.1.ffn.2"
    d1, u1, d2, u2 = ints(2, 256, seed=13), ints(128, 2, seed=14), ints(1, 256, seed=15), ints(128, 1, seed=16)
    first = write(tmp_path / "e1.safetensors", {f"{key}.lora_down.weight": d1, f"{key}.lora_up.weight": u1})
    second = write(tmp_path / "e2.safetensors", {f"{key}.lora_A.weight": d2, f"{key}.lora_B.weight": u2})
    state = dict(base)
    merge_loras(state, [LoraSpec(first, 1.0), LoraSpec(second, -0.5)])
    want = base["blocks.1.ffn.2.weight"] + ((u1 @ d1) + (u2 @ d2) * -0.5)
    assert torch.equal(state["blocks.1.ffn.2.weight"], want)


def test_load_dit_merges_loras_in_the_target_dtype(tmp_path, base):
    down, up = ints(2, 128, seed=17), ints(128, 2, seed=18)
    lora = write(tmp_path / "f.safetensors", {
        "diffusion_model.blocks.1.audio_cross_attn.proj.lora_down.weight": down,
        "diffusion_model.blocks.1.audio_cross_attn.proj.lora_up.weight": up})
    model = load_dit(CKPT, dtype=torch.bfloat16, loras=[LoraSpec(lora, 0.5)])
    want = (base["blocks.1.audio_cross_attn.proj.weight"].bfloat16().float() + (up @ down) * 0.5).bfloat16()
    assert torch.equal(model.blocks[1].audio_cross_attn.proj.weight, want)


def test_keys_that_match_no_dit_weight_are_an_error_naming_them(tmp_path, base):
    lora = write(tmp_path / "g.safetensors", {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": ints(2, 8),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": ints(8, 2)})
    with pytest.raises(WeightsError, match=r"g\.safetensors has tensors that match no weight .*lora_te_text_model"):
        merge_loras(dict(base), [LoraSpec(lora)])


def test_a_half_pair_and_a_wrong_shape_are_errors(tmp_path, base):
    half = write(tmp_path / "h.safetensors", {"diffusion_model.blocks.0.self_attn.o.lora_down.weight": ints(2, 128)})
    with pytest.raises(WeightsError, match=r"blocks\.0\.self_attn\.o has only one of lora_down/lora_up"):
        merge_loras(dict(base), [LoraSpec(half)])
    wrong = write(tmp_path / "i.safetensors", {"diffusion_model.blocks.0.self_attn.o.lora_down.weight": ints(2, 64),
                                               "diffusion_model.blocks.0.self_attn.o.lora_up.weight": ints(128, 2)})
    with pytest.raises(WeightsError, match=r"a LoRA for another model"):
        merge_loras(dict(base), [LoraSpec(wrong)])


def test_missing_lora_file_is_a_weights_error(tmp_path, base):
    with pytest.raises(WeightsError, match=r"nope\.safetensors missing"):
        merge_loras(dict(base), [LoraSpec(tmp_path / "nope.safetensors")])
