"""Kokoro's CPU inference form (daemon/tts/kokoro.py: weight norm folded, a channels-last
iSTFTNet generator) speaks the waveform kokoro's own, unmodified KModel speaks, to float round-off.

The model is Kokoro-82M from its real config with random weights (tests/test_tts_kokoro.py writes
the folder) with its Snake alphas and AdaIN norm affines drawn at random too: initialized, they
are 1 and the identity, and folding them must be exercised.
Kokoro's generator draws random numbers (harmonic phases, noise), so both models run from the
same seed.
"""
import io
import json

import pytest
import torch
from torch import nn

from daemon.tts.kokoro import (COMPONENTS, MODEL_FILE, REPO_ID, ChannelsLastConv,
                               ChannelsLastGenerator, KokoroBackend, SnakeResBlock)
from tests.test_tts_kokoro import FIXTURE_CONFIG, write_random_kokoro

# max |optimized - kokoro| / max |kokoro| over the waveform. Float round-off (other summation
# orders in the convolutions, AdaIN folded into one affine) measures about 4e-6.
TOLERANCE = 1e-4
PHONEMES = "hˈɛloʊ ðˈɛɹ, hˌaʊ ɑɹ jˈu?"

pytestmark = pytest.mark.skipif(not FIXTURE_CONFIG.is_file(),
                                reason="shared/fixtures/kokoro/config.json not found")


def relative_error(new: torch.Tensor, reference: torch.Tensor) -> float:
    return ((new - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Same arithmetic on any thread count; one thread keeps a busy 2-core machine from
    stalling every OpenMP region of this small model. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kokoro_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "Kokoro-82M"
    write_random_kokoro(folder, random_affines=True)
    return folder


@pytest.fixture(scope="module")
def reference(kokoro_folder):
    """kokoro's KModel as released: weight norm hooks, its own generator."""
    from kokoro import KModel

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    model = KModel(repo_id=REPO_ID, config=json.loads((kokoro_folder / "config.json").read_text()),
                   model=empty)
    checkpoint = torch.load(kokoro_folder / MODEL_FILE, weights_only=True)
    for name in COMPONENTS:
        getattr(model, name).load_state_dict(
            {key.removeprefix("module."): value for key, value in checkpoint[name].items()})
    return model.eval()


@pytest.fixture(scope="module")
def backend(kokoro_folder):
    backend = KokoroBackend(kokoro_folder, device="cpu")
    backend.load()
    return backend


def test_cpu_model_speaks_kokoros_waveform_to_float_round_off(reference, backend):
    style = backend._voice_pack("af_heart")[len(PHONEMES) - 1]
    with torch.inference_mode():
        torch.manual_seed(7)
        expected = reference(PHONEMES, style, 1.0)
        torch.manual_seed(7)
        spoken = backend.load()(PHONEMES, style, 1.0)
    assert spoken.shape == expected.shape == (2 * (len(PHONEMES) + 2) * 600,)
    assert relative_error(spoken, expected) <= TOLERANCE


def test_loading_folds_every_weight_norm_and_swaps_in_the_channels_last_generator(backend):
    from torch.nn.utils.weight_norm import WeightNorm

    model = backend.load()
    hooks = [hook for module in model.modules() for hook in module._forward_pre_hooks.values()
             if isinstance(hook, WeightNorm)]
    assert hooks == []
    assert isinstance(model.decoder.generator, ChannelsLastGenerator)
    assert backend.state().detail == "loaded on cpu (81.8 M parameters)"


@pytest.mark.parametrize("conv", [
    nn.Conv1d(6, 5, kernel_size=7, dilation=3, padding=9),
    nn.Conv1d(6, 5, kernel_size=12, stride=6, padding=3),          # the generator's noise_convs
    nn.ConvTranspose1d(6, 5, kernel_size=12, stride=6, padding=3),  # its upsamplers
    nn.Conv1d(6, 5, kernel_size=1, bias=False),
], ids=["dilated", "strided", "transposed", "pointwise"])
def test_channels_last_conv_computes_the_1d_convolution(conv):
    x = torch.randn(1, 6, 40)
    with torch.inference_mode():
        expected = conv(x)
        out = ChannelsLastConv(conv)(x.unsqueeze(2).contiguous(memory_format=torch.channels_last))
    assert out.shape == (1, 5, 1, expected.shape[-1])
    assert relative_error(out[:, :, 0], expected) <= 1e-5


def test_channels_last_conv_refuses_a_conv_whose_weight_norm_is_not_folded():
    conv = nn.utils.weight_norm(nn.Conv1d(2, 2, 3))
    with pytest.raises(ValueError, match=r"still has weight norm: fold_weight_norm\(\) the model"):
        ChannelsLastConv(conv)


def test_snake_res_block_computes_kokoros_adain_res_block():
    from kokoro.istftnet import AdaINResBlock1

    from daemon.tts.kokoro import fold_weight_norm

    torch.manual_seed(3)
    block = AdaINResBlock1(16, kernel_size=7, dilation=(1, 3, 5), style_dim=8).eval()
    with torch.no_grad():
        for alpha in [*block.alpha1, *block.alpha2]:
            alpha.uniform_(0.5, 1.5)
        for adain in [*block.adain1, *block.adain2]:
            adain.norm.weight.uniform_(0.5, 1.5)
            adain.norm.bias.normal_()
    x, style = torch.randn(1, 16, 90) * 3 + 1, torch.randn(1, 8)
    with torch.inference_mode():
        expected = block(x, style)
        assert fold_weight_norm(block) == 6
        out = SnakeResBlock(block)(x.unsqueeze(2).contiguous(memory_format=torch.channels_last),
                                   style)
    assert relative_error(out[:, :, 0], expected) <= 1e-5


def test_channels_last_generator_speaks_one_line_at_a_time(backend):
    generator = backend.load().decoder.generator
    with pytest.raises(ValueError, match="one line at a time, got a batch of 2"):
        generator(torch.zeros(2, 512, 4), torch.zeros(2, 128), torch.zeros(2, 8))
