"""Token slices of a sequence-parallel forward, checked on one process.

The 2-rank runs are in test_parallel_ranks.py; here the arithmetic of the split, the frame
windows of a slice and the per-frame audio attention of a slice that starts and ends inside
frames, against the whole sequence.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.models.dit import AudioCrossAttention
from daemon.parallel.attention import AttentionKernel, choose_kernel, local_attention
from daemon.parallel.groups import ParallelGroups
from daemon.parallel.guidance import GuidanceRunner
from daemon.parallel.sequence import (FrameWindow, TokenShard, WholeSequence, balanced_counts,
                                      sequence_layout)

REPO = Path(__file__).resolve().parents[1]


def test_counts_differ_by_at_most_one_token_larger_first():
    assert balanced_counts(45, 2) == (23, 22)
    assert balanced_counts(33600, 8) == (4200,) * 8
    assert balanced_counts(10, 4) == (3, 3, 2, 2)


def test_fewer_tokens_than_ranks_is_refused():
    with pytest.raises(ValueError, match="3 tokens cannot be split over 4 ranks"):
        balanced_counts(3, 4)


def test_a_slice_knows_the_frames_it_touches():
    # 3 frames of 15 tokens split 23 + 22: rank 0 holds frame 0 and 8 tokens of frame 1,
    # rank 1 the other 7 of frame 1 and frame 2.
    assert TokenShard(45, 15, 0, 23).frames() == FrameWindow(first=0, count=2, lead=0, tail=7)
    assert TokenShard(45, 15, 23, 45).frames() == FrameWindow(first=1, count=2, lead=8, tail=0)
    assert TokenShard(45, 15, 0, 45).frames() == FrameWindow(first=0, count=3, lead=0, tail=0)


def test_the_sequence_must_be_whole_frames():
    with pytest.raises(ValueError, match="44 tokens are not whole frames of 15"):
        TokenShard(44, 15, 0, 44)


def test_one_device_shard_is_the_whole_sequence_and_local():
    shard = WholeSequence().shard(total=6, frame_tokens=3)
    x = torch.arange(12.0).view(1, 6, 2)
    assert shard.split(x) is not None and torch.equal(shard.split(x), x)
    assert shard.gather(x) is x
    assert torch.equal(shard.leading_tokens(x, 3), x[:, :3])
    low, high = shard.extrema(torch.tensor([[3.0, -1.0, 7.0]]))
    assert low.tolist() == [[-1.0]] and high.tolist() == [[7.0]]


def test_audio_attention_of_a_mid_frame_slice_equals_that_slice_of_the_whole():
    torch.manual_seed(0)
    layer = AudioCrossAttention(dim=16, audio_dim=8, num_heads=2, class_range=24,
                                class_interval=4, theta=10000.0).eval()
    x = torch.randn(1, 45, 16)                       # 3 frames × 15 tokens
    audio = torch.randn(1, 3, 6, 8)                  # 6 audio tokens per frame (one speaker)
    with torch.no_grad():
        whole = layer(x, audio, None, TokenShard(45, 15, 0, 45))
        for start, stop in ((0, 23), (23, 45), (17, 19)):
            part = layer(x[:, start:stop], audio, None, TokenShard(45, 15, start, stop))
            assert torch.allclose(part, whole[:, start:stop], atol=1e-6), (start, stop)


def test_cpu_and_float32_use_torch_dispatch_exactly_as_one_device():
    assert choose_kernel(torch.device("cpu"), torch.bfloat16) is AttentionKernel.SDPA
    q, k, v = torch.randn(3, 1, 10, 2, 8).unbind(0)
    plain = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.equal(local_attention(q, k, v, None, AttentionKernel.SDPA), plain)


def test_the_cudnn_priority_kernel_falls_back_where_cudnn_is_absent():
    q, k, v = torch.randn(3, 1, 10, 2, 8).unbind(0)
    ours = local_attention(q, k, v, 0.5, AttentionKernel.SDPA_CUDNN)
    assert torch.allclose(ours, local_attention(q, k, v, 0.5, AttentionKernel.SDPA), atol=1e-6)


def test_one_guidance_group_runs_the_passes_in_order():
    ran = []

    def forward(i):
        ran.append(i)
        return torch.full((2,), float(i))

    out = GuidanceRunner(ParallelGroups.single().guidance).run(forward, 3, like=torch.zeros(2))
    assert ran == [0, 1, 2]
    assert [o.tolist() for o in out] == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]


def test_one_device_models_never_import_xfuser():
    code = ("import sys; import daemon.models.dit, daemon.parallel.sequence, daemon.parallel.fsdp, "
            "daemon.parallel.guidance, daemon.parallel.groups; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('xfuser', 'yunchang')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_a_one_rank_group_gets_the_whole_sequence_layout():
    layout = sequence_layout(ParallelGroups.single().sequence, torch.device("cpu"), torch.float32)
    assert isinstance(layout, WholeSequence)
