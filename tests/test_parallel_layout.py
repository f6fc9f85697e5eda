"""Which parallel layouts are accepted, and what the refusals tell the user to do."""
import pytest
import torch

from daemon.parallel.groups import ParallelConfigError, ParallelGroups, ParallelLayout, init_parallel_groups


def test_ulysses_over_all_ranks_is_accepted_for_40_heads():
    ParallelLayout(world_size=8, ulysses=8).check(num_heads=40, device_type="cuda")


def test_guidance_times_sequence_must_equal_the_ranks():
    with pytest.raises(ParallelConfigError, match=r"ulysses 2 × ring 1 = 2, but 4 rank\(s\)"):
        ParallelLayout(world_size=4, ulysses=2).check(num_heads=40, device_type="cuda")
    ParallelLayout(world_size=4, ulysses=2, guidance=2).check(num_heads=40, device_type="cuda")


def test_heads_that_do_not_divide_name_the_ulysses_sizes_that_do():
    with pytest.raises(ParallelConfigError, match=r"40 heads do not divide by --ulysses_size 3.*\[1\]"):
        ParallelLayout(world_size=3, ulysses=3).check(num_heads=40, device_type="cuda")
    with pytest.raises(ParallelConfigError, match=r"in \[1, 2\]"):
        ParallelLayout(world_size=6, ulysses=6).check(num_heads=40, device_type="cuda")


def test_three_ranks_run_40_heads_as_a_ring_or_as_three_guidance_groups():
    ParallelLayout(world_size=3, ring=3).check(num_heads=40, device_type="cuda")
    ParallelLayout(world_size=3, guidance=3).check(num_heads=40, device_type="cuda")


def test_ring_attention_is_refused_on_cpu():
    with pytest.raises(ParallelConfigError, match="--ring_size 2 needs CUDA GPUs.*--ulysses_size 2"):
        ParallelLayout(world_size=2, ring=2).check(num_heads=40, device_type="cpu")


def test_more_guidance_groups_than_passes_are_refused():
    with pytest.raises(ParallelConfigError, match="at most 3 guidance groups"):
        ParallelLayout(world_size=4, guidance=4).check(num_heads=40, device_type="cuda")


def test_degrees_below_one_are_refused():
    with pytest.raises(ParallelConfigError, match="--ring_size is 0"):
        ParallelLayout(world_size=2, ulysses=2, ring=0).check(num_heads=40, device_type="cuda")


def test_one_rank_builds_local_groups_without_touching_xfuser():
    groups = init_parallel_groups(ParallelLayout(), rank=0, local_rank=0, num_heads=40,
                                  device=torch.device("cpu"))
    assert groups == ParallelGroups.single()
    assert groups.sequence.size == 1 and groups.guidance.size == 1
