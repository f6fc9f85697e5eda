"""The model bundle: dtypes and placement per device, weight streaming, random bundles."""
from __future__ import annotations

import torch

from daemon.models.dit import DiTConfig, MultiTalkDiT
from daemon.pipeline.models import (HostCopy, ModelBundle, Placement, RandomSizes, WeightStreaming,
                                    init_random)


def test_gpu_placement_uses_the_official_dtypes_but_a_bf16_vae_and_cpu_float32():
    gpu = Placement.for_device("cuda:1", offload_model=True, persistent_dit_params=7)
    assert (gpu.dit_dtype, gpu.text_dtype, gpu.clip_dtype, gpu.vae_dtype, gpu.audio_dtype) == (
        torch.bfloat16, torch.bfloat16, torch.float16, torch.bfloat16, torch.float32)
    assert gpu.moves and gpu.offload_model and gpu.dit_home == torch.device("cpu")
    cpu = Placement.for_device("cpu", offload_model=True)
    assert {cpu.dit_dtype, cpu.text_dtype, cpu.clip_dtype, cpu.vae_dtype} == {torch.float32}
    assert not cpu.moves and not cpu.offload_model and cpu.dit_home == torch.device("cpu")


def test_random_init_sets_norms_to_one_biases_to_zero_and_scales_matrices():
    with torch.device("meta"):
        layer = torch.nn.Sequential(torch.nn.Linear(400, 300), torch.nn.LayerNorm(300))
    init_random(layer, torch.device("cpu"), torch.float32, seed=0)
    assert layer[1].weight.eq(1).all() and layer[1].bias.eq(0).all() and layer[0].bias.eq(0).all()
    assert abs(layer[0].weight.std().item() - 400 ** -0.5) < 0.002
    assert not layer[0].weight.requires_grad


def _tiny_dit() -> MultiTalkDiT:
    with torch.device("meta"):
        model = MultiTalkDiT(DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=4, text_len=8,
                                       intermediate_dim=4))
    return init_random(model, torch.device("cpu"), torch.float32, seed=1)


def _inputs():
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)
    return (r(1, 16, 2, 4, 4), torch.tensor([500.0]), r(1, 5, 4096), r(1, 3, 1280),
            r(1, 20, 2, 4, 4), r(1, 2, 5, 5, 12, 768), torch.ones(3, 4, 4))


def test_streaming_keeps_the_first_blocks_and_lends_every_streamed_weight_per_call():
    model = _tiny_dit()
    expected = model(*_inputs())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    outside = sum(p.numel() for p in model.parameters()) - 4 * block
    streaming = WeightStreaming.for_dit(model, outside + 2 * block, torch.device("cpu"))
    assert streaming.streamed == [model.blocks[2], model.blocks[3]]
    assert streaming.streamed_params == 2 * block

    # Count what the streamed blocks borrow: a block's forward must be the call that uses its
    # weights (a weight read directly by a parent would be used without being lent).
    lent: set[int] = set()
    for b in streaming.streamed:
        b.register_forward_pre_hook(lambda module, args: lent.update(id(p) for p in module.parameters()))
    assert torch.equal(model(*_inputs()), expected)
    assert lent == streaming.param_ids
    assert all(p.data_ptr() == streaming._host[id(p)].data_ptr()      # back on the host copy
               for b in streaming.streamed for p in b.parameters())


def test_a_host_copy_lends_and_recalls_without_copying_back():
    layer = torch.nn.Linear(3, 2)
    home = HostCopy(layer, torch.device("cpu"))
    host = layer.weight.data_ptr()
    home.to_device()
    home.to_host()
    assert layer.weight.data_ptr() == host


def test_a_tiny_random_bundle_runs_every_model():
    bundle = ModelBundle.random(RandomSizes.tiny(), Placement.for_device("cpu"), seed=3)
    assert bundle.identity == "random:tiny:3"
    (context,) = bundle.text.encode(["people talk"])
    assert context.shape == (3, 4096)                       # ▁people ▁talk </s>
    assert bundle.clip.encode_videos(torch.zeros(1, 3, 1, 32, 64)).shape == (1, 5, 1280)
    assert bundle.audio.features(torch.zeros(16000).numpy()).shape == (25, 12, 768)
    assert bundle.vae.encode(torch.zeros(3, 5, 32, 64)).shape == (16, 2, 4, 8)
    assert "MultiTalk DiT" in bundle.describe()


def test_blocks_compile_when_the_whole_dit_computes_on_one_gpu():
    from daemon.parallel.sequence import WholeSequence
    from daemon.pipeline.models import compiles_blocks
    whole = WholeSequence()
    assert compiles_blocks(Placement.for_device("cuda:0"), whole)
    assert compiles_blocks(Placement.for_device("cuda:0", offload_model=True), whole)
    assert not compiles_blocks(Placement.for_device("cuda:0", offload_model=True,
                                                    persistent_dit_params=0), whole)
    assert not compiles_blocks(Placement.for_device("cpu"), whole)
    assert not compiles_blocks(Placement.for_device("cuda:0"), object())   # split over ranks


def test_a_daemon_keeps_a_compiled_graph_for_every_video_size_and_speaker_count(monkeypatch):
    from daemon.pipeline.models import DIT_GRAPH_VARIANTS, allow_compiled_variants
    assert DIT_GRAPH_VARIANTS == 5 * 2 * 2          # aspect presets × 480p/720p × 1–2 people
    config = torch._dynamo.config
    monkeypatch.setattr(config, "recompile_limit", 8)    # dynamo's default
    allow_compiled_variants(40)
    assert config.recompile_limit == 40
    allow_compiled_variants(10)                          # never lowered
    assert config.recompile_limit == 40
