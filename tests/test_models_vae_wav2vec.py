"""The Wan VAE and the wav2vec2 audio features equal the official code on the fixture set, and
load every checkpoint layout found in the wild."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import torch
from safetensors.torch import load_file, save_file

from daemon.models.checks import CaseContext
from daemon.models.checks.vae_wav2vec import RUNNERS, WAV2VEC_FOLDER
from daemon.models.loader import WeightsError
from daemon.models.vae import CausalCache, VAEConfig, VideoVAE, WanVAE
from daemon.models.wav2vec import (AudioFeatureExtractor, normalize_loudness,
                                   video_frame_count)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "multitalk-tiny"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def cases_json() -> dict:
    if not (FIXTURES / "cases.json").is_file():
        pytest.skip(f"fixture set not found at {FIXTURES}")
    return json.loads((FIXTURES / "cases.json").read_text())


def run_case(cases_json: dict, kind: str) -> tuple[dict, dict]:
    """Run this module's runner for `kind`; return (computed, expected) tensors."""
    case = next(c for c in cases_json["cases"] if c["kind"] == kind)
    expected = load_file(str(FIXTURES / case["file"]))
    ctx = CaseContext(fixture_dir=FIXTURES, case=case, cases_json=cases_json, tensors=expected,
                      device=torch.device("cpu"), dtype=torch.float32)
    return RUNNERS[kind](ctx), expected


def max_errors(computed: dict, expected: dict) -> dict[str, float]:
    return {key: (computed[key].double() - expected[key].double()).abs().max().item()
            for key in computed}


# --- the fixture cases ---------------------------------------------------------------------

def test_vae_encode_matches_official(cases_json):
    computed, expected = run_case(cases_json, "vae_encode")
    assert computed["latent"].shape == expected["latent"].shape == (16, 3, 4, 6)
    errors = max_errors(computed, expected)
    print("vae_encode max abs error", errors)
    assert errors["latent"] < TOLERANCE


def test_vae_decode_matches_official(cases_json):
    computed, expected = run_case(cases_json, "vae_decode")
    assert set(computed) == {"video", "inter.video_unclamped"}
    errors = max_errors(computed, expected)
    print("vae_decode max abs error", errors)
    assert max(errors.values()) < TOLERANCE
    assert computed["video"].abs().max().item() == 1.0      # the case clamps ~7% of values


def test_wav2vec_matches_official(cases_json):
    computed, expected = run_case(cases_json, "wav2vec")
    assert set(computed) == {"waveform_loudnorm", "input_values", "inter.conv_features",
                             "inter.interp_features", "features"}
    assert computed["waveform_loudnorm"].dtype == torch.float64
    assert computed["features"].shape == (37, 3, 32)           # int(24000/16000·25) frames
    errors = max_errors(computed, expected)
    print("wav2vec max abs error", errors)
    assert max(errors.values()) < TOLERANCE


# --- VAE --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vae(cases_json) -> WanVAE:
    return WanVAE.load(FIXTURES / "Wan2.1_VAE.pth")


def test_vae_architecture_is_read_from_the_checkpoint(tiny_vae):
    assert tiny_vae.model.cfg == VAEConfig(dim=4, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                                           attn_scales=(), temporal_downsample=(False, True, True))


def test_vae_decode_split_at_any_latent_frame_continues_from_exported_cache(tiny_vae):
    latent = load_file(str(FIXTURES / "cases" / "vae_decode.safetensors"))["latent"]
    whole = tiny_vae.decode_unclamped(latent)
    for split in (1, 2):
        first_cache = CausalCache()
        head = tiny_vae.decode_chunk(latent[:, :split], first_cache)
        # As if sent to another rank: only named tensors travel.
        named = {k: v.clone() for k, v in first_cache.export(tiny_vae.model.decoder).items()}
        tail = tiny_vae.decode_chunk(latent[:, split:],
                                     CausalCache.restore(tiny_vae.model.decoder, named))
        assert head.shape[1] == 1 + 4 * (split - 1)
        assert torch.equal(torch.cat([head, tail], dim=1), whole)


