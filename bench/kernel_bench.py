"""Time the candidate kernels for the DiT's two costliest optional pieces at full size.

1. The speaker-routing reference map: attention(q, k_ref, V = person masks) with 40 heads of
   width 128, L queries (33,600 at 640², 75,600 at 960²) and the S keys of latent frame 0
   (1,600 / 3,600), value width 3 (padded). Each candidate runs through torch's SDPA with one
   backend forced, or through FlexAttention; a candidate a backend refuses is listed as refused.
   The self-attention itself (values 128 wide) is timed beside it for the achieved-rate yardstick.
2. The DiT's GEMMs in bf16 against FP8 (e4m3, row-wise scales, torch._scaled_mm) on Hopper,
   with the activation quantisation counted.
3. The short cross-attentions (text, image, per-frame audio) per backend and query layout.

usage: python bench/kernel_bench.py [--sizes 640,960] [--out DIR]
Prints one table per part; writes kernel_<gpu>_<date>.json to --out (default bench/results).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_DIM, DIM, FFN = 40, 128, 5120, 13824


def cuda_time(fn, repeats: int = 5) -> float:
    """Median seconds of fn() after two warm-up calls, by CUDA events."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def tokens(side: int) -> tuple[int, int]:
    frame = (side // 16) ** 2
    return 21 * frame, frame


def map_candidates(q, k_ref, v_narrow):
    """name → zero-argument callable computing attention(q, k_ref, values) one way."""
    b, s = k_ref.shape[0], k_ref.shape[2]
    candidates = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for width in (8, 16, 32, 64, 128):
            v = F.pad(v_narrow, (0, width - v_narrow.shape[-1]))
            def run(v=v, backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k_ref, v)
            candidates[f"sdpa {backend.name.split('_')[0].lower()} dv={width}"] = run
    from torch.nn.attention.flex_attention import flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    for width in (16, 32):
        v = F.pad(v_narrow, (0, width - v_narrow.shape[-1]))
        candidates[f"flex dv={width}"] = lambda v=v: flex(q, k_ref, v)
    return candidates


def bench_map(side: int, device) -> list[dict]:
    seq, ref = tokens(side)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, HEADS, seq, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, HEADS, seq, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, HEADS, seq, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=gen)
    masks = torch.zeros(ref, 3, device=device)
    masks[: ref // 2, 0] = 1
    masks[ref // 2:, 1] = 1
    masks[:, 2] = 1 - masks[:, 0] - masks[:, 1]
    values = (masks / masks.sum(0).clamp_min(1)).to(torch.bfloat16)
    v_narrow = values[None, None].expand(1, HEADS, ref, 3)
    k_ref = k[:, :, :ref]
    reference = F.scaled_dot_product_attention(q.float()[:, :4], k_ref.float()[:, :4],
                                               v_narrow.float()[:, :4])
    qk_flops = 2 * seq * ref * HEAD_DIM * HEADS          # q·kᵀ alone: the map's useful work
    rows = []
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        full = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append(dict(size=side, kernel="self-attention cudnn dv=128", seconds=full,
                     tflops=4 * seq * seq * HEAD_DIM * HEADS / full / 1e12, error=None))
    # Fused alternative: the self-attention's values widened by the mask columns (zero off frame 0).
    for width in (136, 144, 160, 192):
        v_wide = F.pad(v, (0, width - HEAD_DIM))
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    seconds = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v_wide))
                rows.append(dict(size=side, kernel=f"self-attn {backend.name.split('_')[0].lower()} dv={width}",
                                 seconds=seconds, tflops=None, error=f"+{(seconds - full) * 1e3:.1f} ms"))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(size=side, kernel=f"self-attn {backend.name.split('_')[0].lower()} dv={width}",
                                 seconds=None, tflops=None, error=f"refused: {str(e)[:60]}"))
        del v_wide
    for name, fn in map_candidates(q, k_ref, v_narrow).items():
        try:
            out = fn()
            error = (out[:, :4, :, :3].float() - reference).abs().max().item()
            seconds = cuda_time(fn)
            rows.append(dict(size=side, kernel=name, seconds=seconds, error=error,
                             tflops=qk_flops / seconds / 1e12))
        except Exception as e:  # noqa: BLE001 - a refused shape is a result here
            rows.append(dict(size=side, kernel=name, seconds=None, tflops=None,
                             error=f"refused: {type(e).__name__}: {str(e)[:80]}"))
        torch.cuda.empty_cache()
    return rows


