"""Time one MultiTalk DiT forward at full 14B size with random bf16 weights on a GPU.

Inputs are built exactly as ../shared/tools/official_dit_bench.py builds them (81 frames,
512 context tokens, t = 999, two speakers with left/right masks, or one speaker), so the rows
compare with the official numbers in ../shared/docs/PERF.md measured the same way: median of 3
forwards after one warm-up, CUDA-synchronised wall time.

usage: python bench/dit_bench.py [640x640 960x960 ...] [--speakers 2,1] [--attn default,cudnn]
       TINY=1 python bench/dit_bench.py      (CPU, tiny sizes: checks the harness itself)
Prints one table; writes bench/results/dit_<gpu>_<date>.json (or $OUT/) with the GPU, date,
torch version and exact command.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.models.dit import DiTConfig, MultiTalkDiT  # noqa: E402
from daemon.models.fp8 import convert_blocks_to_fp8  # noqa: E402
from daemon.pipeline.models import init_random  # noqa: E402

PEAK_TFLOPS = 790.0          # measured bf16 GEMM ceiling on H100/H200 here (PERF.md)
BACKENDS = {
    "default": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
}


def flops_per_forward(tokens: int, cfg: DiTConfig) -> float:
    """PERF.md's FLOP model: projections, attention core, cross-attention, audio, FFN."""
    d, f, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    per_layer = (8 * tokens * d * d + 4 * tokens * tokens * d
                 + 4 * tokens * d * d + 4 * 769 * d * d + 4 * tokens * 769 * d
                 + 4 * tokens * d * d + 4 * tokens * 64 * d
                 + 4 * tokens * d * f)
    return layers * per_layer


def build_model(cfg: DiTConfig, device, dtype) -> MultiTalkDiT:
    with torch.device("meta"):
        model = MultiTalkDiT(cfg)
    return init_random(model, device, dtype, seed=0).eval().requires_grad_(False)


def inputs(height: int, width: int, speakers: int, cfg: DiTConfig, device, dtype):
    h, w = height // 8, width // 8
    gen = torch.Generator(device=device).manual_seed(1)
    rand = lambda *s, dt=dtype: torch.randn(*s, device=device, dtype=dt, generator=gen)  # noqa: E731
    masks = torch.ones(3, h, w, device=device)
    if speakers == 2:
        masks = torch.zeros(3, h, w, device=device)
        masks[0, :, : w // 2] = 1
        masks[1, :, w // 2:] = 1
        masks[2] = 1 - masks[0] - masks[1]
        masks[2, : h // 4] = 1
    return dict(x=rand(1, 16, 21, h, w, dt=torch.float32), t=torch.tensor([999.0], device=device),
                context=rand(1, cfg.text_len, 4096), clip_fea=rand(1, 257, cfg.clip_dim),
                y=rand(1, 20, 21, h, w), audio=rand(1, speakers, 81, 5, 12, 768),
                ref_target_masks=masks)


def time_forwards(model, args, repeats: int, device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            model(**args)
            times.append(time.perf_counter() - t0)
    return times


def profile_forward(model, args, device) -> None:
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        model(**args)
        if cuda:
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=40, max_name_column_width=90),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("resolutions", nargs="*", default=["640x640", "960x960"])
    parser.add_argument("--speakers", default="2,1")
    parser.add_argument("--attn", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    parser.add_argument("--fp8", action="store_true",
                        help="the blocks' token-wide GEMMs in float8 (daemon.models.fp8)")
    parser.add_argument("--profile", action="store_true",
                        help="print the top CUDA kernels of one forward per config")
    opts = parser.parse_args()

    tiny = os.environ.get("TINY") == "1"
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    cfg = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2) if tiny else DiTConfig()
    if tiny and opts.resolutions == ["640x640", "960x960"]:
        opts.resolutions = ["64x64"]

    t0 = time.perf_counter()
    model = build_model(cfg, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    if opts.fp8:
        convert_blocks_to_fp8(model.blocks)
    if opts.compile:
        model.compile_blocks()
    print(f"model: {params / 1e9:.2f} B params, built in {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    with torch.inference_mode():
        for res in opts.resolutions:
            width, height = map(int, res.split("x"))
            tokens = 21 * (height // 16) * (width // 16)
            for speakers in map(int, opts.speakers.split(",")):
                for attn in opts.attn.split(","):
                    args = inputs(height, width, speakers, cfg, device, dtype)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    kernels = BACKENDS[attn]
                    with sdpa_kernel(kernels) if kernels else contextlib.nullcontext():
                        warm = time_forwards(model, args, 1, device)[0]
                        times = time_forwards(model, args, opts.repeats, device)
                    median = sorted(times)[len(times) // 2]
                    flops = flops_per_forward(tokens, cfg)
                    floor = flops / (PEAK_TFLOPS * 1e12)
                    row = dict(res=res, speakers=speakers, attn=attn, compiled=opts.compile, fp8=opts.fp8,
                               tokens=tokens,
                               warmup_s=round(warm, 3), times_s=[round(t, 3) for t in times],
                               median_s=round(median, 3), tflops=round(flops / median / 1e12, 1),
                               floor_s=round(floor, 3), x_floor=round(median / floor, 2),
                               peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
                               if device.type == "cuda" else 0.0)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if opts.profile:     # printed after its config's row
                        with sdpa_kernel(kernels) if kernels else contextlib.nullcontext():
                            profile_forward(model, args, device)
                    del args

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n{'config':<34}{'s/forward':>10}{'TFLOP/s':>9}{'x floor':>9}{'peak GiB':>10}")
    for r in rows:
        name = (f"{r['res']} {r['speakers']}spk {r['attn']}{' compiled' if r['compiled'] else ''}"
                f"{' fp8' if r['fp8'] else ''}")
        print(f"{name:<34}{r['median_s']:>10.3f}{r['tflops']:>9.1f}{r['x_floor']:>9.2f}{r['peak_gib']:>10.1f}")
    result = dict(bench="dit_forward", gpu=gpu, date=datetime.date.today().isoformat(),
                  torch=torch.__version__, command=" ".join(["python"] + sys.argv),
                  dtype=str(dtype), params=params, rows=rows)
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "tiny" if tiny else gpu.replace(" ", "_").replace("/", "_")
    variant = ("_compiled" if opts.compile else "") + ("_fp8" if opts.fp8 else "")
    path = out_dir / f"dit_{tag}{variant}_{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
