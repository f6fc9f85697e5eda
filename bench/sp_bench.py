"""Sequence-parallel DiT forward on 1 vs N GPUs: seconds per forward and memory per GPU.

Full 14B size, random bf16 weights, inputs built as bench/dit_bench.py builds them (81 frames,
512 context tokens, t = 999); median of 3 forwards after one warm-up, CUDA events, every rank
synchronised. Each GPU count runs as its own torchrun launch (Ulysses over all its ranks, or
--ring for xfuser's ring attention); the driver collects one table.

usage: python bench/sp_bench.py [640x640 960x960 ...] [--gpus 1,2] [--speakers 2]
                                [--fsdp] [--ring] [--check] [--vae]
       TINY=1 python bench/sp_bench.py   (CPU, gloo, tiny sizes, 1 and 2 ranks: checks the harness)
  --check  also runs each multi-GPU config on one device per rank (same weights) and reports
           the largest difference: the parallel forward must equal the one-GPU forward.
  --vae    times the real-size Wan VAE decode of one clip (21 latent frames) per resolution on
           one GPU, bf16 and fp32: the numbers behind docs/parallel.md's decision not to split it.
Prints one table; writes bench/results/sp_<gpu>_<date>.json (or $OUT/) with the GPU, date,
torch version and exact command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dit_bench import PEAK_TFLOPS, flops_per_forward, inputs  # noqa: E402
from daemon.models.dit import DiTBlock, DiTConfig, MultiTalkDiT  # noqa: E402
from daemon.pipeline.models import init_random  # noqa: E402
from daemon.parallel.attention import AttentionKernel, choose_kernel  # noqa: E402
from daemon.parallel.fsdp import build_sharded, world_mesh  # noqa: E402
from daemon.parallel.groups import (ParallelLayout, destroy_parallel_groups,  # noqa: E402
                                    init_parallel_groups)
from daemon.parallel.sequence import SequenceParallel, WholeSequence  # noqa: E402

TINY = os.environ.get("TINY") == "1"
LATENT_FRAMES = 21          # 81 video frames
VAE_REPEATS = 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("resolutions", nargs="*", default=["640x640", "960x960"])
    p.add_argument("--gpus", default="1,2", help="GPU counts to compare, e.g. 1,2")
    p.add_argument("--speakers", default="2", help="e.g. 2,1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fsdp", action="store_true", help="shard the DiT per block (--dit_fsdp)")
    p.add_argument("--ring", action="store_true", help="ring attention instead of Ulysses")
    p.add_argument("--kernel", choices=[k.value for k in AttentionKernel], default=None,
                   help="attention kernel (default: choose_kernel for the device)")
    p.add_argument("--check", action="store_true", help="compare with one device per rank")
    p.add_argument("--vae", action="store_true", help="also time the VAE decode on one GPU")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)   # a rank's output file
    opts = p.parse_args(argv)
    if TINY and opts.resolutions == ["640x640", "960x960"]:
        opts.resolutions = ["32x32", "64x64"]
    return opts


def model_config() -> DiTConfig:
    return DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2) if TINY else DiTConfig()


# ------------------------------------------------------------------------------ one launch

def build_random(cfg: DiTConfig, sequence, device, dtype, fsdp: bool) -> MultiTalkDiT:
    """Random weights; the same on every rank unless sharded (each rank fills its own shard)."""
    if fsdp:
        model = build_sharded(lambda: MultiTalkDiT(cfg, sequence=sequence), DiTBlock, device,
                              world_mesh(device))
    else:
        with torch.device("meta"):
            model = MultiTalkDiT(cfg, sequence=sequence)
        model = model.to_empty(device=device)
    model = model.to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.normal_(0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def rank_main(opts: argparse.Namespace) -> None:
    """One torchrun launch: every rank builds the model and times the configs."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if TINY or not torch.cuda.is_available():
        device, dtype = torch.device("cpu"), torch.float32
    else:
        device, dtype = torch.device("cuda", local_rank), torch.bfloat16
        torch.cuda.set_device(device)
    if world > 1:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
            from tests.parallel_shim import install_xfuser_cpu_shim   # CPU harness check only
            install_xfuser_cpu_shim()
    cfg = model_config()
    ring = world if opts.ring else 1
    layout = ParallelLayout(world_size=world, ulysses=world // ring, ring=ring)
    groups = init_parallel_groups(layout, rank=rank, local_rank=local_rank,
                                  num_heads=cfg.num_heads, device=device)
    kernel = AttentionKernel(opts.kernel) if opts.kernel else choose_kernel(device, dtype)
    sequence = WholeSequence() if world == 1 else SequenceParallel(groups.sequence, kernel)
    model = build_random(cfg, sequence, device, dtype, opts.fsdp and world > 1)
    params = sum(p.numel() for p in model.parameters())      # global counts, sharded or not

    rows = []
    with torch.inference_mode():
        for res in opts.resolutions:
            width, height = map(int, res.split("x"))
            tokens = LATENT_FRAMES * (height // 16) * (width // 16)
            for speakers in map(int, opts.speakers.split(",")):
                args = inputs(height, width, speakers, cfg, device, dtype)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                run = lambda: model(**args)  # noqa: E731
                warm = timed(run, 1, device)[0]
                times = timed(run, opts.repeats, device)
                peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else 0.0
                error = None
                if opts.check and world > 1:
                    parallel_out = model(**args)
                    model.sequence = WholeSequence()       # same weights, whole sequence here
                    error = float((parallel_out - model(**args)).abs().max())
                    model.sequence = sequence
                median = sorted(times)[len(times) // 2]
                flops = flops_per_forward(tokens, cfg)
                rows.append(dict(
                    res=res, speakers=speakers, gpus=world, ulysses=layout.ulysses, ring=layout.ring,
                    fsdp=opts.fsdp and world > 1, kernel=kernel.value if world > 1 else "dit default",
                    tokens=tokens, warmup_s=round(warm, 3), times_s=[round(t, 3) for t in times],
                    median_s=round(median, 3),
                    tflops_per_gpu=round(flops / median / world / 1e12, 1),
                    x_floor=round(median / (flops / (PEAK_TFLOPS * 1e12) / world), 2),
                    peak_gib=round(peak, 1), max_error_vs_one_device=error, params=params))
                del args

    peaks = [r["peak_gib"] for r in rows]
    if world > 1:      # every rank's peak; the table shows the largest
        gathered = [None] * world
        dist.all_gather_object(gathered, peaks)
        for i, row in enumerate(rows):
            row["peak_gib_per_rank"] = [p[i] for p in gathered]
            row["peak_gib"] = max(p[i] for p in gathered)
    if rank == 0:
        Path(opts.part).write_text(json.dumps(rows))
    if world > 1:
        destroy_parallel_groups()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ VAE decode

def vae_rows(resolutions: list[str], repeats: int) -> list[dict]:
    """Decode one clip's latent with the real-size Wan VAE (random weights) on one device."""
    from daemon.models.vae import LATENT_MEAN, VAEConfig, VideoVAE, WanVAE
    device = torch.device("cpu" if TINY or not torch.cuda.is_available() else "cuda")
    cfg = VAEConfig(dim=4 if TINY else 96, z_dim=len(LATENT_MEAN), dim_mult=(1, 2, 4, 4),
                    num_res_blocks=2, attn_scales=(), temporal_downsample=(False, True, True))
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        with torch.device("meta"):
            model = VideoVAE(cfg)
        vae = WanVAE(init_random(model, device, dtype, seed=0).eval(), device, dtype)
        gen = torch.Generator(device=device).manual_seed(1)
        for res in resolutions:
            width, height = map(int, res.split("x"))
            frames = 2 if TINY else LATENT_FRAMES       # the CPU check only runs the code
            latent = torch.randn(cfg.z_dim, frames, height // 8, width // 8, device=device,
                                 generator=gen)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            warm = timed(lambda: vae.decode(latent), 1, device)[0]
            times = timed(lambda: vae.decode(latent), repeats, device)
            rows.append(dict(res=res, dtype=str(dtype).removeprefix("torch."), latent_frames=frames,
                             warmup_s=round(warm, 3), times_s=[round(t, 3) for t in times],
                             median_s=round(sorted(times)[len(times) // 2], 3),
                             peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
                             if device.type == "cuda" else 0.0))
            print(json.dumps(rows[-1]), flush=True)
        del model, vae
    return rows


# ------------------------------------------------------------------------------ driver

def driver(opts: argparse.Namespace, argv: list[str]) -> None:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in map(int, opts.gpus.split(",")):
            part = Path(tmp) / f"gpus{gpus}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={gpus}", __file__, *argv, "--part", str(part)]
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path, "NCCL_NVLS_ENABLE": "0",
                   "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
            print(f"# {gpus} rank(s): {' '.join(cmd[2:])}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            launch_rows = json.loads(part.read_text())
            for row in launch_rows:
                print(json.dumps(row), flush=True)
            rows += launch_rows
    vae = vae_rows(opts.resolutions, VAE_REPEATS) if opts.vae else []

    single = {(r["res"], r["speakers"]): r["median_s"] for r in rows if r["gpus"] == 1}
    for r in rows:
        base = single.get((r["res"], r["speakers"]))
        r["speedup_vs_1"] = round(base / r["median_s"], 2) if base else None
    print(f"\n{'config':<38}{'s/fwd':>8}{'×1 GPU':>8}{'TFLOP/s/GPU':>13}{'peak GiB/GPU':>14}{'max err':>10}")
    for r in rows:
        layout = ("1 GPU" if r["gpus"] == 1 else
                  f"{r['gpus']} GPU u{r['ulysses']}r{r['ring']}{' fsdp' if r['fsdp'] else ''}")
        name = f"{r['res']} {r['speakers']}spk {layout}"
        err = "" if r["max_error_vs_one_device"] is None else f"{r['max_error_vs_one_device']:.1e}"
        speed = "" if r["speedup_vs_1"] is None else f"{r['speedup_vs_1']:.2f}"
        print(f"{name:<38}{r['median_s']:>8.3f}{speed:>8}{r['tflops_per_gpu']:>13.1f}"
              f"{r['peak_gib']:>14.1f}{err:>10}")
    for r in vae:
        print(f"VAE decode {r['res']} {r['dtype']:<8} {r['latent_frames']} latent frames: {r['median_s']:.3f} s, "
              f"peak {r['peak_gib']:.1f} GiB")

    gpu = (torch.cuda.get_device_name() if torch.cuda.is_available() and not TINY
           else platform.processor() or "cpu")
    result = dict(bench="sp_dit_forward", gpu=gpu, date=datetime.date.today().isoformat(),
                  torch=torch.__version__, command=" ".join(["python", *sys.argv]),
                  tiny=TINY, dtype="float32" if TINY else "bfloat16",
                  params=rows[0]["params"] if rows else None, rows=rows, vae_decode=vae)
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "tiny" if TINY else gpu.replace(" ", "_").replace("/", "_")
    path = out_dir / f"sp_{tag}_{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    options = parse_args()
    if "LOCAL_RANK" in os.environ:
        rank_main(options)
    else:
        driver(options, sys.argv[1:])
