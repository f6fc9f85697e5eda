"""The umt5 text encoder and the CLIP image tower against the official-code fixtures.

The fixture files were made by the official MultiTalk code with tiny random weights in the
released on-disk layouts; our modules load them unchanged and must reproduce every output.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from daemon.models.checks import CaseContext
from daemon.models.checks.t5clip import RUNNERS
from daemon.models.clip import (CLIP_CHECKPOINT, CLIPVisionEncoder, load_clip_vision,
                                vision_heads_for)
from daemon.models.loader import WeightsError
from daemon.models.t5 import (T5_CHECKPOINT, PromptTokenizer, T5TextEncoder, clean_prompt,
                              load_t5_encoder, relative_position_bucket, trim_to_prompts)
from daemon.pipeline.models import synthetic_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "multitalk-tiny"
CASES = json.loads((FIXTURES / "cases.json").read_text()) if FIXTURES.is_dir() else None
needs_fixtures = pytest.mark.skipif(CASES is None, reason=f"{FIXTURES} not present")


def _case(name: str) -> dict:
    return next(c for c in CASES["cases"] if c["name"] == name)


def _run_case(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    case = _case(name)
    tensors = load_file(FIXTURES / case["file"])
    ctx = CaseContext(fixture_dir=FIXTURES, case=case, cases_json=CASES, tensors=tensors,
                      device=torch.device("cpu"), dtype=torch.float32)
    return case, tensors, RUNNERS[case["kind"]](ctx)


def _max_errors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict:
    return {k: (got[k] - expected[k]).abs().max().item() for k in got}


# --- fixtures: our numbers are the official numbers -----------------------------------------

@needs_fixtures
def test_t5_case_matches_official_encoder_and_trimming():
    case, expected, got = _run_case("t5")
    outputs = {k for k in case["tensors"] if k not in ("ids", "mask")}
    assert set(got) == outputs                       # out, context.0, context.1
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
    errors = _max_errors(expected, got)
    print("t5 max abs errors:", errors)
    assert max(errors.values()) < case["tolerance_max_abs"]


@needs_fixtures
def test_clip_case_matches_official_visual_path():
    case, expected, got = _run_case("clip")
    assert set(got) == {"out", "inter.pixel_values"}
    for key, value in got.items():
        assert value.shape == expected[key].shape, key
    errors = _max_errors(expected, got)
    print("clip max abs errors:", errors)
    assert max(errors.values()) < case["tolerance_max_abs"]


@needs_fixtures
def test_clip_loading_reads_only_the_vision_blocks_that_run():
    path = FIXTURES / CLIP_CHECKPOINT
    file_keys = torch.load(path, weights_only=True, mmap=True).keys()
    assert any(k.startswith("textual.") for k in file_keys) and "log_scale" in file_keys

    model = load_clip_vision(path, device="cpu", dtype=torch.float32, num_heads=2)

    layers = CASES["configs"]["clip"]["vision_layers"]
    unused = ("visual.post_norm.", "visual.head", f"visual.transformer.{layers - 1}.")
    expected = {k[len("visual."):] for k in file_keys
                if k.startswith("visual.") and not k.startswith(unused)}
    assert set(model.state_dict()) == expected
    assert len(model.transformer) == layers - 1


@needs_fixtures
def test_t5_sizes_come_from_the_file():
    cfg = load_t5_encoder(FIXTURES / T5_CHECKPOINT, device="cpu", dtype=torch.float32).config
    written = CASES["configs"]["t5"]
    assert (cfg.vocab_size, cfg.dim, cfg.dim_attn, cfg.dim_ffn, cfg.num_heads, cfg.num_layers,
            cfg.num_buckets) == (written["vocab_size"], written["dim"], written["dim_attn"],
                                 written["dim_ffn"], written["num_heads"],
                                 written["encoder_layers"], written["num_buckets"])


# --- missing or wrong files -----------------------------------------------------------------

@pytest.mark.parametrize("load, name", [
    (lambda p: load_t5_encoder(p, device="cpu", dtype=torch.float32), T5_CHECKPOINT),
    (lambda p: load_clip_vision(p, device="cpu", dtype=torch.float32), CLIP_CHECKPOINT),
])
def test_missing_checkpoint_names_file_and_download_command(tmp_path, load, name):
    path = tmp_path / "Wan2.1-I2V-14B-480P" / name
    with pytest.raises(WeightsError) as err:
        load(path)
    assert str(path) in str(err.value)
    assert "weights/download.sh wan" in str(err.value)


def test_missing_tokenizer_names_file_and_download_command(tmp_path):
    folder = tmp_path / "Wan2.1-I2V-14B-480P" / "google" / "umt5-xxl"
    with pytest.raises(WeightsError) as err:
        PromptTokenizer.from_folder(folder, text_len=8)
    assert str(folder / "tokenizer.json") in str(err.value)
    assert "weights/download.sh wan" in str(err.value)


def test_clip_file_without_a_vision_key_is_rejected(tmp_path):
    state = _random_clip_state(dim=24, patch=4, grid=2, mlp=40, layers=3)
    del state["visual.transformer.0.attn.proj.bias"]
    path = tmp_path / CLIP_CHECKPOINT
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_clip_vision(path, device="cpu", dtype=torch.float32, num_heads=2)
    assert "transformer.0.attn.proj.bias" in str(err.value) and str(path) in str(err.value)


def test_clip_heads_default_to_vit_h_head_width():
    assert vision_heads_for(1280, "clip.pth") == 16
    with pytest.raises(WeightsError, match="pass num_heads"):
        vision_heads_for(64, "clip.pth")


# --- other sizes: nothing about the tiny fixture set is built in ----------------------------

def _random_t5_state(vocab, dim, dim_attn, dim_ffn, heads, layers, buckets) -> dict:
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    state = {"token_embedding.weight": rand(vocab, dim), "norm.weight": 1 + rand(dim)}
    for i in range(layers):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": 1 + rand(dim), p + "norm2.weight": 1 + rand(dim),
            p + "attn.q.weight": rand(dim_attn, dim), p + "attn.k.weight": rand(dim_attn, dim),
            p + "attn.v.weight": rand(dim_attn, dim), p + "attn.o.weight": rand(dim, dim_attn),
            p + "ffn.gate.0.weight": rand(dim_ffn, dim), p + "ffn.fc1.weight": rand(dim_ffn, dim),
            p + "ffn.fc2.weight": rand(dim, dim_ffn),
            p + "pos_embedding.embedding.weight": rand(buckets, heads),
        })
    return state


def test_t5_of_other_sizes_loads_and_encodes(tmp_path):
    path = tmp_path / T5_CHECKPOINT
    torch.save(_random_t5_state(vocab=37, dim=24, dim_attn=30, dim_ffn=45, heads=3, layers=3,
                                buckets=20), path)
    encoder = load_t5_encoder(path, device="cpu", dtype=torch.float32)
    assert (encoder.config.num_heads, encoder.config.head_dim, encoder.config.num_layers,
            encoder.config.num_buckets) == (3, 10, 3, 20)

    ids = torch.tensor([[5, 9, 1, 0, 0, 0, 0], [3, 4, 6, 8, 2, 7, 1]])
    mask = (torch.arange(7) < torch.tensor([[3], [7]])).long()
    out = encoder(ids, mask)
    assert out.shape == (2, 7, 24) and torch.isfinite(out).all()
    # padding is invisible to the real tokens
    alone = encoder(ids[:1, :3], mask[:1, :3])
    torch.testing.assert_close(out[0, :3], alone[0], rtol=0, atol=1e-5)
    assert [c.shape[0] for c in trim_to_prompts(out, mask)] == [3, 7]


def test_t5_loads_in_the_requested_dtype(tmp_path):
    path = tmp_path / T5_CHECKPOINT
    torch.save(_random_t5_state(vocab=37, dim=24, dim_attn=30, dim_ffn=45, heads=3, layers=2,
                                buckets=32), path)
    encoder = load_t5_encoder(path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    out = encoder(torch.tensor([[5, 9, 1, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def _random_clip_state(dim, patch, grid, mlp, layers) -> dict:
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    state = {
        "log_scale": torch.tensor(2.0),
        "textual.token_embedding.weight": rand(11, 8),     # a text tower that must be ignored
        "textual.head.0.weight": rand(8, 8),
        "visual.patch_embedding.weight": rand(dim, 3, patch, patch),
        "visual.cls_embedding": rand(1, 1, dim),
        "visual.pos_embedding": rand(1, 1 + grid * grid, dim),
        "visual.pre_norm.weight": 1 + rand(dim), "visual.pre_norm.bias": rand(dim),
        "visual.post_norm.weight": 1 + rand(dim), "visual.post_norm.bias": rand(dim),
        "visual.head": rand(dim, 7),
    }
    for i in range(layers):
        p = f"visual.transformer.{i}."
        state.update({
            p + "norm1.weight": 1 + rand(dim), p + "norm1.bias": rand(dim),
            p + "attn.to_qkv.weight": rand(3 * dim, dim), p + "attn.to_qkv.bias": rand(3 * dim),
            p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": rand(dim),
            p + "norm2.weight": 1 + rand(dim), p + "norm2.bias": rand(dim),
            p + "mlp.0.weight": rand(mlp, dim), p + "mlp.0.bias": rand(mlp),
            p + "mlp.2.weight": rand(dim, mlp), p + "mlp.2.bias": rand(dim),
        })
    return state


def test_clip_of_other_sizes_loads_and_encodes(tmp_path):
    path = tmp_path / CLIP_CHECKPOINT
    torch.save(_random_clip_state(dim=36, patch=5, grid=3, mlp=50, layers=4), path)
    model = load_clip_vision(path, device="cpu", dtype=torch.float32, num_heads=3)
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.mlp_dim, cfg.num_layers,
            cfg.blocks_run) == (15, 5, 36, 50, 4, 3)

    videos = torch.rand(2, 3, 1, 11, 13) * 2 - 1          # two videos of one frame
    pixels = model.pixel_values(videos)
    assert pixels.shape == (2, 3, 15, 15)
    out = model.encode_videos(videos)
    assert out.shape == (2, 1 + 9, 36) and torch.isfinite(out).all()
    torch.testing.assert_close(out, model(pixels), rtol=0, atol=0)


def test_clip_modules_hold_parameters_in_the_requested_dtype(tmp_path):
    path = tmp_path / CLIP_CHECKPOINT
    torch.save(_random_clip_state(dim=24, patch=4, grid=2, mlp=40, layers=3), path)
    model = load_clip_vision(path, device="cpu", dtype=torch.bfloat16, num_heads=2)
    assert isinstance(model, CLIPVisionEncoder)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model.encode_videos(torch.zeros(1, 3, 1, 8, 8))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 5, 24)


# --- relative positions and prompts ---------------------------------------------------------

def test_relative_position_buckets_follow_umt5():
    # 32 buckets, 16 per direction; exact below 8, log-spaced to 128, keys after the query +16
    offsets = torch.tensor([0, -1, -7, -8, -12, -20, -127, -128, -1000, 1, 7, 12, 20, 1000])
    buckets = relative_position_bucket(offsets, num_buckets=32, max_distance=128)
    assert buckets.tolist() == [0, 1, 7, 8, 9, 10, 15, 15, 15, 17, 23, 25, 26, 31]


def test_prompt_cleaning_matches_reference_whitespace_rule():
    assert clean_prompt("  \u201cHi\u201d&amp;amp;\n\n  there\t") == '"Hi"& there'


def _tiny_umt5_style_tokenizer(folder: Path) -> Path:
    """A tokenizer.json laid out as umt5's (<pad> 0, </s> 1, <unk> 2, `$A </s>`)."""
    folder.mkdir(parents=True)
    synthetic_tokenizer(["▁a", "▁b", "▁c", "▁d", "▁e", "▁f", "▁g", "▁hello", "▁world"]).save(
        str(folder / "tokenizer.json"))
    return folder


def test_prompts_are_padded_truncated_with_eos_and_trimmed(tmp_path):
    folder = _tiny_umt5_style_tokenizer(tmp_path / "google" / "umt5-xxl")
    tokenizer = PromptTokenizer.from_folder(folder, text_len=6)
    tokens = tokenizer(["hello   world", "a b c d e f g"])
    # hello=10, world=11; a..g = 3..9; </s> = 1 kept when truncating; <pad> = 0
    assert tokens.ids.tolist() == [[10, 11, 1, 0, 0, 0], [3, 4, 5, 6, 7, 1]]
    assert tokens.mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]

    state = _random_t5_state(vocab=12, dim=16, dim_attn=16, dim_ffn=20, heads=2, layers=2,
                             buckets=32)
    torch.save(state, tmp_path / T5_CHECKPOINT)
    text_encoder = T5TextEncoder.load(tmp_path, device="cpu", dtype=torch.float32, text_len=6)
    contexts = text_encoder.encode(["hello   world", "a b c d e f g"])
    assert [c.shape for c in contexts] == [(3, 16), (6, 16)]
    full = text_encoder.encoder(tokens.ids, tokens.mask)
    torch.testing.assert_close(contexts[0], full[0, :3], rtol=0, atol=0)
