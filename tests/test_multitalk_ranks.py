"""The MultiTalk backend on several ranks: the flags pick the layout, FSDP and guidance runner;
two CPU ranks render the same video as one.

The 2-rank renders run under torchrun (gloo, xfuser through tests/parallel_shim.py) on the tiny
weights folder of tests/test_multitalk_render.py: one launch loads the backend with
`--ulysses_size 2 --dit_fsdp --t5_fsdp`, renders, drops the groups, then loads it again with
`--cfg_parallel 2` and renders; both split the VAE's rows over the two ranks
(daemon.parallel.vae_bands). The product itself never splits MultiTalk over CPU ranks (a
multi-rank CPU daemon serves drafts only); the rank program calls the backend's load path
directly, which is the code every GPU rank runs.

Run as a script (`torchrun --nproc_per_node 2 tests/test_multitalk_ranks.py WEIGHTS OUT`) this
file is the rank program.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:           # the rank program runs this file as a script
    sys.path.insert(0, str(REPO))

from daemon.backends import JobInputs, select_backends                       # noqa: E402
from daemon.config import ConfigError, parse_settings                         # noqa: E402
from daemon.config import Settings as DaemonSettings                         # noqa: E402
from daemon.control import Control, Runtime                                  # noqa: E402
from daemon.parallel.groups import ParallelLayout                            # noqa: E402
from daemon.parallel.sequence import WholeSequence                           # noqa: E402
from daemon.parallel.setup import ParallelPlan, build_parallelism            # noqa: E402
from daemon.pipeline.multitalk import MultiTalkBackend, load_backend, model_placement  # noqa: E402
from daemon.pipeline.progress import Reporter                                # noqa: E402
from shared.scene import Line                                                # noqa: E402
from tests.parallel_shim import run_ranks                                    # noqa: E402
from tests.test_multitalk_render import (FIXTURES, TINY_BUCKETS, build_weights,  # noqa: E402
                                         decoded, scene, voice)

RANKS = 2
LAUNCH_TIMEOUT_S = 240
# name → the flags' parallel settings of one 2-rank render
SCENARIOS = {
    "ulysses_fsdp": dict(ulysses_size=2, dit_fsdp=True, t5_fsdp=True),
    "cfg_parallel": dict(cfg_parallel=2),
}

pytestmark = pytest.mark.skipif(not (FIXTURES / "ckpt").is_dir(), reason=f"{FIXTURES} not present")


def two_speakers():
    return scene([Line(0, "", audio=voice(0.5, 220)), Line(1, "", audio=voice(0.3, 330), pause_after=0)])


def use_tiny_presets(backend: MultiTalkBackend) -> None:
    """The daemon's pipeline has the real bucket presets: render at the tiny test size."""
    backend.pipeline.config = replace(backend.pipeline.config, buckets=TINY_BUCKETS, motion_frames=5,
                                      audio_context_frames=8, x264_preset="ultrafast")


# ------------------------------------------------------------------------------ the flags

def test_flags_map_to_the_layout_fsdp_and_lockstep():
    one = ParallelPlan.from_settings(DaemonSettings())
    assert one == ParallelPlan(ParallelLayout(1, 1, 1, 1), dit_fsdp=False, t5_fsdp=False)
    assert (one.lockstep, one.describe()) == (False, "one device")

    four = ParallelPlan.from_settings(DaemonSettings(world_size=4, ulysses_size=2, cfg_parallel=2,
                                                     dit_fsdp=True))
    assert four.layout == ParallelLayout(world_size=4, ulysses=2, ring=1, guidance=2)
    assert four.lockstep          # the DiT's all-gathers span both guidance groups
    assert four.describe() == "4 ranks: guidance 2 × Ulysses 2 × ring 1, DiT sharded (FSDP)"

    sp = ParallelPlan.from_settings(DaemonSettings(world_size=2, ulysses_size=2, t5_fsdp=True))
    assert (sp.layout.sequence, sp.layout.guidance, sp.lockstep) == (2, 1, False)
    assert sp.describe() == "2 ranks: guidance 1 × Ulysses 2 × ring 1, T5 sharded (FSDP)"


def test_cfg_parallel_counts_in_the_ranks_and_defaults_to_none():
    assert parse_settings([], env={}).cfg_parallel == 1
    two = {"RANK": "0", "WORLD_SIZE": "2"}
    assert parse_settings(["--cfg_parallel", "2"], env=two).cfg_parallel == 2
    six = parse_settings(["--cfg_parallel", "3", "--ulysses_size", "2"], env={"WORLD_SIZE": "6"})
    assert ParallelPlan.from_settings(six).layout == ParallelLayout(6, ulysses=2, ring=1, guidance=3)
    with pytest.raises(ConfigError, match=r"--cfg_parallel 2 × --ulysses_size 2 × --ring_size 1 = 4.*"
                                          r"--ulysses_size 1 --ring_size 1"):
        parse_settings(["--cfg_parallel", "2", "--ulysses_size", "2"], env=two)
    with pytest.raises(ConfigError, match="1 to 3"):
        parse_settings(["--cfg_parallel", "4"], env={"WORLD_SIZE": "4"})


def test_one_rank_builds_nothing_parallel():
    parts = build_parallelism(ParallelPlan.from_settings(DaemonSettings()), rank=0, local_rank=0,
                              device=torch.device("cpu"), num_heads=40, dtype=torch.float32)
    assert isinstance(parts.sequence, WholeSequence)
    assert (parts.dit_mesh, parts.t5_mesh, parts.vae_bands) == (None, None, None)
    assert parts.groups.sequence.size == parts.guidance.group.size == 1
    assert not parts.guidance.lockstep


