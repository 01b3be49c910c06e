"""llm-dit's predict path vs diffusers' ZImagePipeline on full-size Z-Image-Turbo (random bf16 weights).

One process, one set of weights (the `random-z-image-turbo` preset, built on the
GPU), timed in this order so neither side inherits the other's compiled code:

  micro      bf16 matmul ceiling; attention kernels (and which one SDPA picks by itself) and
             GEMMs at Z-Image's shapes (bf16, fp8; separate and fused q/k/v, w1/w3)
  checks     one full-size block: diffusers' processor vs llm-dit's (fused q/k/v and w1/w3, direct cuDNN) against
             a float32 reference; falls back to the dispatcher if the direct cuDNN call fails
  diffusers  eager: batch 1, batch 4, CFG; encoder (padded to 512), VAE decode, one DiT forward
  diffusers  `compile_repeated_blocks(fullgraph=True)`: batch 1, one DiT forward (+ SM clock and
             power while it runs, + a torch.profiler kernel summary), the study as a loop
  llm-dit    `ZImageModule.generate` with llm_dit.accel (eager, then compiled): batch 1, batch 4,
             CFG, encoder (unpadded), one DiT forward (+ clock, + profile), the study batched by seeds
  fp8        the opt-in fp8 mode: batch 1, one DiT forward (+ profile), image difference to bf16
  ablation   one compiled DiT forward per variant of llm-dit's path: v1 (dispatcher, no fusion),
             direct cuDNN (the default since v2), + fused q/k/v, + fused w1/w3 (opt-in), each
             recompiled on the same card
  memory     a 1024^2 study batch with the text encoder freed after encoding
  profiles   torch.profiler kernel summaries of one compiled DiT forward: diffusers (right after its
             turn), llm-dit bf16 and fp8 (at the end), so that nothing timed runs after the profiler

`--sections a b ...` runs only those sections (build always runs); `--skip` leaves some out.
Kernel summaries go to $OUT/profile_<path>.txt, a chrome trace of llm-dit's forward to
$OUT/trace_ours.json.gz.

s/image is wall time per image of a full text-to-image call (encode, 8 steps,
VAE decode, copy to host), median of the timed runs; batch-1 runs encode a prompt
not seen before. The study is 4 prompts x 4 seeds x 4 shift values at 1024^2.

DiT FLOPs per forward (stated formula, context refiner excluded: it is cached):
  per block: 2 * T * (4 d^2 + 3 d h)  (q, k, v, out, SwiGLU w1 w2 w3; d = 3840, h = 10240)
           + 4 * T^2 * d              (QK^T and PV over all heads)
  30 main blocks on T = image tokens + caption padded to 32, 2 noise-refiner blocks on
  the image tokens, plus the patch embedder and final linear (2 * T * 64 * d each).

Run on the device machine (see benchmarks/NOTES.md for the exact command):
  python benchmarks/bench_zimage.py --out $OUT
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = ("A photograph of a red fox standing in fresh snow at golden hour, shallow depth of field, "
          "highly detailed fur, soft rim light")
STUDY_PROMPTS = [
    "A cat sleeping on a red couch",
    "Portrait of an elderly woman with silver hair, studio lighting, 85mm lens, high detail",
    "Cyberpunk cityscape at night, neon lights reflecting on wet streets, flying cars, dense fog, "
    "volumetric light, ultra wide angle, cinematic composition, towering holographic billboards",
    "A bowl of fresh fruit on a wooden table",
]
STUDY_SEEDS = [11, 22, 33, 44]
STUDY_SHIFTS = [3.0, 2.0, 4.0, 6.0]
SIZE, STEPS, GUIDANCE = 1024, 8, 4.0
GIB = 2**30
SMOKE = {"weights": "tiny", "dtype": "float32", "size": 64, "compile_backend": "eager"}  # --smoke: CPU dry run
COMPILE_BACKEND = "inductor"


class Bench:
    """Results, a deadline, and sections that record their error and let the rest run."""

    def __init__(self, out: Path, budget: float, skip: set[str] = frozenset(), only: set[str] | None = None) -> None:
        self.out, self.start, self.budget, self.skip, self.only = out, time.perf_counter(), budget, skip, only
        self.results: dict = {"errors": {}, "sections_s": {}, "skipped": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def ready(self, name: str, needs: float = 0.0) -> bool:
        """Whether ~`needs` seconds are left for section `name` (else it is recorded as skipped)."""
        if name in self.skip or (self.only is not None and name not in self.only):
            self.results["skipped"].append(f"{name} (--skip / --sections)")
            return False
        if self.left() >= needs:
            return True
        self.results["skipped"].append(f"{name} (needs ~{needs:.0f}s, {self.left():.0f}s left)")
        print(f"[skip] {name}: {self.left():.0f}s left", flush=True)
        return False

    @contextmanager
    def section(self, name: str):
        print(f"[{time.perf_counter() - self.start:6.1f}s] {name}", flush=True)
        began = time.perf_counter()
        try:
            yield
        except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
            self.results["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
            traceback.print_exc()
        finally:
            self.results["sections_s"][name] = round(time.perf_counter() - began, 1)
            self.save()

    def put(self, key: str, value) -> None:
        self.results[key] = value
        self.save()

    def save(self) -> None:
        (self.out / "bench.json").write_text(json.dumps(self.results, indent=1, default=str))


# ----- timing helpers ---------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall(fn, repeat: int = 1) -> list[float]:
    times = []
    for _ in range(repeat):
        sync()
        began = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - began)
    return times


def cuda_ms(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        return median(wall(fn, repeat)) * 1e3
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def median(values: list[float]) -> float:
    return statistics.median(values)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def image_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Images in [0,1]: mean/max abs difference in 8-bit levels, and PSNR (dB)."""
    diff = (a.float() - b.float()).abs()
    return {"mean_abs_255": round(diff.mean().item() * 255, 3), "max_abs_255": round(diff.max().item() * 255, 1),
            "psnr_db": round(psnr(a, b), 2)}


