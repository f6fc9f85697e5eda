"""The Wan VAE split into row bands over 2 and 3 CPU ranks computes the one-rank VAE.

Each launch (torchrun, gloo, tests/parallel_shim.run_ranks) decodes and encodes on every rank
both ways — banded over all ranks (daemon.parallel.vae_bands.BandedVAE) and whole on the rank
alone — and writes what it measured to JSON; the tests read those numbers. Latent heights are
chosen not to divide by the rank count (uneven bands, 1-row bands with 3 ranks) and every
latent has several frames, so the causal caches carry halos from chunk to chunk.

Exactness is asserted with the VAE computing in float64: a band's convs and attention run on
smaller tensors than the whole frame's, and the CPU kernels pick their algorithm (and so their
summation order) by shape — oneDNN above 20,480 input elements, im2col + GEMM below, GEMM
micro-kernels by matrix size — so in float32 the one-rank decode itself is reproducible only
to a few ulps per layer across shapes (measured: 0 to 6e-6 on outputs up to 2.6 in magnitude
through the tiny random VAE). float64 leaves only the final cast to float32, which matches to
the bit in practice; the float32 runs are held to 1e-5 and the official video to 1e-4.

Run as a script (`torchrun --nproc_per_node N tests/test_parallel_vae.py OUT_DIR`) this file is
the rank program.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:           # the rank program runs this file as a script
    sys.path.insert(0, str(REPO))

from tests.parallel_shim import run_ranks                                     # noqa: E402

FIXTURE = REPO.parent / "shared" / "fixtures" / "multitalk-tiny"
LAUNCH_TIMEOUT_S = 120
EXACT = 1e-6                 # computed in float64, returned in float32: at most 1 ulp apart
FLOAT32 = 1e-5               # float32: the kernels' shape-dependent summation order

pytestmark = pytest.mark.skipif(not (FIXTURE / "Wan2.1_VAE.pth").is_file(),
                                reason=f"fixture {FIXTURE} missing")


# ------------------------------------------------------------------------------ the launches

@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}-ranks")
def measured(request, tmp_path_factory) -> list[dict]:
    ranks = request.param
    out = tmp_path_factory.mktemp(f"vae-{ranks}-ranks")
    run_ranks(Path(__file__), [out], ranks=ranks, log=out / "launch.log",
              timeout_s=LAUNCH_TIMEOUT_S)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(ranks)]


def worst(measured: list[dict], key: str) -> float:
    return max(rank[key] for rank in measured)


def same_on_every_rank(measured: list[dict], key: str) -> bool:
    return len({json.dumps(rank[key]) for rank in measured}) == 1


# ------------------------------------------------------------------------------ the tests

def test_bands_are_balanced_latent_rows_larger_first(measured):
    # 7 latent rows: 4 + 3 on two ranks, 3 + 2 + 2 on three
    assert measured[0]["bands.7"] == {2: [4, 3], 3: [3, 2, 2]}[len(measured)]


def test_gather_of_the_bands_returns_the_whole_frame_bit_for_bit(measured):
    assert all(rank["split_gather.equal"] for rank in measured)


def test_halo_is_the_neighbours_rows_and_zeros_at_the_image_border(measured):
    assert all(rank["halo.equal"] for rank in measured)


def test_banded_decode_equals_the_one_rank_decode(measured):
    assert worst(measured, "fixture.decode.max_error") <= EXACT
    assert measured[0]["fixture.decode.shape"] == [3, 9, 56, 32]        # 3 latent frames of 7×4
    assert same_on_every_rank(measured, "fixture.decode.sha256")   # every rank: the whole video


def test_banded_encode_equals_the_one_rank_encode(measured):
    assert worst(measured, "fixture.encode.max_error") <= EXACT
    assert measured[0]["fixture.encode.shape"] == [16, 3, 7, 4]
    assert same_on_every_rank(measured, "fixture.encode.sha256")


def test_attention_inside_the_levels_and_other_time_strides_split_exactly(measured):
    # a random VAE with attention at half resolution (the whole frame's keys at 2× latent rows)
    assert worst(measured, "attention.decode.max_error") <= EXACT
    assert worst(measured, "attention.encode.max_error") <= EXACT


def test_float32_bands_equal_one_rank_to_kernel_rounding(measured):
    assert worst(measured, "float32.decode.max_error") <= FLOAT32


def test_banded_decode_of_the_official_case_matches_the_official_video(measured):
    # float32 as the fixture; 4 latent rows: one-row bands on three ranks
    assert worst(measured, "official.decode.vs_one_rank") <= FLOAT32
    assert worst(measured, "official.decode.vs_fixture") <= 1e-4


def test_frames_with_fewer_latent_rows_than_ranks_are_decoded_whole_on_every_rank(measured):
    assert all(rank["few_rows.banded"] is False for rank in measured)
    assert all(rank["few_rows.equal"] for rank in measured)


def test_bfloat16_bands_exchange_their_rows_and_stay_close(measured):
    # bf16 rounding differs with the convs' shapes, so close rather than equal
    assert worst(measured, "bf16.decode.max_error") <= 0.05


# ------------------------------------------------------------------------------ rank program

def _rank_program(out_dir: Path) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from daemon.models.loader import load_safetensors
    from daemon.models.vae import VAEConfig, VideoVAE, WanVAE
    from daemon.parallel.vae_bands import BandedVAE, RowBands

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, ranks = dist.get_rank(), dist.get_world_size()
    bands = RowBands.over()
    result: dict = {}
    max_err = lambda a, b: float((a.float() - b.float()).abs().max())      # noqa: E731
    sha256 = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()  # noqa: E731

    def compare(name: str, whole: torch.Tensor, banded: torch.Tensor) -> None:
        result[f"{name}.max_error"] = max_err(banded, whole)
        result[f"{name}.shape"] = list(banded.shape)
        result[f"{name}.sha256"] = sha256(banded)

    result["bands.7"] = list(bands.band(7).counts)

    # -- the two exchanges on a known tensor [1, 2, 3 frames, 7·4 rows, 5]
    torch.manual_seed(0)
    frame = torch.randn(1, 2, 3, 28, 5)
    band = bands.band(7)
    mine = band.split(frame, scale=4)
    result["split_gather.equal"] = torch.equal(band.gather(mine), frame)
    padded = torch.nn.functional.pad(frame, (0, 0, 1, 1))          # the whole frame's padding
    expected = padded.narrow(-2, band.start * 4, band.rows * 4 + 2)
    result["halo.equal"] = torch.equal(band.halo(mine, above=1, below=1), expected)

    # -- the fixture VAE in float64: uneven bands, 3 latent frames
    vae = WanVAE.load(FIXTURE / "Wan2.1_VAE.pth", dtype=torch.float64)
    banded = BandedVAE(vae, bands)
    latent = torch.randn(16, 3, 7, 4)
    compare("fixture.decode", vae.decode(latent), banded.decode(latent))
    video = torch.rand(3, 9, 56, 32) * 2 - 1
    compare("fixture.encode", vae.encode(video), banded.encode(video))

    few = torch.randn(16, 2, ranks - 1, 6)
    result["few_rows.banded"] = bands.band(ranks - 1) is not None
    result["few_rows.equal"] = torch.equal(banded.decode(few), vae.decode(few))

    # -- a random VAE with attention inside a level and time halved on other levels
    cfg = VAEConfig(dim=4, z_dim=16, dim_mult=(1, 2, 2, 4), num_res_blocks=1, attn_scales=(0.5,),
                    temporal_downsample=(True, True, False))
    torch.manual_seed(1)
    model = VideoVAE(cfg).to(torch.float64)
    model.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()})
    attention_vae = WanVAE(model.eval().requires_grad_(False), "cpu", torch.float64)
    attention_banded = BandedVAE(attention_vae, bands)
    latent = torch.randn(16, 3, 5, 3)
    compare("attention.decode", attention_vae.decode(latent), attention_banded.decode(latent))
    video = torch.rand(3, 5, 40, 24) * 2 - 1
    compare("attention.encode", attention_vae.encode(video), attention_banded.encode(video))

    # -- float32, as the fixture and the GPUs run it
    vae32 = WanVAE.load(FIXTURE / "Wan2.1_VAE.pth")
    banded32 = BandedVAE(vae32, bands)
    latent = torch.randn(16, 3, 7, 4)
    compare("float32.decode", vae32.decode(latent), banded32.decode(latent))
    case = load_safetensors(FIXTURE / "cases" / "vae_decode.safetensors")
    official = banded32.decode(case["latent"])
    result["official.decode.vs_one_rank"] = max_err(official, vae32.decode(case["latent"]))
    result["official.decode.vs_fixture"] = max_err(official, case["video"])

    # -- bfloat16: the halos and gathers travel in the activations' dtype
    vae_bf16 = WanVAE.load(FIXTURE / "Wan2.1_VAE.pth", dtype=torch.bfloat16)
    latent = torch.randn(16, 2, 7, 4)
    compare("bf16.decode", vae_bf16.decode(latent), BandedVAE(vae_bf16, bands).decode(latent))

    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_program(Path(sys.argv[1]))
