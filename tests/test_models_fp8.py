"""daemon.models.fp8 (`--fp8`): the DiT's token-wide GEMMs in float8 e4m3 with per-row scales.

torch._scaled_mm runs on the CPU too, so the arithmetic is checked here; its speed is measured
on an H100 (bench/dit_bench.py --fp8, docs/performance.md)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from daemon.models.fp8 import TOKEN_LINEARS, FP8Linear, convert_blocks_to_fp8, quantize_rows
from daemon.pipeline.models import (Placement, RandomSizes, WeightPaths, build_dit,
                                    bundle_identity)


def test_rows_whose_largest_value_is_exact_in_e4m3_quantise_and_multiply_exactly():
    # Entries in {-1, 0, 1}: each row scales to ±448 (e4m3's largest finite value) and back.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-1, 2, (33, 64), generator=g).float()
    w = torch.randint(-1, 2, (48, 64), generator=g).float()
    x[:, 0], w[:, 0] = 1.0, -1.0                    # no all-zero row
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(torch.arange(48.0))
    fp8 = FP8Linear(linear)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    assert torch.equal(fp8(x.view(3, 11, 64)), (x @ w.t() + torch.arange(48.0)).view(3, 11, 48))


def test_random_rows_keep_a_few_percent_of_relative_error_and_half_the_weight_bytes():
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(256, 128).to(torch.bfloat16)
    x = torch.randn(64, 256, generator=g).to(torch.bfloat16)
    exact = x.float() @ linear.weight.float().t() + linear.bias.float()
    fp8 = FP8Linear(linear)
    error = ((fp8(x).float() - exact).norm() / exact.norm()).item()
    assert 0.005 < error < 0.06                     # e4m3: 3 mantissa bits (bf16 gives ~0.002)
    assert fp8.weight.nbytes * 2 == linear.weight.nbytes


def test_quantised_rows_use_the_whole_e4m3_range():
    q, scale = quantize_rows(torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.0, 0.0]]))
    assert q.float().abs().amax(-1).tolist() == [448.0, 448.0]
    assert scale.squeeze(1).tolist() == pytest.approx([2.0 / 448, 3.0 / 448])


def test_sizes_fp8_gemms_cannot_take_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        FP8Linear(nn.Linear(24, 32))


def _tiny_inputs(cfg, h=8, w=8):
    g = torch.Generator().manual_seed(2)
    return dict(x=torch.randn(1, 16, 3, h, w, generator=g), t=torch.tensor([500.0]),
                context=torch.randn(1, cfg.text_len, 4096, generator=g),
                clip_fea=torch.randn(1, 257, 1280, generator=g),
                y=torch.randn(1, 20, 3, h, w, generator=g),
                audio=torch.randn(1, 2, 9, 5, 12, 768, generator=g),
                ref_target_masks=torch.stack([torch.ones(h, w), torch.zeros(h, w), torch.zeros(h, w)]))


def test_a_dit_built_with_fp8_converts_every_token_linear_and_stays_close():
    sizes = RandomSizes.tiny()
    placement = Placement.for_device("cpu")
    plain = build_dit(sizes.dit, placement, seed=0)
    fp8 = build_dit(sizes.dit, placement, fp8=True, seed=0)
    converted = [name for name, m in fp8.named_modules() if isinstance(m, FP8Linear)]
    assert len(converted) == len(TOKEN_LINEARS) * sizes.dit.num_layers
    assert "blocks.0.ffn.0" in converted and "blocks.0.cross_attn.k" not in converted
    with torch.no_grad():
        args = _tiny_inputs(sizes.dit)
        reference, approx = plain(**args), fp8(**args)
    assert 0 < ((approx - reference).norm() / reference.norm()).item() < 0.1


def test_fp8_renders_are_cached_apart_from_bf16_ones(tmp_path):
    paths = WeightPaths.under(tmp_path)
    assert bundle_identity(paths, [], fp8=True) != bundle_identity(paths, [])


def test_convert_blocks_to_fp8_counts_what_it_replaced():
    sizes = RandomSizes.tiny()
    dit = build_dit(sizes.dit, Placement.for_device("cpu"), seed=0)
    assert convert_blocks_to_fp8(dit.blocks[:1]) == len(TOKEN_LINEARS)
    assert isinstance(dit.blocks[0].self_attn.q, FP8Linear)
    assert isinstance(dit.blocks[1].self_attn.q, nn.Linear)
