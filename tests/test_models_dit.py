"""The DiT written by us equals the official MultiTalk DiT (fixture cases), loads official
layouts of other sizes (odd head count), and keeps the official routing quirks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.audio_proj import gather_audio_windows
from daemon.models.check import run_checks
from daemon.models.dit import DiTConfig, MultiTalkDiT, reference_attention_map
from daemon.models.dit_loader import is_adapter_key, load_dit
from daemon.pipeline.sampler import silent_audio

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "multitalk-tiny"
MY_KINDS = {"dit", "audio_proj", "masks", "schedule"}


def test_fixture_cases_of_the_dit_family_pass_within_tolerance():
    results, module_errors = run_checks(FIXTURE, kinds=MY_KINDS)
    by_name = {r.name: r for r in results}
    assert {"dit_single", "dit_two", "audio_proj", "masks", "schedule"} <= set(by_name)
    for r in results:
        assert r.status == "PASS", f"{r.name}: {r.message}"
    # Far inside the 1e-4 bar: float32 noise only.
    assert by_name["dit_single"].max_abs < 1e-5
    assert by_name["dit_two"].max_abs < 5e-5
    assert by_name["audio_proj"].max_abs < 1e-5
    assert by_name["masks"].max_abs == 0
    two_keys = {t.key for t in by_name["dit_two"].tensors}
    assert {"out", "out_drop_text", "out_uncond", "out_drop_audio", "cfg3.latent_next",
            "inter.blocks.1.x_ref_attn_map", "audio_index"} <= two_keys


def test_check_cli_prints_one_line_per_case_and_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.models.check", str(FIXTURE), "--kind", "dit",
         "--kind", "schedule", "-v"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    case_lines = [line for line in lines if line.startswith(("dit_", "schedule"))]
    assert [line.split()[0] for line in case_lines] == ["dit_single", "dit_two", "schedule"]
    assert all(" PASS " in line for line in case_lines)
    assert any(line.strip().startswith("inter.blocks.0.x_ref_attn_map") for line in lines)
    assert lines[-1] == "3 passed, 0 failed, 0 skipped"


# --- a held-out-like checkpoint: other sizes, odd head count, saved in the official layout ----

ODD = DiTConfig(dim=60, ffn_dim=48, freq_dim=16, num_heads=3, num_layers=2, text_len=5,
                intermediate_dim=6, output_dim=16, context_tokens=3)


def save_official_layout(model: MultiTalkDiT, folder: Path) -> None:
    """config.json + two base shards + multitalk.safetensors + the MultiTalk index."""
    cfg = model.cfg
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "WanModel", "model_type": "i2v", "patch_size": [1, 2, 2],
              "text_dim": 4096, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True,
              **{k: getattr(cfg, k) for k in ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers",
                                              "in_dim", "out_dim", "text_len", "eps", "audio_window",
                                              "intermediate_dim", "output_dim", "context_tokens",
                                              "vae_scale", "norm_input_visual", "norm_output_audio")}}
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    base = sorted(k for k in state if not is_adapter_key(k))
    files = {"diffusion_pytorch_model-00001-of-00002.safetensors": base[: len(base) // 2],
             "diffusion_pytorch_model-00002-of-00002.safetensors": base[len(base) // 2:],
             "multitalk.safetensors": sorted(k for k in state if is_adapter_key(k))}
    for name, keys in files.items():
        save_file({k: state[k] for k in keys}, str(folder / name), metadata={"format": "pt"})
    weight_map = {k: name for name, keys in files.items() for k in keys}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}))


def random_inputs(cfg: DiTConfig, frames=2, h=4, w=6, speakers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame_num = cfg.vae_scale * (frames - 1) + 1
    features = torch.randn(speakers, frame_num + 3, 12, 768, generator=g)
    audio = torch.stack([gather_audio_windows(f, 0, frame_num, cfg.audio_window) for f in features])
    masks = torch.zeros(3, h, w)
    masks[0, :, : w // 2] = 1
    masks[1, :, w // 2:] = 1
    return dict(x=torch.randn(1, 16, frames, h, w, generator=g), t=torch.tensor([500.0]),
                context=torch.randn(1, 4, cfg.text_dim, generator=g),
                clip_fea=torch.randn(1, 257, cfg.clip_dim, generator=g),
                y=torch.randn(1, 20, frames, h, w, generator=g), audio=audio[None],
                ref_target_masks=masks)


@pytest.fixture(scope="module")
def odd_model_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = MultiTalkDiT(ODD).eval()
    folder = tmp_path_factory.mktemp("odd") / "Wan2.1-I2V-14B-480P"
    save_official_layout(model, folder)
    return model, folder


def test_odd_head_checkpoint_in_official_layout_loads_and_reproduces_the_model(odd_model_dir):
    original, folder = odd_model_dir
    loaded = load_dit(folder, device="cpu", dtype=torch.float32)
    assert loaded.cfg == ODD
    inputs = random_inputs(ODD)
    with torch.no_grad():
        out = loaded(**inputs)
        assert out.shape == (1, 16, 2, 4, 6) and out.dtype == torch.float32
        # Same weights (checked bit for bit); loaded tensors sit at other memory alignments,
        # which changes float32 summation order in the CPU kernels at the 1e-7 level.
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.state_dict().items())
        torch.testing.assert_close(out, original(**inputs), rtol=0, atol=1e-5)
        one_speaker = loaded(**{**inputs, "audio": silent_audio(inputs["audio"])})
    assert one_speaker.shape == out.shape and torch.isfinite(one_speaker).all()
    assert not torch.equal(one_speaker, out)


def test_bfloat16_load_runs_and_stays_close_to_float32(odd_model_dir):
    _, folder = odd_model_dir
    inputs = random_inputs(ODD)
    with torch.no_grad():
        full = load_dit(folder, dtype=torch.float32)(**inputs)
        model = load_dit(folder, dtype=torch.bfloat16)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        half = model(**inputs)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert (half - full).abs().max() < 0.1 * full.abs().max()


def test_a_batch_of_two_equals_two_single_calls(odd_model_dir):
    original, _ = odd_model_dir
    a, b = random_inputs(ODD, seed=1), random_inputs(ODD, seed=2)
    batched = {k: torch.cat([a[k], b[k]]) for k in a if k != "ref_target_masks"}
    with torch.no_grad():
        both = original(**batched, ref_target_masks=a["ref_target_masks"])
        assert torch.allclose(both[0], original(**a)[0], atol=1e-5)
        assert torch.allclose(both[1], original(**b)[0], atol=1e-5)


def test_one_speaker_skips_the_reference_map_and_two_speakers_compute_it(odd_model_dir):
    original, _ = odd_model_dir
    maps = []
    hook = original.blocks[0].self_attn.register_forward_hook(lambda m, a, out: maps.append(out[1]))
    inputs = random_inputs(ODD)
    with torch.no_grad():
        original(**{**inputs, "audio": silent_audio(inputs["audio"])})
        original(**inputs)
    hook.remove()
    assert maps[0] is None
    assert maps[1].shape == (1, 3, 2 * 2 * 3)


# --- the speaker-routing map ---------------------------------------------------------------

def official_reference_map(q, k, masks):
    """The official formula, materialised: two groups of ⌊N/2⌋ heads, group means averaged."""
    ref = k[:, : masks.shape[1]]
    group = q.shape[2] // 2
    total = 0
    for g in range(2):
        qs, ks = q[:, :, g * group:(g + 1) * group], ref[:, :, g * group:(g + 1) * group]
        probs = torch.softmax(torch.einsum("blhd,bshd->bhls", qs, ks) / q.shape[-1] ** 0.5, -1)
        per_class = torch.einsum("bhls,cs->bclh", probs, masks) / masks.sum(-1)[None, :, None, None]
        total = total + per_class.mean(-1)
    return total / 2


@pytest.mark.parametrize("heads", [2, 3, 5])
def test_reference_map_is_the_official_formula_without_materialising_it(heads):
    g = torch.Generator().manual_seed(heads)
    q = torch.randn(1, 24, heads, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 24, heads, 8, generator=g, dtype=torch.float64)
    masks = (torch.rand(3, 6, generator=g) > 0.4).double()
    masks[:, 0] = 1                                     # no empty class
    ours = reference_attention_map(q, k, masks)
    assert ours.shape == (1, 3, 24)
    torch.testing.assert_close(ours, official_reference_map(q, k, masks), rtol=1e-12, atol=1e-12)


def test_with_an_odd_head_count_the_last_head_does_not_route():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 12, 3, 8, generator=g)
    k = torch.randn(1, 12, 3, 8, generator=g)
    masks = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    changed_q, changed_k = q.clone(), k.clone()
    changed_q[:, :, 2] = 100.0
    changed_k[:, :, 2] = -3.0
    base = reference_attention_map(q, k, masks)
    assert torch.equal(base, reference_attention_map(changed_q, changed_k, masks))
    assert torch.equal(base[:, 2], torch.zeros(1, 12))   # an empty class gives zeros, not NaN


@pytest.mark.slow   # inductor compiles C++ on the CPU: ~1 min on 2 cores
def test_compiled_blocks_compute_the_same_forward_as_eager():
    """compile_blocks (on by default on GPUs) only fuses; the tiny fixture forward is unchanged."""
    import torch
    from daemon.models.dit import DiTConfig, MultiTalkDiT

    torch.manual_seed(0)
    cfg = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_len=8)
    model = MultiTalkDiT(cfg).eval()
    args = dict(x=torch.randn(1, 16, 2, 4, 4), t=torch.tensor([500.0]),
                context=torch.randn(1, 5, 4096), clip_fea=torch.randn(1, 257, 1280),
                y=torch.randn(1, 20, 2, 4, 4), audio=torch.randn(1, 1, 5, 5, 12, 768))
    with torch.no_grad():
        eager = model(**args)
        model.compile_blocks()
        compiled = model(**args)
    assert (compiled - eager).abs().max().item() < 1e-5


def test_audio_rope_tables_are_one_op_the_compiler_keeps_whole():
    # duet::cos_sin is opaque to torch.compile (computed once per token, not once per head).
    from daemon.models.dit import cos_sin
    angles = torch.linspace(-7.0, 7.0, 29, dtype=torch.float64)
    cos, sin = cos_sin(angles)
    assert torch.equal(cos, torch.cos(angles)) and torch.equal(sin, torch.sin(angles))
    compiled = torch.compile(lambda a: cos_sin(a)[0] * 2.0, fullgraph=True)
    assert torch.equal(compiled(angles), 2.0 * torch.cos(angles))
