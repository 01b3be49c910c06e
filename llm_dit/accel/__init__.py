"""Speed options for the Z-Image DiT, each numerically equivalent to the plain path except fp8.

    from llm_dit.accel import accelerate
    accelerate(transformer, compile=True, attention_backend="auto")       # bf16, same images
    accelerate(transformer, compile=True, attention_backend="auto", fp8=True)  # opt-in, H100/H200

- length grouping: mixed caption lengths run as unmasked sub-batches (`grouping`);
- RoPE in real float32 arithmetic, so compile fuses it (`attention`);
- attention backend: cuDNN on Hopper, called directly without copies (`attention`);
- q/k RMSNorm + RoPE as one Triton kernel on CUDA (`qk_kernel`);
- opt-in: q/k/v and SwiGLU w1/w3 as one GEMM each, on cached concatenated weights
  (`fused`; measured no faster at full size, for a second copy of those weights: benchmarks/NOTES.md, v2);
- regional compile, shape-generic, no recompiles across prompts (`compile`);
- fp8 row-wise scaled linears (`fp8`), opt-in, changes images slightly.

`ZImageModule(compile=..., attention_backend=..., fp8=...)` calls `accelerate`
in `configure_model`, and with `compile` also compiles the text encoder's layers
(`compile_text_encoder`: launch-bound at batch 1) and the VAE decoder
(`compile_vae_decoder`: bandwidth-bound GroupNorm/SiLU passes in eager). Other cuts live where the work is: unpadded encoding that
stops at the deepest needed layer (encoding/encoder.py), the context-refiner
cache (`refiner_cache`), the embedding cache and seed batching (module.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import nn

from surgery.hooks import HookRegistry

from llm_dit.accel.attention import (
    MASKED_BACKENDS,
    UNMASKED_BACKENDS,
    ZImageRealRopeProcessor,
    apply_rotary_real,
    attention_blhd,
    install_real_rope,
    resolve_backend,
    set_attention_backend,
)
from llm_dit.accel.compile import (
    COMPILE_PARTS,
    compile_blocks,
    compile_parts,
    compile_text_encoder,
    compile_vae_decoder,
    configure_dynamo,
    is_compiled,
    uncompile_blocks,
)
from llm_dit.accel.fp8 import (
    Float8Linear,
    convert_to_fp8,
    dequantize_rowwise,
    fp8_linear,
    fp8_supported,
    quantize_rowwise,
)
from llm_dit.accel.fused import (
    fused_bytes,
    install_fused_projections,
    is_fused,
    refresh_fused,
    remove_fused_projections,
    sync_fused,
)
from llm_dit.accel.refiner_cache import CachedBlockList, cache_context_refiner
from llm_dit.accel.grouping import (
    has_length_grouping,
    install_length_grouping,
    length_groups,
    padded_caption_length,
    remove_length_grouping,
)


@dataclass(frozen=True)
class Acceleration:
    """What `accelerate` did, for logs and the benchmark's record.

    `registry` holds every change it made (they show in `surgery.live_hooks()`);
    `remove()` undoes them all (fp8 only with the bf16 weights kept: see `convert_to_fp8`).
    """

    compiled_blocks: int
    attention_backend: str | None
    length_grouping: bool
    real_rope: bool
    fp8: bool
    compile_mode: str | None
    fused_projections: int = 0
    qk_kernel: bool = False
    registry: HookRegistry | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "registry"}

    def remove(self) -> None:
        """Undo every speed option `accelerate` applied, newest first."""
        if self.registry is not None:
            self.registry.remove()


def accelerate(
    transformer: nn.Module,
    *,
    compile: bool = False,
    attention_backend: str | None = None,
    fp8: bool = False,
    fp8_fast_accum: bool = True,
    group_lengths: bool = True,
    real_rope: bool | None = None,
    fuse_projections: bool | str | None = None,
    qk_kernel: bool | None = None,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    fp8_keep_originals: bool = False,
) -> Acceleration:
    """Apply the speed options to `transformer` in place (call once, before generating).

    Every change goes through one `surgery.HookRegistry("accel")`, returned in the result:
    `surgery.live_hooks()` lists them and `result.remove()` (or `surgery.remove_all`)
    undoes them. fp8 drops the bf16 weights unless `fp8_keep_originals`.

    `real_rope` defaults to `compile`: it only pays when Inductor fuses it; eager, the
    complex product is fewer kernels (measured: benchmarks/NOTES.md).
    `fuse_projections` (True: q/k/v and w1/w3, "qkv" or "ffn": one of them; None/False:
    none) is off by default: the fused weights are a cached second copy and the compiled
    forward measured no faster with them (benchmarks/NOTES.md, v2 ablation).
    `qk_kernel` (default: with `compile`) runs q/k RMSNorm + RoPE as one Triton kernel on CUDA
    (`llm_dit.accel.qk_kernel`); elsewhere the processor keeps the separate operations.
    """
    qk_kernel = compile if qk_kernel is None else qk_kernel
    real_rope = compile if real_rope is None else real_rope
    fuse = False if fuse_projections is None else fuse_projections
    if fuse not in (True, False, "qkv", "ffn"):
        raise ValueError(f"fuse_projections must be True, False, 'qkv' or 'ffn'; got {fuse_projections!r}")
    fuse_qkv, fuse_ffn = fuse in (True, "qkv"), fuse in (True, "ffn")
    registry = HookRegistry("accel")
    keep = 0  # changes a failure leaves in place: fp8 without its bf16 weights cannot be undone
    try:
        if fp8:
            convert_to_fp8(transformer, fast_accum=fp8_fast_accum, keep_originals=fp8_keep_originals, registry=registry)
            keep = 0 if fp8_keep_originals else len(registry)
        if group_lengths:
            install_length_grouping(transformer, registry)
        if real_rope or fuse_qkv or qk_kernel:
            install_real_rope(transformer, real_rope=real_rope, qk_kernel=qk_kernel, registry=registry)
        fused = install_fused_projections(transformer, qkv=fuse_qkv, ffn=fuse_ffn, registry=registry) if fuse_qkv or fuse_ffn else 0
        backend = set_attention_backend(transformer, attention_backend, grouped=group_lengths, registry=registry)
        count = compile_blocks(transformer, mode=compile_mode, backend=compile_backend, registry=registry) if compile else 0
    except BaseException:
        registry.remove_after(keep)  # half-applied options leave nothing behind
        raise
    return Acceleration(count, backend, group_lengths, real_rope, fp8, compile_mode, fused, qk_kernel, registry)


__all__ = [
    "MASKED_BACKENDS",
    "UNMASKED_BACKENDS",
    "Acceleration",
    "CachedBlockList",
    "Float8Linear",
    "ZImageRealRopeProcessor",
    "accelerate",
    "apply_rotary_real",
    "attention_blhd",
    "cache_context_refiner",
    "COMPILE_PARTS",
    "compile_blocks",
    "compile_parts",
    "compile_text_encoder",
    "compile_vae_decoder",
    "configure_dynamo",
    "convert_to_fp8",
    "dequantize_rowwise",
    "fp8_linear",
    "fp8_supported",
    "fused_bytes",
    "install_fused_projections",
    "is_fused",
    "refresh_fused",
    "remove_fused_projections",
    "sync_fused",
    "has_length_grouping",
    "install_length_grouping",
    "install_real_rope",
    "is_compiled",
    "length_groups",
    "padded_caption_length",
    "quantize_rowwise",
    "remove_length_grouping",
    "resolve_backend",
    "set_attention_backend",
    "uncompile_blocks",
]