def dit_tflop(config, height: int, width: int, caption_len: int, batch: int = 1) -> float:
    """FLOPs of one DiT forward (formula in the module docstring), in TFLOP."""
    d, hidden = config.dim, int(config.dim / 3 * 8)
    image = (height // 16) * (width // 16)
    image += (-image) % 32
    tokens = image + caption_len + (-caption_len) % 32
    per_token = 2 * (4 * d * d + 3 * d * hidden)
    main = config.n_layers * (per_token * tokens + 4 * tokens**2 * d)
    refiner = config.n_refiner_layers * (per_token * image + 4 * image**2 * d)
    io = 2 * image * 64 * d + 2 * tokens * d * 64
    return batch * (main + refiner + io) / 1e12


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class GpuSampler:
    """SM clock (MHz) and power (W) read through NVML every `period` s while a block of GPU work runs."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.clocks, self.power, self.error = period, [], [], None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.clocks.append(torch.cuda.clock_rate())
                self.power.append(torch.cuda.power_draw() / 1000)
            except Exception as error:  # noqa: BLE001 - no NVML: no clock numbers, the timing still counts
                self.error = f"{type(error).__name__}: {str(error)[:120]}"
                return
            time.sleep(self.period)

    def __enter__(self) -> GpuSampler:
        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()

    def summary(self) -> dict:
        if not self.clocks:
            return {"error": self.error} if self.error else {}
        return {"sm_mhz_median": median(self.clocks), "sm_mhz_min": min(self.clocks),
                "power_w_median": round(median(self.power), 1), "samples": len(self.clocks)}


def timed_forward(fn, repeat: int = 8, warmup: int = 2) -> tuple[float, dict]:
    """cuda_ms of `fn` with the SM clock and power sampled during the timed repeats."""
    for _ in range(warmup):
        fn()
    sync()
    with GpuSampler() as sampler:
        ms = cuda_ms(fn, repeat=repeat, warmup=0)
    return round(ms, 1), sampler.summary()


def kernel_category(name: str) -> str:
    lower = name.lower()
    if any(key in lower for key in ("sdpa", "fmha", "flash", "attention", "attn")):
        return "attention"
    if lower.startswith("triton"):
        return "triton (Inductor fusions)"
    if any(key in lower for key in ("gemm", "nvjet", "xmma", "cutlass", "matmul", "gemv", "splitk")):
        return "gemm"
    if "memcpy" in lower or "memset" in lower:
        return "memcpy/memset"
    return "other (aten kernels)"


def profile_forward(fn, path: Path, label: str, trace: Path | None = None) -> dict:
    """Kernels of one call of `fn` (after a warm-up call): time per category and the top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    began = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall_ms = (time.perf_counter() - began) * 1e3
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        entry = kernels[event.name]
        entry[0] += event.time_range.elapsed_us() / 1e3
        entry[1] += 1
    total = sum(ms for ms, _ in kernels.values())
    categories: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, (ms, count) in kernels.items():
        categories[kernel_category(name)][0] += ms
        categories[kernel_category(name)][1] += count
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    lines = [f"{label}: one forward, {total:.1f} ms of kernels, {sum(c for _, c in kernels.values())} launches, "
             f"{wall_ms:.1f} ms wall under the profiler", "", "by category:"]
    for name, (ms, count) in sorted(categories.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"  {name:28} {ms:8.2f} ms  {100 * ms / max(total, 1e-9):5.1f} %  {int(count):5d} launches")
    lines += ["", f"{'ms':>9} {'calls':>6} {'us/call':>9}  kernel"]
    for name, (ms, count) in top[:40]:
        lines.append(f"{ms:9.2f} {int(count):6d} {1e3 * ms / count:9.1f}  [{kernel_category(name)}] {name[:220]}")
    try:
        sort_key = "self_device_time_total" if hasattr(prof.key_averages()[0], "self_device_time_total") else "self_cuda_time_total"
        lines += ["", "operators (key_averages):", prof.key_averages().table(sort_by=sort_key, row_limit=30, max_name_column_width=90)]
    except Exception as error:  # noqa: BLE001
        lines.append(f"key_averages failed: {error}")
    path.write_text("\n".join(lines) + "\n")
    if trace is not None:
        raw = trace.with_suffix("")
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as source, gzip.open(trace, "wb") as target:
            shutil.copyfileobj(source, target)
        raw.unlink()
    return {
        "kernel_ms": round(total, 2), "launches": int(sum(c for _, c in kernels.values())), "wall_ms_profiled": round(wall_ms, 1),
        "categories": {name: {"ms": round(ms, 2), "share": round(ms / max(total, 1e-9), 3), "launches": int(count)}
                       for name, (ms, count) in sorted(categories.items(), key=lambda kv: -kv[1][0])},
        "attention_kernels": sorted({name[:160] for name in kernels if kernel_category(name) == "attention"}),
        "top": [{"kernel": name[:160], "ms": round(ms, 2), "calls": int(count)} for name, (ms, count) in top[:15]],
    }


# ----- micro-benchmarks ---------------------------------------------------------------------


def micro(bench: Bench, caption_len: int, vae_variants: bool = False) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from llm_dit.accel import quantize_rowwise

    out: dict = {}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: a @ b, repeat=10, warmup=3)
    out["matmul_8192_bf16_tflops"] = round(2 * 8192**3 / ms / 1e9, 1)
    del a, b

    length = 4096 + caption_len + (-caption_len) % 32
    heads, head_dim = 30, 128
    q, k, v = (torch.randn(1, heads, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * length**2 * heads * head_dim
    attention = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                ms = cuda_ms(lambda: sdpa(q, k, v), repeat=10, warmup=2)
            attention[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
        except Exception as error:  # noqa: BLE001
            attention[name] = f"{type(error).__name__}: {str(error)[:200]}"
    # A CFG-like batch: second item 32 keys shorter, key-padding mask.
    q2, k2, v2 = (torch.cat([t, t]) for t in (q, k, v))
    mask = torch.ones(2, 1, 1, length, dtype=torch.bool, device="cuda")
    mask[1, ..., length - 32:] = False
    for name, backend in (("cudnn_masked_b2", SDPBackend.CUDNN_ATTENTION), ("efficient_masked_b2", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                ms = cuda_ms(lambda: sdpa(q2, k2, v2, attn_mask=mask), repeat=5, warmup=2)
            attention[name] = {"ms": round(ms, 3), "tflops": round(2 * flops / ms / 1e9, 1)}
        except Exception as error:  # noqa: BLE001
            attention[name] = f"{type(error).__name__}: {str(error)[:200]}"
    try:  # the kernel SDPA picks on its own for these inputs (what diffusers' default "native" backend gets)
        attention["sdpa_default_choice"] = SDPBackend(int(torch._fused_sdp_choice(q, k, v))).name
    except Exception as error:  # noqa: BLE001
        attention["sdpa_default_choice"] = f"{type(error).__name__}: {str(error)[:200]}"
    # The layouts inside the DiT: q, k [B, L, H, D] from the RoPE kernel, v a view of the fused q/k/v product.
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from llm_dit.accel import attention_blhd

    packed = torch.randn(1, length, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    qb, kb, vb = packed[:, :, 0].contiguous(), packed[:, :, 1].contiguous(), packed[:, :, 2]
    variants = {
        "cudnn_direct_blhd_views": lambda: attention_blhd(qb, kb, vb, None, backend="_native_cudnn").flatten(2, 3),
        "cudnn_diffusers_dispatch_blhd": lambda: dispatch_attention_fn(qb, kb, vb, backend="_native_cudnn").flatten(2, 3),
    }
    for name, fn in variants.items():
        try:
            ms = cuda_ms(fn, repeat=10, warmup=2)
            attention[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
        except Exception as error:  # noqa: BLE001
            attention[name] = f"{type(error).__name__}: {str(error)[:200]}"
    out["attention_b1"] = attention
    del q, k, v, q2, k2, v2, packed, qb, kb, vb

    gemms = {}
    for k_dim, n_dim in ((3840, 3840), (3840, 11520), (3840, 10240), (3840, 20480), (10240, 3840)):
        x = torch.randn(length, k_dim, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n_dim, k_dim, device="cuda", dtype=torch.bfloat16) * 0.02
        flop = 2 * length * k_dim * n_dim
        row = {"bf16_tflops": round(flop / cuda_ms(lambda: x @ w.t(), repeat=10, warmup=3) / 1e9, 1)}
        xq, xs = quantize_rowwise(x)
        wq, ws = quantize_rowwise(w)
        ws = ws.reshape(1, -1).contiguous()
        for fast in (True, False):
            try:
                fn = lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16, use_fast_accum=fast)  # noqa: E731
                row[f"fp8_rowwise{'_fastacc' if fast else ''}_tflops"] = round(flop / cuda_ms(fn, repeat=10, warmup=3) / 1e9, 1)
            except Exception as error:  # noqa: BLE001
                row[f"fp8_rowwise{'_fastacc' if fast else ''}"] = f"{type(error).__name__}: {str(error)[:200]}"
        gemms[f"M{length}_K{k_dim}_N{n_dim}"] = row
    out["gemm"] = gemms
    if not vae_variants:  # measured in v1 (benchmarks/NOTES.md): --vae-variants repeats it
        return out

    vae = bench.vae
    latent = torch.randn(1, 16, SIZE // 8, SIZE // 8, device="cuda", dtype=torch.bfloat16)
    decode = lambda: vae.decode(latent, return_dict=False)  # noqa: E731
    variants = {}
    with torch.no_grad():
        variants["default"] = cuda_ms(decode, repeat=3)
        torch.backends.cudnn.benchmark = True
        variants["cudnn_benchmark"] = cuda_ms(decode, repeat=3, warmup=2)
        vae.to(memory_format=torch.channels_last)
        variants["channels_last_cudnn_benchmark"] = cuda_ms(decode, repeat=3, warmup=2)
        vae.to(memory_format=torch.contiguous_format)
        torch.backends.cudnn.benchmark = False
    out["vae_decode_ms_variants"] = {k: round(v, 1) for k, v in variants.items()}
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def block_check(transformer, caption_len: int) -> dict:
    """One full-size main block on random inputs: diffusers' processor (its default SDPA) and llm-dit's
    (fused q/k/v and w1/w3, direct cuDNN, real RoPE), both bf16, against the block in float32."""
    from torch import nn

    from llm_dit.accel import attention_blhd, install_fused_projections, install_real_rope, is_fused

    block = transformer.layers[0]
    device, dim = transformer.device, transformer.config.dim
    length = 4096 + caption_len + (-caption_len) % 32
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, length, dim, device=device, dtype=torch.bfloat16, generator=generator)
    half = dim // transformer.config.n_heads // 2
    freqs = torch.polar(torch.ones(1, length, half, device=device),
                        torch.randn(1, length, half, device=device, generator=generator) * 3)
    adaln = torch.randn(1, min(dim, 256), device=device, dtype=torch.bfloat16, generator=generator)
    out: dict = {}
    with torch.no_grad():
        reference = copy.deepcopy(block).float()(x.float(), None, freqs, adaln.float())
        theirs = block(x, None, freqs, adaln)
        holder = nn.Module()
        holder.layers = nn.ModuleList([copy.deepcopy(block)])
        install_real_rope(holder, ("layers",))
        install_fused_projections(holder, ("layers",))
        holder.layers[0].attention.processor._attention_backend = "_native_cudnn"
        ours = holder.layers[0](x, None, freqs, adaln)
        out["block_rel_error_vs_fp32"] = {"diffusers_bf16": round(relative_error(theirs, reference), 5),
                                          "llm_dit_bf16": round(relative_error(ours, reference), 5),
                                          "llm_dit_vs_diffusers": round(relative_error(ours, theirs), 5)}
        out["fused"] = is_fused(holder.layers[0].attention) and is_fused(holder.layers[0].feed_forward)
        packed = torch.randn(1, length, 3, transformer.config.n_heads, 2 * half, device=device, dtype=torch.bfloat16,
                             generator=generator)
        q, k, v = packed[:, :, 0].contiguous(), packed[:, :, 1].contiguous(), packed[:, :, 2]
        direct = attention_blhd(q, k, v, None, backend="_native_cudnn")
        exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
        out["cudnn_direct_rel_error_vs_fp32"] = round(relative_error(direct, exact), 5)
        out["finite"] = bool(torch.isfinite(ours).all() and torch.isfinite(direct).all())
    del holder, reference
    torch.cuda.empty_cache()
    return out


def set_variant(transformer, fuse, direct_cudnn: bool) -> None:
    """Switch llm-dit's compiled path between v1 and v2 pieces (the next call recompiles)."""
    from llm_dit.accel import install_fused_projections, remove_fused_projections

    remove_fused_projections(transformer)
    if fuse:
        install_fused_projections(transformer, qkv=fuse in (True, "qkv"), ffn=fuse in (True, "ffn"))
    for target in ("layers", "noise_refiner"):
        for block in getattr(transformer, target):
            block.attention.processor.direct_cudnn = direct_cudnn


# ----- the two paths ---------------------------------------------------------------------------


def make_item(prompt: str, seed: int, condition: str = "bench", shift: float = 3.0, guidance: float = 0.0):
    from llm_dit.encoding.options import EncodingOptions
    from llm_dit.sampling.settings import SamplerSettings
    from llm_dit.study import StudyItem

    return StudyItem(
        item_id=f"{condition}/s{seed}", study="bench", condition=condition, condition_index=0, prompt_index=0,
        prompt=prompt, original_prompt=prompt, prompt_type=None, seed=seed, encoding=EncodingOptions(),
        sampler=SamplerSettings(steps=STEPS, shift=shift, guidance_scale=guidance, height=SIZE, width=SIZE),
    )


def study_batches(batch_size: int = 4):
    from llm_dit.data import group_into_batches
    from llm_dit.study import ConditionSpec, Study

    conditions = [ConditionSpec(name="control")] + [
        ConditionSpec(name=f"shift={s}", sampler={"shift": s}) for s in STUDY_SHIFTS[1:]
    ]
    study = Study(name="bench", prompts=list(STUDY_PROMPTS), seeds=list(STUDY_SEEDS), conditions=conditions,
                  sampler={"steps": STEPS, "shift": STUDY_SHIFTS[0], "height": SIZE, "width": SIZE})
    items = study.items()
    return items, group_into_batches(items, batch_size)


class Ours:
    """llm-dit's predict path: ZImageModule.generate on study items."""

    def __init__(self, module) -> None:
        self.module = module

    def run(self, items, fresh_prompt: bool = True) -> torch.Tensor:
        if fresh_prompt:
            self.module.embedding_cache.clear()
        return self.module.generate(items)[0]

    def batch(self, n: int, guidance: float = 0.0, prompt: str = PROMPT, seed0: int = 42):
        return [make_item(prompt, seed0 + i, guidance=guidance) for i in range(n)]


class Diffusers:
    def __init__(self, components) -> None:
        from diffusers import ZImagePipeline

        self.components = components
        self.pipe = ZImagePipeline(scheduler=self.scheduler(3.0), vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, transformer=components.transformer)
        self.pipe.set_progress_bar_config(disable=True)

    def scheduler(self, shift: float):
        base = self.components.scheduler
        return base.__class__.from_config(base.config, shift=shift)

    def run(self, n: int = 1, guidance: float = 0.0, prompt: str = PROMPT, seed0: int = 42, shift: float | None = None):
        if shift is not None:
            self.pipe.scheduler = self.scheduler(shift)
        generators = [torch.Generator().manual_seed(seed0 + i) for i in range(n)]
        images = self.pipe([prompt] * n, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                           generator=generators if n > 1 else generators[0], output_type="pt").images
        return images.float().cpu()


def vae_latent(vae, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 16, SIZE // 8, SIZE // 8, generator=generator).to(vae.device, vae.dtype)


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((vae.decode(latent, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)).cpu()


def dit_forward(transformer, caption: torch.Tensor, batch: int = 1):
    device, dtype = transformer.device, transformer.dtype
    latents = [torch.randn(16, 1, SIZE // 8, SIZE // 8, device=device, dtype=dtype) for _ in range(batch)]
    t = torch.full((batch,), 0.5, device=device)
    captions = [caption] * batch

    def call():
        with torch.no_grad():
            return transformer(latents, t, captions, return_dict=False)[0]

    return call


def timed_runs(fn, repeat: int) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = wall(fn, repeat)
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    return {"s": [round(t, 4) for t in times], "median_s": round(median(times), 4), "peak_gib": round(peak, 2)}


# ----- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    parser.add_argument("--budget", type=float, default=560.0, help="seconds; later sections are skipped past it")
    parser.add_argument("--attention", default="auto", help="llm-dit's backend; 'auto' = fastest unmasked kernel measured in micro")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run of every section on the tiny model (checks the script)")
    parser.add_argument("--skip", nargs="*", default=[], help="section names to leave out (e.g. a partial re-run)")
    parser.add_argument("--sections", nargs="*", default=None, help="run only these sections (build always runs)")
    parser.add_argument("--vae-variants", action="store_true", help="micro: also time VAE decode variants (v1 did)")
    parser.add_argument("--fuse", choices=["none", "qkv", "ffn", "all"], default=None,
                        help="llm-dit's fused projections (default: the library's default, off since v2)")
    args = parser.parse_args()
    global SIZE, COMPILE_BACKEND
    if args.smoke:
        SIZE, COMPILE_BACKEND = SMOKE["size"], SMOKE["compile_backend"]
    only = None if args.sections is None else set(args.sections) | {"build", "switch_to_ours"}
    bench = Bench(Path(args.out), args.budget, set(args.skip), only)
    r = bench.results
    cuda = torch.cuda.is_available()

    import diffusers
    import transformers

    from llm_dit.accel import (
        accelerate,
        compile_text_encoder,
        compile_vae_decoder,
        configure_dynamo,
        convert_to_fp8,
        fused_bytes,
        uncompile_blocks,
    )
    from llm_dit.accel.refiner_cache import cache_context_refiner
    from llm_dit.models.placement import free_text_encoder
    from llm_dit.module import ZImageModule

    configure_dynamo()
    r["env"] = {"gpu": torch.cuda.get_device_name() if cuda else "cpu (smoke)", "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "size": SIZE, "steps": STEPS, "cfg_guidance": GUIDANCE,
                "cudnn": torch.backends.cudnn.version() if cuda else None}
    print(r["env"], flush=True)

    if bench.ready("build", needs=0):
        with bench.section("build"):
            began = time.perf_counter()
            weights, dtype = (SMOKE["weights"], SMOKE["dtype"]) if args.smoke else ("random-z-image-turbo", "bfloat16")
            module = ZImageModule(weights=weights, dtype=dtype)
            module.configure_model()
            sync()
            r["build_s"] = round(time.perf_counter() - began, 1)
            r["components"] = module.components.describe()
    components = module.components
    transformer = components.transformer
    ours, theirs = Ours(module), Diffusers(components)
    caption = module.encoder.encode([PROMPT])[0].embeddings.to(transformer.device, transformer.dtype)
    caption_len = caption.shape[0]
    flop_b1 = dit_tflop(transformer.config, SIZE, SIZE, caption_len)
    r["dit_tflop_per_forward"] = round(flop_b1, 2)
    r["caption_tokens"] = caption_len
    direct_cudnn = True  # llm-dit calls cuDNN attention itself, unless the check below fails
    profiles = r.setdefault("profiles", {})

    if bench.ready("micro", needs=0 if cuda else math.inf):
        with bench.section("micro"):
            bench.vae = components.vae
            r["micro"] = micro(bench, caption_len, vae_variants=args.vae_variants)
            print(json.dumps(r["micro"], indent=1), flush=True)

    if bench.ready("checks", needs=0 if cuda else math.inf):
        with bench.section("checks"):
            try:
                r["checks"] = block_check(transformer, caption_len)
                direct_cudnn = r["checks"]["finite"]
            except Exception:
                direct_cudnn = False
                raise
            finally:
                r.setdefault("checks", {})["direct_cudnn_used"] = direct_cudnn
                print(json.dumps(r.get("checks"), indent=1), flush=True)

    d, o = r.setdefault("diffusers", {}), r.setdefault("ours", {})
    reference = {}
    fuse = {None: None, "none": False, "qkv": "qkv", "ffn": "ffn", "all": True}[args.fuse]

    if bench.ready("diffusers_eager", needs=0):
        with bench.section("diffusers_eager"):
            wall(lambda: theirs.run(1), 1)  # warm-up: cuBLAS/cuDNN handles, allocator
            reference["b1"] = theirs.run(1)
            d["eager_b1"] = timed_runs(lambda: theirs.run(1), 2)
            d["eager_b4"] = timed_runs(lambda: theirs.run(4), 1)
            d["eager_b4"]["per_image_s"] = round(d["eager_b4"]["median_s"] / 4, 4)
            d["eager_cfg"] = timed_runs(lambda: theirs.run(1, guidance=GUIDANCE), 1)
            pipe = theirs.pipe
            d["encoder_ms_padded512"] = round(cuda_ms(lambda: pipe.encode_prompt(PROMPT, device=transformer.device, do_classifier_free_guidance=False)), 2)
            latent = torch.randn(1, 16, SIZE // 8, SIZE // 8, device=components.vae.device, dtype=components.vae.dtype)
            with torch.no_grad():
                d["vae_decode_ms"] = round(cuda_ms(lambda: components.vae.decode(latent, return_dict=False), repeat=3), 1)
            d["dit_forward_eager_ms"] = round(cuda_ms(dit_forward(transformer, caption), repeat=3), 1)
            d["dit_forward_eager_tflops"] = round(flop_b1 / d["dit_forward_eager_ms"] * 1e3, 1)

    if bench.ready("diffusers_compiled", needs=120):
        with bench.section("diffusers_compiled"):
            graphs_before = graphs()
            transformer.compile_repeated_blocks(fullgraph=True, backend=COMPILE_BACKEND)
            d["compiled_first_call_s"] = round(wall(lambda: theirs.run(1), 1)[0], 1)
            d["compiled_b1"] = timed_runs(lambda: theirs.run(1), 2)
            d["dit_forward_compiled_ms"], d["dit_forward_gpu"] = timed_forward(dit_forward(transformer, caption))
            d["dit_forward_compiled_tflops"] = round(flop_b1 / d["dit_forward_compiled_ms"] * 1e3, 1)
            d["compiled_graphs"] = graphs() - graphs_before

    if bench.ready("diffusers_compiled_study", needs=90):
        with bench.section("diffusers_compiled_study"):
            graphs_before, done = graphs(), 0
            sync()
            began = time.perf_counter()
            for shift in STUDY_SHIFTS:
                for prompt in STUDY_PROMPTS:
                    for seed in STUDY_SEEDS:
                        if bench.left() < 60:
                            break
                        theirs.run(1, prompt=prompt, seed0=seed, shift=shift)
                        done += 1
            sync()
            seconds = time.perf_counter() - began
            d["study"] = {"images": done, "complete": done == 64, "seconds": round(seconds, 1),
                          "images_per_hour": round(done / seconds * 3600), "recompiled_graphs": graphs() - graphs_before}
            theirs.pipe.scheduler = theirs.scheduler(3.0)

    # Profiles come last in each path's turn: nothing timed runs after the profiler has been on.
    if "dit_forward_compiled_ms" in d and bench.ready("diffusers_profile", needs=0 if cuda else math.inf):
        with bench.section("diffusers_profile"):
            profiles["diffusers_compiled"] = profile_forward(dit_forward(transformer, caption), bench.out / "profile_diffusers.txt",
                                                             "diffusers compile_repeated_blocks")

    if bench.ready("switch_to_ours", needs=0):
        with bench.section("switch_to_ours"):
            uncompile_blocks(transformer)
            torch._dynamo.reset()
            backend = args.attention
            if backend == "auto":  # fastest kernel without a mask: length grouping means ours never needs one
                names = {"flash": "_native_flash", "cudnn": "_native_cudnn", "efficient": "_native_efficient"}
                timings = {k: v["ms"] for k, v in r.get("micro", {}).get("attention_b1", {}).items()
                           if k in names and isinstance(v, dict)}
                backend = names[min(timings, key=timings.get)] if timings else ("_native_cudnn" if cuda else "native")
            o["attention_backend"] = backend
            o["direct_cudnn"] = direct_cudnn and backend == "_native_cudnn"

    def ours_processors(direct: bool) -> None:
        for target in ("layers", "noise_refiner"):
            for block in getattr(transformer, target):
                if hasattr(block.attention.processor, "direct_cudnn"):
                    block.attention.processor.direct_cudnn = direct

    if bench.ready("ours_eager", needs=0):
        with bench.section("ours_eager"):
            accelerate(transformer, compile=False, attention_backend=backend)
            wall(lambda: ours.run(ours.batch(1)), 1)
            o["eager_b1"] = timed_runs(lambda: ours.run(ours.batch(1)), 2)
            o["dit_forward_eager_ms"] = round(cuda_ms(dit_forward(transformer, caption), repeat=3), 1)
            o["encoder_ms_unpadded_eager"] = round(cuda_ms(lambda: module.encoder.encode([PROMPT])), 2)
            reference["caption"] = module.encoder.encode([PROMPT])[0].embeddings
            reference["vae_latent"] = vae_latent(components.vae, 4)
            reference["vae"] = decode(components.vae, reference["vae_latent"])
            if "b1" in reference:
                o["parity_eager_vs_diffusers_eager"] = image_difference(ours.run(ours.batch(1)), reference["b1"])

    if bench.ready("ours_compiled", needs=90):
        with bench.section("ours_compiled"):
            graphs_before = graphs()
            acc = accelerate(transformer, compile=True, attention_backend=backend, compile_backend=COMPILE_BACKEND,
                             fuse_projections=fuse)
            ours_processors(direct_cudnn)
            o["acceleration"] = acc.to_dict()
            o["compiled_parts"] = {"dit": acc.compiled_blocks, "encoder_layers": compile_text_encoder(components.text_encoder,
                                   backend=COMPILE_BACKEND), "vae_decoder": compile_vae_decoder(components.vae, backend=COMPILE_BACKEND)}
            o["compile_first_calls_s"] = round(sum(wall(lambda: ours.run(ours.batch(1)), 1) + wall(lambda: ours.run(ours.batch(4)), 1)), 1)
            o["fused_weight_copies_gib"] = round(fused_bytes(transformer) / GIB, 2)
            reference["ours_b1"] = ours.run(ours.batch(1))
            o["compiled_b1"] = timed_runs(lambda: ours.run(ours.batch(1)), 3)
            o["compiled_b1_cached_embedding"] = timed_runs(lambda: ours.run(ours.batch(1), fresh_prompt=False), 2)
            o["compiled_b4"] = timed_runs(lambda: ours.run(ours.batch(4)), 2)
            o["compiled_b4"]["per_image_s"] = round(o["compiled_b4"]["median_s"] / 4, 4)
            o["compiled_cfg"] = timed_runs(lambda: ours.run(ours.batch(1, guidance=GUIDANCE)), 2)
            o["encoder_ms_unpadded"] = round(cuda_ms(lambda: module.encoder.encode([PROMPT])), 2)
            latent = reference.get("vae_latent", vae_latent(components.vae, 4))
            o["vae_decode_compiled_ms"] = round(cuda_ms(lambda: decode(components.vae, latent[:1]), repeat=3), 1)
            o["vae_decode_compiled_b4_ms_per_image"] = round(cuda_ms(lambda: decode(components.vae, latent), repeat=2) / 4, 1)
            if "vae" in reference:
                o["vae_compiled_vs_eager"] = image_difference(decode(components.vae, latent), reference["vae"])
            if "caption" in reference:
                o["encoder_compiled_vs_eager_rel"] = round(relative_error(module.encoder.encode([PROMPT])[0].embeddings,
                                                                          reference["caption"]), 5)
            with cache_context_refiner(transformer):
                o["dit_forward_compiled_ms"], o["dit_forward_gpu"] = timed_forward(dit_forward(transformer, caption))
                o["dit_forward_compiled_b4_ms"] = round(cuda_ms(dit_forward(transformer, caption, 4), repeat=3), 1)
            o["dit_forward_compiled_tflops"] = round(flop_b1 / o["dit_forward_compiled_ms"] * 1e3, 1)
            o["dit_forward_compiled_b4_tflops"] = round(4 * flop_b1 / o["dit_forward_compiled_b4_ms"] * 1e3, 1)
            if "b1" in reference:
                o["parity_compiled_vs_diffusers_eager"] = image_difference(reference["ours_b1"], reference["b1"])
            o["compiled_graphs"] = graphs() - graphs_before

    if "compiled_b1" in o and bench.ready("refiner_cache_ab", needs=20):
        with bench.section("refiner_cache_ab"):
            module.speed_settings.cache_refiner = False
            try:
                o["compiled_b1_refiner_uncached"] = timed_runs(lambda: ours.run(ours.batch(1)), 3)
            finally:
                module.speed_settings.cache_refiner = True

    if bench.ready("ours_study", needs=70):
        with bench.section("ours_study"):
            items, batches = study_batches(4)
            module.embedding_cache.clear()
            step_cache = module.plan_shared_steps(items)  # what predict's on_predict_start does
            graphs_before, done = graphs(), 0
            sync()
            began = time.perf_counter()
            for batch in batches:
                if bench.left() < 45:
                    break
                module.generate(batch)
                done += len(batch)
            sync()
            seconds = time.perf_counter() - began
            o["study"] = {"images": done, "complete": done == len(items), "seconds": round(seconds, 1),
                          "images_per_hour": round(done / seconds * 3600), "recompiled_graphs": graphs() - graphs_before,
                          "batch_size": 4, "shared_step_batches": step_cache.hits if step_cache else 0}
            module.step_cache = None

    if bench.ready("fp8", needs=60):
        with bench.section("fp8"):
            graphs_before = graphs()
            restore = convert_to_fp8(transformer, keep_originals=True)
            try:
                f = r.setdefault("fp8", {})
                f["first_call_s"] = round(wall(lambda: ours.run(ours.batch(1)), 1)[0], 1)
                image = ours.run(ours.batch(1))
                f["b1"] = timed_runs(lambda: ours.run(ours.batch(1)), 3)
                f["fused_weight_copies_gib"] = round(fused_bytes(transformer) / GIB, 2)
                with cache_context_refiner(transformer):
                    f["dit_forward_ms"], f["dit_forward_gpu"] = timed_forward(dit_forward(transformer, caption))
                f["dit_forward_bf16_equivalent_tflops"] = round(flop_b1 / f["dit_forward_ms"] * 1e3, 1)
                if "ours_b1" in reference:
                    f["difference_to_bf16"] = image_difference(image, reference["ours_b1"])
                f["graphs"] = graphs() - graphs_before
            finally:
                restore()

    if bench.ready("ablation", needs=60):
        with bench.section("ablation"):
            # Compiled bf16 DiT forward (b1, refiner cached) per variant; each is a recompile on the same card.
            variants = [("v1: dispatcher cuDNN (copies), separate GEMMs", False, False),
                        ("direct cuDNN, separate GEMMs", False, True),
                        ("direct cuDNN + fused q/k/v", "qkv", True),
                        ("direct cuDNN + fused q/k/v + w1/w3", True, True)]
            a = r.setdefault("ablation", {})
            if "acceleration" not in o:
                accelerate(transformer, compile=True, attention_backend=backend, compile_backend=COMPILE_BACKEND,
                           fuse_projections=fuse)
            for name, fuse, direct in variants:
                if bench.left() < 45:
                    r["skipped"].append(f"ablation {name} ({bench.left():.0f}s left)")
                    continue
                set_variant(transformer, fuse, direct and direct_cudnn)
                graphs_before = graphs()
                with cache_context_refiner(transformer):
                    first = wall(dit_forward(transformer, caption), 1)[0]
                    ms, gpu = timed_forward(dit_forward(transformer, caption))
                a[name] = {"ms": ms, "tflops": round(flop_b1 / ms * 1e3, 1), "first_call_s": round(first, 1),
                           "new_graphs": graphs() - graphs_before, "gpu": gpu}
                print(f"  ablation {name}: {ms} ms", flush=True)
            set_variant(transformer, fuse or False, direct_cudnn)  # back to what the other sections measured

    if bench.ready("memory_free_encoder", needs=20):
        with bench.section("memory_free_encoder"):
            items, batches = study_batches(4)
            module.embedding_cache.clear()
            module.pre_encode(items)
            free_text_encoder(components)
            peaks = [module.generate(batch)[4] or 0 for batch in batches[:2]]
            allocated = torch.cuda.memory_allocated() if cuda else 0
            r["memory"] = {"study_batch4_peak_allocated_gib_encoder_freed": round(max(peaks) / GIB, 2),
                           "allocated_after_gib": round(allocated / GIB, 2),
                           "fused_weight_copies_gib": round(fused_bytes(transformer) / GIB, 2)}

    if "acceleration" in o and bench.ready("ours_profile", needs=0 if cuda else math.inf):
        with bench.section("ours_profile"), cache_context_refiner(transformer):
            profiles["ours_compiled"] = profile_forward(dit_forward(transformer, caption), bench.out / "profile_ours.txt",
                                                        "llm-dit compiled (v3)", trace=bench.out / "trace_ours.json.gz")

    if "dit_forward_ms" in r.get("fp8", {}) and bench.ready("fp8_profile", needs=0 if cuda else math.inf):
        with bench.section("fp8_profile"):
            restore = convert_to_fp8(transformer, keep_originals=True)
            try:
                with cache_context_refiner(transformer):
                    profiles["fp8"] = profile_forward(dit_forward(transformer, caption), bench.out / "profile_fp8.txt",
                                                      "llm-dit compiled fp8 (v3)")
            finally:
                restore()

    if "compiled_b1" in o and bench.ready("image_profile", needs=0 if cuda else math.inf):
        with bench.section("image_profile"):
            # A study prompt: its embedding is cached even after the memory section freed the encoder.
            image = ours.batch(1, prompt=STUDY_PROMPTS[0])
            profiles["ours_image_b1"] = profile_forward(lambda: ours.run(image, fresh_prompt=False), bench.out / "profile_image_b1.txt",
                                                        "llm-dit compiled, one whole b1 image", trace=bench.out / "trace_image_b1.json.gz")

    if "vae_decode_compiled_ms" in o and bench.ready("vae_profile", needs=0 if cuda else math.inf):
        with bench.section("vae_profile"):
            latent = vae_latent(components.vae, 1)
            profiles["vae_compiled"] = profile_forward(lambda: decode(components.vae, latent), bench.out / "profile_vae.txt",
                                                       "VAE decode b1 compiled")

    summarize(bench)


def ratio(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return "-"
    return f"{theirs / ours:.2f}x"


def profile_line(profile: dict | None) -> str:
    if not profile:
        return "-"
    parts = [f"{name.split(' ')[0]} {v['ms']:.1f}" for name, v in profile["categories"].items()]
    return f"{profile['kernel_ms']:.1f} ms of kernels ({', '.join(parts)})"


def summarize(bench: Bench) -> None:
    r = bench.results
    d, o, f = r.get("diffusers", {}), r.get("ours", {}), r.get("fp8", {})
    get = lambda section, key, field="median_s": (section.get(key) or {}).get(field)  # noqa: E731
    rows = [
        ("s/image b1 (eager diffusers / llm-dit eager)", get(d, "eager_b1"), get(o, "eager_b1")),
        ("s/image b1 (diffusers compiled / llm-dit compiled)", get(d, "compiled_b1"), get(o, "compiled_b1")),
        ("s/image b1 vs diffusers EAGER", get(d, "eager_b1"), get(o, "compiled_b1")),
        ("s/image b4 (vs diffusers eager b4)", get(d, "eager_b4", "per_image_s"), get(o, "compiled_b4", "per_image_s")),
        ("s/image CFG 4 (vs diffusers eager CFG)", get(d, "eager_cfg"), get(o, "compiled_cfg")),
        ("encoder ms (padded 512 / unpadded, compiled)", d.get("encoder_ms_padded512"), o.get("encoder_ms_unpadded")),
        ("VAE decode ms b1 (eager / compiled)", d.get("vae_decode_ms"), o.get("vae_decode_compiled_ms")),
        ("DiT forward ms (diffusers compiled / ours)", d.get("dit_forward_compiled_ms"), o.get("dit_forward_compiled_ms")),
        ("DiT forward ms (diffusers eager / ours)", d.get("dit_forward_eager_ms"), o.get("dit_forward_compiled_ms")),
        ("peak GiB b1 (diffusers eager / ours)", get(d, "eager_b1", "peak_gib"), get(o, "compiled_b1", "peak_gib")),
        ("fp8 s/image b1 (vs diffusers compiled)", get(d, "compiled_b1"), get(f, "b1")),
        ("fp8 DiT forward ms (vs diffusers compiled)", d.get("dit_forward_compiled_ms"), f.get("dit_forward_ms")),
    ]
    ds, os_ = d.get("study", {}), o.get("study", {})
    lines = [f"card: {r['env']['gpu']} | torch {r['env']['torch']} | diffusers {r['env']['diffusers']} | "
             f"{SIZE}x{SIZE}, {STEPS} steps, random bf16 weights", "",
             f"| {'what':52} | {'diffusers':>10} | {'llm-dit':>10} | {'speed-up':>8} |", f"|{'-' * 54}|{'-' * 12}|{'-' * 12}|{'-' * 10}|"]
    for name, a, b in rows:
        fmt = lambda v: "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")  # noqa: E731
        lines.append(f"| {name:52} | {fmt(a):>10} | {fmt(b):>10} | {ratio(a, b):>8} |")
    if ds or os_:
        lines.append(f"| {'study 4x4x4 images/hour (diffusers compiled loop)':52} | {ds.get('images_per_hour', '-'):>10} | "
                     f"{os_.get('images_per_hour', '-'):>10} | {ratio(os_.get('images_per_hour'), ds.get('images_per_hour')):>8} |")
    lines.append("")
    lines.append(f"DiT TFLOP/s (of {r.get('dit_tflop_per_forward')} TFLOP/forward): diffusers eager "
                 f"{d.get('dit_forward_eager_tflops')}, diffusers compiled {d.get('dit_forward_compiled_tflops')}, "
                 f"llm-dit {o.get('dit_forward_compiled_tflops')} (b4 {o.get('dit_forward_compiled_b4_tflops')}), "
                 f"fp8 {f.get('dit_forward_bf16_equivalent_tflops')} bf16-equivalent; matmul ceiling "
                 f"{r.get('micro', {}).get('matmul_8192_bf16_tflops')}")
    lines.append(f"SM clock / power during the DiT timing: diffusers compiled {d.get('dit_forward_gpu')}; llm-dit {o.get('dit_forward_gpu')}; "
                 f"fp8 {f.get('dit_forward_gpu')}")
    profiles = r.get("profiles", {})
    lines.append(f"profile diffusers compiled: {profile_line(profiles.get('diffusers_compiled'))}; attention kernels "
                 f"{[k[:60] for k in (profiles.get('diffusers_compiled') or {}).get('attention_kernels', [])]}")
    lines.append(f"profile llm-dit compiled:   {profile_line(profiles.get('ours_compiled'))}; attention kernels "
                 f"{[k[:60] for k in (profiles.get('ours_compiled') or {}).get('attention_kernels', [])]}")
    lines.append(f"profile llm-dit fp8:        {profile_line(profiles.get('fp8'))}")
    lines.append(f"profile VAE decode compiled: {profile_line(profiles.get('vae_compiled'))}")
    lines.append(f"profile one whole b1 image:  {profile_line(profiles.get('ours_image_b1'))}; b1 without the refiner cache: "
                 f"{(o.get('compiled_b1_refiner_uncached') or {}).get('median_s')} s")
    if r.get("ablation"):
        lines.append("ablation (compiled DiT forward ms): " + "; ".join(f"{k}: {v['ms']}" for k, v in r["ablation"].items()))
    lines.append(f"checks: {r.get('checks')}; fused weight copies: {o.get('fused_weight_copies_gib')} GiB bf16, "
                 f"{f.get('fused_weight_copies_gib')} GiB fp8; SDPA's own choice: "
                 f"{r.get('micro', {}).get('attention_b1', {}).get('sdpa_default_choice')}")
    lines.append(f"parity llm-dit compiled vs diffusers eager: {o.get('parity_compiled_vs_diffusers_eager')}; "
                 f"eager: {o.get('parity_eager_vs_diffusers_eager')}")
    lines.append(f"fp8 vs bf16 image: {f.get('difference_to_bf16')}; memory: {r.get('memory')}")
    lines.append(f"encoder unpadded eager {o.get('encoder_ms_unpadded_eager')} ms -> compiled {o.get('encoder_ms_unpadded')} ms "
                 f"(rel. diff {o.get('encoder_compiled_vs_eager_rel')}); VAE b4 compiled {o.get('vae_decode_compiled_b4_ms_per_image')} "
                 f"ms/image, compiled vs eager {o.get('vae_compiled_vs_eager')}; study batches served a shared step: "
                 f"{o.get('study', {}).get('shared_step_batches')}")
    lines.append(f"attention backend: {o.get('attention_backend')} (direct: {o.get('direct_cudnn')}); errors: {list(r['errors'])}; "
                 f"skipped: {r['skipped']}")
    table = "\n".join(lines)
    r["table"] = table
    bench.save()
    print("\n" + table, flush=True)


if __name__ == "__main__":
    main()