def test_a_sharded_dit_stays_on_the_gpu_whatever_the_offload_flags_say():
    flags = DaemonSettings(world_size=2, ulysses_size=2, dit_fsdp=True, offload_model=True,
                           num_persistent_param_in_dit=0)
    placement = model_placement(flags, torch.device("cuda", 1))
    assert (placement.offload_model, placement.persistent_dit_params) == (False, None)
    assert placement.dit_home == torch.device("cuda", 1)
    kept = model_placement(replace(flags, dit_fsdp=False), torch.device("cuda", 1))
    assert (kept.offload_model, kept.persistent_dit_params) == (True, 0)


def test_a_multi_rank_cpu_daemon_offers_drafts_only(weights, tmp_path):
    settings = DaemonSettings(weights=weights, state=tmp_path / "state", world_size=2,
                              ulysses_size=2)
    backends = select_backends(settings, Runtime(0, 2, torch.device("cpu"), Control(0, 2, None)),
                               tts=None)
    draft, multitalk = backends.states()
    assert (draft.name, draft.state) == ("draft", "ready")
    assert (multitalk.name, multitalk.state) == ("multitalk", "unavailable")
    assert "2 ranks on the CPU" in multitalk.detail and "--nproc 0" in multitalk.detail


# ------------------------------------------------------------------------------ 2 ranks = 1 rank

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def one_rank_video(weights, tmp_path_factory) -> bytes:
    """The reference: the same backend load path with one rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # as the ranks (OMP_NUM_THREADS=1)
    try:
        root = tmp_path_factory.mktemp("one-rank")
        backend = load_backend(DaemonSettings(weights=weights, state=root / "state"),
                               Runtime(0, 1, torch.device("cpu"), Control(0, 1, None)), tts=None)
        use_tiny_presets(backend)
        out = root / "work"
        out.mkdir()
        outputs = backend.render(JobInputs("job", "full", two_speakers(), root / "project.zip"), out,
                                 Reporter())
        return decoded(outputs.files["video.mp4"])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_ranks(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    run_ranks(Path(__file__), [weights, out], ranks=RANKS, log=out / "launch.log",
              timeout_s=LAUNCH_TIMEOUT_S)
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_render_the_one_rank_video(name, two_ranks, one_rank_video):
    video = two_ranks / name / "video.mp4"
    assert video.is_file()
    assert decoded(video) == one_rank_video


def test_each_rank_loads_the_pieces_its_flags_ask_for(two_ranks):
    ranks = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in range(RANKS)]
    for rank, measured in enumerate(ranks):
        sp = measured["ulysses_fsdp"]
        assert (sp["sequence"], sp["sequence_ranks"], sp["guidance_ranks"]) == ("SequenceParallel", 2, 1)
        assert (sp["dit_sharded"], sp["t5_sharded"], sp["lockstep"]) == (True, True, False)
        cfg = measured["cfg_parallel"]
        assert (cfg["sequence"], cfg["sequence_ranks"], cfg["guidance_ranks"]) == ("WholeSequence", 1, 2)
        assert (cfg["dit_sharded"], cfg["t5_sharded"], cfg["lockstep"]) == (False, False, False)
        # the VAE splits its rows over both ranks whatever the DiT's layout
        assert sp["vae"] == cfg["vae"] == "BandedVAE"
        assert sp["outputs"] == cfg["outputs"] == (
            ["dialogue.wav", "subtitles.srt", "subtitles.vtt", "video.mp4"] if rank == 0 else [])
    assert ranks[0]["ulysses_fsdp"]["detail"].endswith(
        "2 ranks: guidance 1 × Ulysses 2 × ring 1, DiT and T5 sharded (FSDP)")


# ------------------------------------------------------------------------------ rank program

def _rank_program(weights: Path, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from daemon.control import CONTINUE, STOP, init_distributed
    from daemon.parallel.groups import destroy_parallel_groups
    from tests.parallel_shim import install_xfuser_cpu_shim

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    base = DaemonSettings(weights=weights, world_size=RANKS, rank=rank,
                          local_rank=int(os.environ["LOCAL_RANK"]), offload_model=False)
    runtime = init_distributed(replace(base, ulysses_size=RANKS))
    install_xfuser_cpu_shim()
    if rank == 0:
        reporter = Reporter(None, lambda: runtime.control.signal(CONTINUE) == STOP)
    else:
        reporter = Reporter(None, lambda: runtime.control.signal() == STOP)

    measured = {}
    for name, flags in SCENARIOS.items():
        settings = replace(base, state=out / name / "state", **flags)
        backend = load_backend(settings, runtime, tts=None)
        use_tiny_presets(backend)
        work = out / name if rank == 0 else None
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
        outputs = backend.render(JobInputs("job", "full", two_speakers(), out / "project.zip"),
                                 work, reporter)
        pipeline = backend.pipeline
        measured[name] = {
            "sequence": type(pipeline.models.dit.sequence).__name__,
            "sequence_ranks": getattr(getattr(pipeline.models.dit.sequence, "group", None), "size", 1),
            "guidance_ranks": pipeline.guidance.group.size,
            "lockstep": pipeline.guidance.lockstep,
            "dit_sharded": isinstance(pipeline.models.dit, FSDPModule),
            "t5_sharded": isinstance(pipeline.models.text.encoder, FSDPModule),
            "vae": type(pipeline.vae).__name__,
            "outputs": sorted(outputs.files),
            "detail": backend.state().detail,
        }
        dist.barrier()
        destroy_parallel_groups()
    (out / f"rank{rank}.json").write_text(json.dumps(measured))
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_program(Path(sys.argv[1]), Path(sys.argv[2]))
