"""VAE decode variants at 1024^2 (full-size FLUX VAE, random bf16 weights): which compile settings pay.

  python benchmarks/vae_variants.py --out $OUT

Times eager, the default compiled decoder (llm_dit.accel.compile_vae_decoder) and
compile variants, b1 and b4, and each variant's image difference to eager.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def decode(vae, latent):
    with torch.no_grad():
        return vae.decode(latent, return_dict=False)[0]


def cuda_ms(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    from diffusers import AutoencoderKL

    from llm_dit.accel.compile import compile_forwards, uncompile_blocks
    from llm_dit.models.single_file import FLUX_VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKL(**FLUX_VAE_CONFIG).to("cuda", torch.bfloat16).eval()
    latents = {b: torch.randn(b, 16, 128, 128, device="cuda", dtype=torch.bfloat16) for b in (1, 4)}
    reference = {b: decode(vae, x).float() for b, x in latents.items()}
    variants = {
        "default": {},
        "coordinate_descent": {"coordinate_descent_tuning": True},
    }
    results = {"eager": {f"b{b}_ms_per_image": round(cuda_ms(lambda: decode(vae, x), 3) / b, 1) for b, x in latents.items()}}
    print(results, flush=True)
    for name, option in variants.items():
        torch._dynamo.reset()
        began = time.perf_counter()
        mode = option if isinstance(option, str) else None
        options = option if isinstance(option, dict) and option else None
        compile_forwards([vae.decoder], dynamic=False, mode=mode, options=options)
        row = {}
        for b, x in latents.items():
            out = decode(vae, x).float()
            row[f"b{b}_ms_per_image"] = round(cuda_ms(lambda: decode(vae, x)) / b, 1)
            row[f"b{b}_max_abs_vs_eager"] = round((out - reference[b]).abs().max().item(), 4)
        row["compile_s"] = round(time.perf_counter() - began, 1)
        results[name] = row
        print(name, row, flush=True)
        uncompile_blocks(vae)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "vae_variants.json").write_text(json.dumps(results, indent=1))  # after each variant


if __name__ == "__main__":
    main()