def test_vae_rejects_frame_counts_other_than_1_plus_4k(tiny_vae):
    with pytest.raises(ValueError, match="1\\+4k frames"):
        tiny_vae.encode(torch.zeros(3, 8, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_vae.encode(torch.zeros(3, 5, 30, 32))


def test_random_vae_with_other_sizes_loads_and_round_trips_shapes(tmp_path):
    cfg = VAEConfig(dim=8, z_dim=16, dim_mult=(1, 2, 2, 4), num_res_blocks=1, attn_scales=(0.5,),
                    temporal_downsample=(True, True, False))
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.1 for k, v in VideoVAE(cfg).state_dict().items()}
    torch.save(state, tmp_path / "Wan2.1_VAE.pth")

    vae = WanVAE.load(tmp_path / "Wan2.1_VAE.pth")

    assert vae.model.cfg == cfg
    assert any(".to_qkv." in k for k in state if k.startswith("encoder.downsamples."))
    latent = vae.encode(torch.rand(3, 5, 16, 24) * 2 - 1)
    assert latent.shape == (16, 2, 2, 3)
    video = vae.decode(latent)
    assert video.shape == (3, 5, 16, 24) and video.dtype == torch.float32
    assert video.abs().max().item() <= 1.0


def test_vae_runs_in_bfloat16_close_to_float32(tiny_vae):
    video = load_file(str(FIXTURES / "cases" / "vae_encode.safetensors"))["video"]
    vae_bf16 = WanVAE.load(FIXTURES / "Wan2.1_VAE.pth", dtype=torch.bfloat16)
    latent = vae_bf16.encode(video)
    assert latent.dtype == torch.float32
    reference = tiny_vae.encode(video)
    assert (latent - reference).abs().max().item() < 0.05 * reference.abs().max().item()
    assert vae_bf16.decode(latent).shape == video.shape


def test_vae_checkpoint_missing_or_foreign_is_a_weights_error(tmp_path, cases_json):
    with pytest.raises(WeightsError, match="Wan2.1_VAE.pth missing — run weights/download.sh wan"):
        WanVAE.load(tmp_path / "Wan2.1_VAE.pth")
    state = torch.load(FIXTURES / "Wan2.1_VAE.pth", weights_only=True)
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(WeightsError, match="decoder.extra.weight"):
        WanVAE.load(tmp_path / "Wan2.1_VAE.pth")


# --- wav2vec2 ---------------------------------------------------------------------------------

def wav2vec_folder_variant(tmp_path: Path, *, prefix: str, parametrized: bool) -> Path:
    """The fixture checkpoint re-saved with another key layout."""
    source = FIXTURES / WAV2VEC_FOLDER
    folder = tmp_path / f"w2v-{prefix or 'bare'}-{'param' if parametrized else 'legacy'}"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(source / name, folder / name)
    state = load_file(str(source / "model.safetensors"))
    if parametrized:
        state = {k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
                  .replace("conv.weight_v", "conv.parametrizations.weight.original1"): v
                 for k, v in state.items()}
    state = {prefix + k: v for k, v in state.items()}
    if prefix:   # a pre-training checkpoint carries its heads too
        state["quantizer.codevectors"] = torch.zeros(1, 640, 128)
        state["quantizer.weight_proj.weight"] = torch.zeros(640, 16)
        state["project_hid.weight"] = torch.zeros(128, 32)
        state["project_q.weight"] = torch.zeros(128, 128)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def wav2vec_case(cases_json) -> dict:
    return load_file(str(FIXTURES / "cases" / "wav2vec.safetensors"))


@pytest.mark.parametrize("prefix,parametrized", [("", True), ("wav2vec2.", False), ("wav2vec2.", True)])
def test_wav2vec_loads_every_key_layout_to_the_same_features(tmp_path, wav2vec_case, prefix, parametrized):
    folder = wav2vec_folder_variant(tmp_path, prefix=prefix, parametrized=parametrized)
    features = AudioFeatureExtractor(folder).features(wav2vec_case["waveform"].numpy())
    assert (features - wav2vec_case["features"]).abs().max().item() < TOLERANCE


def test_wav2vec_unknown_key_is_a_weights_error_naming_it(tmp_path, cases_json):
    folder = wav2vec_folder_variant(tmp_path, prefix="", parametrized=False)
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match="encoder.extra.weight"):
        AudioFeatureExtractor(folder)


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "preprocessor_config.json"])
def test_wav2vec_missing_file_is_a_weights_error(tmp_path, cases_json, missing):
    folder = wav2vec_folder_variant(tmp_path, prefix="", parametrized=False)
    (folder / missing).unlink()
    with pytest.raises(WeightsError, match=f"{missing} missing — run weights/download.sh wav2vec"):
        AudioFeatureExtractor(folder)


def test_loudness_is_normalised_to_minus_23_lufs():
    t = np.arange(2 * 16000) / 16000
    tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    loud = normalize_loudness(tone)
    assert pyloudnorm.Meter(16000).integrated_loudness(loud) == pytest.approx(-23.0, abs=1e-6)


def test_silence_and_clips_too_short_to_measure_are_left_alone():
    silence = np.zeros(16000, dtype=np.float32)
    assert normalize_loudness(silence) is silence
    short = np.full(6000, 0.1, dtype=np.float32)          # < one 400 ms gating block
    assert normalize_loudness(short) is short


def test_one_feature_row_per_25fps_video_frame(cases_json):
    assert video_frame_count(24000) == 37                  # 1.5 s → 37.5 → 37
    assert video_frame_count(16000 * 81 // 25) == 81
    extractor = AudioFeatureExtractor(FIXTURES / WAV2VEC_FOLDER)
    rng = np.random.default_rng(0)
    features = extractor.features((rng.standard_normal(16000) * 0.1).astype(np.float32))
    assert features.shape == (25, extractor.num_layers, extractor.hidden_size) == (25, 3, 32)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        extractor.features(np.zeros(600, dtype=np.float32))


@pytest.mark.parametrize("stable_layer_norm", [False, True])
def test_features_are_every_layer_output_as_transformers_4_returned_them(tmp_path, cases_json,
                                                                          stable_layer_norm):
    """hidden_states[1:] of transformers 4.x: each layer's output, except that a pre-LN
    (stable layer norm) encoder's last entry is taken after its final LayerNorm."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=64, conv_dim=[16] * 7, num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=4, do_stable_layer_norm=stable_layer_norm,
                            feat_extract_norm="layer" if stable_layer_norm else "group")
    torch.manual_seed(0)
    reference = Wav2Vec2Model(config).eval()
    reference.save_pretrained(tmp_path)
    shutil.copy(FIXTURES / WAV2VEC_FOLDER / "preprocessor_config.json", tmp_path)
    extractor = AudioFeatureExtractor(tmp_path)
    values = torch.randn(1, 16000)

    with torch.no_grad():
        expected = reference(values, output_hidden_states=True)
    features = extractor.encode(extractor.conv_features(values))     # no resampling: 50 Hz rows

    assert features.shape == (49, 3, 32)
    for layer in range(2):
        torch.testing.assert_close(features[:, layer], expected.hidden_states[layer + 1][0])
    torch.testing.assert_close(features[:, 2], expected.last_hidden_state[0])
    if stable_layer_norm:
        final_norm = reference.encoder.layer_norm
        torch.testing.assert_close(features[:, 2], final_norm(expected.hidden_states[3][0]))