def bench_short(side: int, device) -> list[dict]:
    """The cross-attentions: all L queries over 512 text / 257 image keys, and per latent frame
    its S queries over 32 (one speaker) / 64 (two) audio tokens; q as the DiT holds it
    ([B, L, H, D] viewed as [B, H, L, D]) and contiguous."""
    seq, frame = tokens(side)
    rows = []
    cases = {"text 512": (1, seq, 512), "image 257": (1, seq, 257),
             "audio 32": (21, frame, 32), "audio 64": (21, frame, 64)}
    for name, (batch, lq, lk) in cases.items():
        q_blhd = torch.randn(batch, lq, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
        k = torch.randn(batch, lk, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn(batch, lk, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16).transpose(1, 2)
        layouts = {"strided": q_blhd.transpose(1, 2), "contiguous": q_blhd.transpose(1, 2).contiguous()}
        for layout, q in layouts.items():
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                            SDPBackend.EFFICIENT_ATTENTION):
                label = f"{name} {backend.name.split('_')[0].lower()} {layout}"
                try:
                    with sdpa_kernel([backend]):
                        seconds = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v))
                    rows.append(dict(size=side, kernel=label, seconds=seconds, tflops=None,
                                     error=f"{4 * batch * lq * lk * HEAD_DIM * HEADS / seconds / 1e12:.0f} TFLOP/s"))
                except Exception as e:  # noqa: BLE001
                    rows.append(dict(size=side, kernel=label, seconds=None, tflops=None,
                                     error=f"refused: {str(e)[:60]}"))
        del q_blhd, layouts, k, v
        torch.cuda.empty_cache()
    return rows


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(-1, keepdim=True).float().clamp_min(1e-12) / 448.0
    return (x / scale).to(torch.float8_e4m3fn), scale


def bench_gemm(side: int, device) -> list[dict]:
    seq, _ = tokens(side)
    rows = []
    quantize = torch.compile(quantize_rows, dynamic=False)
    for k_dim, n_dim in ((DIM, DIM), (DIM, FFN), (FFN, DIM)):
        x = torch.randn(seq, k_dim, device=device, dtype=torch.bfloat16)
        w = torch.randn(n_dim, k_dim, device=device, dtype=torch.bfloat16) / k_dim ** 0.5
        flops = 2 * seq * k_dim * n_dim
        bf16 = cuda_time(lambda: x @ w.t())
        w8, w_scale = quantize_rows(w)
        x8, x_scale = quantize(x)
        fp8_only = cuda_time(lambda: torch._scaled_mm(x8, w8.t(), scale_a=x_scale,
                                                      scale_b=w_scale.t(), out_dtype=torch.bfloat16))
        def fp8_with_quant():
            a, s = quantize(x)
            return torch._scaled_mm(a, w8.t(), scale_a=s, scale_b=w_scale.t(), out_dtype=torch.bfloat16)
        fp8_total = cuda_time(fp8_with_quant)
        exact = x.float() @ w.float().t()
        err = lambda y: ((y.float() - exact).norm() / exact.norm()).item()  # noqa: E731
        rows.append(dict(size=side, shape=f"{seq}x{k_dim}x{n_dim}", bf16_s=bf16,
                         bf16_tflops=flops / bf16 / 1e12, fp8_s=fp8_only,
                         fp8_tflops=flops / fp8_only / 1e12, fp8_with_quant_s=fp8_total,
                         bf16_rel_err=err(x @ w.t()), fp8_rel_err=err(fp8_with_quant())))
        del x, w, w8, x8, exact
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="640,960")
    parser.add_argument("--short_only", action="store_true", help="only the cross-attentions")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device("cuda")
    sizes = [int(s) for s in args.sizes.split(",")]
    maps = [row for side in sizes for row in bench_short(side, device)]
    if not args.short_only:
        maps += [row for side in sizes for row in bench_map(side, device)]
    gemms = [] if args.short_only else [row for side in sizes for row in bench_gemm(side, device)]
    print(f"{'size':>5} {'kernel':32} {'s':>9} {'TFLOP/s':>8}  max err / refusal")
    for r in maps:
        s = f"{r['seconds'] * 1e3:8.2f}m" if r["seconds"] else "        -"
        t = f"{r['tflops']:8.0f}" if r["tflops"] else "       -"
        print(f"{r['size']:>5} {r['kernel']:32} {s} {t}  {r['error']}")
    print(f"\n{'size':>5} {'M×K×N':22} {'bf16 ms':>8} {'TF/s':>5} {'fp8 ms':>8} {'TF/s':>5} "
          f"{'fp8+q ms':>8} {'err bf16':>9} {'err fp8':>8}")
    for r in gemms:
        print(f"{r['size']:>5} {r['shape']:22} {r['bf16_s'] * 1e3:8.2f} {r['bf16_tflops']:5.0f} "
              f"{r['fp8_s'] * 1e3:8.2f} {r['fp8_tflops']:5.0f} {r['fp8_with_quant_s'] * 1e3:8.2f} "
              f"{r['bf16_rel_err']:9.2e} {r['fp8_rel_err']:8.2e}")
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    record = dict(gpu=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(),
                  torch=torch.__version__, python=platform.python_version(),
                  command=" ".join(["python"] + sys.argv), reference_map=maps, gemm=gemms)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kernel_{gpu}_{record['date']}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
