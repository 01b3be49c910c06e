"""The baseline of bench_study_cli.py: a shift x steps study as a plain diffusers user writes it.

    python benchmarks/diffusers_study_loop.py --weights FOLDER --out DIR --prompts-file P.txt \
        --shifts 2.0 3.0 --steps 4 8 --seeds 0 1 --size 1024 --compile dit+vae

`ZImagePipeline.from_pretrained`, `transformer.compile_repeated_blocks(fullgraph=True)` (and the
VAE compiled too with `--compile dit+vae`: the issue lets the baseline do the best a diffusers
user can do in a few lines), one image per call, a PNG saved per image. The scheduler is rebuilt
from the pipeline's config with each shift, as diffusers' docs show for changing a scheduler's
options. No llm-dit import: this file is the other side of the comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a diffusers-format Z-Image folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts-file", type=Path, required=True, help="one prompt per line")
    parser.add_argument("--shifts", type=float, nargs="+", required=True)
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--compile", choices=["none", "dit", "dit+vae"], default="dit+vae")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    pipe = ZImagePipeline.from_pretrained(args.weights, torch_dtype=DTYPES[args.dtype]).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.compile != "none":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    if args.compile == "dit+vae":
        pipe.vae.compile()
    base_config = pipe.scheduler.config
    for shift in args.shifts:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base_config, shift=shift)
        for steps in args.steps:
            folder = args.out / f"shift={shift},steps={steps}"
            folder.mkdir(parents=True, exist_ok=True)
            for prompt_index, prompt in enumerate(prompts):
                for seed in args.seeds:
                    image = pipe(
                        prompt, height=args.size, width=args.size, num_inference_steps=steps, guidance_scale=0.0,
                        generator=torch.Generator(device).manual_seed(seed),
                    ).images[0]
                    image.save(folder / f"p{prompt_index:03d}_s{seed}.png")


if __name__ == "__main__":
    main()
