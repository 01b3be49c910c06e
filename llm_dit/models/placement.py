"""Where each component lives and in what precision; freeing and offloading; OOM advice.

Z-Image-Turbo is ~8 GB of encoder (bf16), ~12 GB of DiT and a VAE whose decode
memory grows with the image. Studies run on anything from a laptop CPU to an
80 GB GPU, so placement is one explicit, validated dataclass rather than flags
spread over the code, and every move goes through `out_of_memory_advice` so an
OOM tells the user which knob to turn.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from llm_dit.models.components import ZImageComponents

COMPONENT_NAMES = ("text_encoder", "transformer", "vae")
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
_CANONICAL = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class OutOfMemoryAdviceError(torch.OutOfMemoryError):
    """An out-of-memory error that says which placement setting would avoid it.

    A subclass of torch.OutOfMemoryError, so code that already catches OOM still does.
    """


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bfloat16' / 'bf16' / torch.bfloat16 -> torch.bfloat16; None stays None (keep as loaded)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _CANONICAL:
            raise ValueError(f"dtype {dtype} is not supported; use one of float32, bfloat16, float16")
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[dtype]


def check_device(device: str | torch.device, what: str) -> str:
    """The device as a canonical string, or a ValueError saying why it can't be used here."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{what}={device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1', ...") from error
    if parsed.type == "meta":
        raise ValueError(f"{what}='meta' holds no weights; to drop the text encoder use free_text_encoder()")
    if parsed.type == "cuda":
        _check_cuda(parsed, what)
    elif parsed.type != "cpu":
        backend = getattr(torch, parsed.type, None) or getattr(torch.backends, parsed.type, None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{what}={device!r}: no {parsed.type} device is available on this machine; use 'cpu'")
    return str(parsed)


def _check_cuda(device: torch.device, what: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(
            f"{what}={str(device)!r} but no CUDA device is visible here; use 'cpu' or run on a GPU machine"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"{what}={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
        )


@dataclass
class Placement:
    """Device and dtype of each component, plus the memory-saving switches.

    Devices are validated when the placement is made, so a typo or a GPU
    placement on a CPU-only machine fails before any weights load.
    """

    text_encoder_device: str = "cpu"
    """Where Qwen3 runs; 'cpu' keeps its ~8 GB (bf16) off the GPU at the cost of slower encoding."""
    transformer_device: str = "cpu"
    """Where the DiT runs: it does nearly all the compute, so a GPU if there is one."""
    vae_device: str = "cpu"
    text_encoder_dtype: str | None = None
    """float32 / bfloat16 / float16, or None to keep the dtype the weights were loaded in."""
    transformer_dtype: str | None = None
    vae_dtype: str | None = None
    offload: bool = False
    """Keep components on the CPU and move each to its device only while it runs (`on_device`)."""
    vae_tiling: bool = False
    """Decode in tiles: memory stays flat for large images, with faint seams possible."""

    def __post_init__(self) -> None:
        for name in COMPONENT_NAMES:
            device_field, dtype_field = f"{name}_device", f"{name}_dtype"
            setattr(self, device_field, check_device(getattr(self, device_field), device_field))
            dtype = resolve_dtype(getattr(self, dtype_field))
            setattr(self, dtype_field, None if dtype is None else _CANONICAL[dtype])

    @classmethod
    def everything_on(cls, device: str, dtype: str | torch.dtype | None = None, **switches: bool) -> Placement:
        """All three components on one device, in one dtype."""
        name = None if resolve_dtype(dtype) is None else _CANONICAL[resolve_dtype(dtype)]
        return cls(device, device, device, name, name, name, **switches)

    def device_for(self, component: str) -> torch.device:
        return torch.device(getattr(self, f"{_check_name(component)}_device"))

    def dtype_for(self, component: str) -> torch.dtype | None:
        return resolve_dtype(getattr(self, f"{_check_name(component)}_dtype"))

    def home_for(self, component: str) -> torch.device:
        """Where the component waits between uses: the CPU when offloading, else its device."""
        return torch.device("cpu") if self.offload else self.device_for(component)


def _check_name(component: str) -> str:
    if component not in COMPONENT_NAMES:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENT_NAMES)}")
    return component


def apply_placement(components: ZImageComponents, placement: Placement) -> ZImageComponents:
    """Cast and move every component as `placement` says (in place); returns `components`."""
    for name, module in components.modules().items():
        if is_freed(module):
            continue
        with out_of_memory_advice(f"moving the {name} to {placement.home_for(name)}", placement):
            module.to(device=placement.home_for(name), dtype=placement.dtype_for(name))
    set_vae_tiling(components.vae, placement.vae_tiling)
    return components


def set_vae_tiling(vae: Any, enabled: bool) -> None:
    """Tiled decoding keeps VAE memory flat at 2048^2 and beyond (diffusers' own tiling)."""
    if enabled:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@contextmanager
def on_device(components: ZImageComponents, component: str, placement: Placement) -> Iterator[torch.nn.Module]:
    """Yield the component on its device; with `offload`, send it back to the CPU afterwards.

    Without offload this is a no-op, so callers can always wrap a stage in it.
    """
    module = getattr(components, _check_name(component))
    if not placement.offload or is_freed(module):
        yield module
        return
    with out_of_memory_advice(f"moving the {component} to {placement.device_for(component)}", placement):
        module.to(placement.device_for(component))
    try:
        yield module
    finally:
        module.to("cpu")
        release_cached_memory()


def free_text_encoder(components: ZImageComponents) -> None:
    """Drop the encoder's weights once every prompt is encoded (~8 GB for Qwen3-4B in bf16).

    The module stays (on the meta device) so code holding it keeps working until it
    tries to run it, which then fails with an error saying why.
    """
    encoder = components.text_encoder
    if is_freed(encoder):
        return
    encoder.to("meta")
    encoder.register_forward_pre_hook(_refuse_freed_forward)
    release_cached_memory()


def _refuse_freed_forward(module: torch.nn.Module, args: Any) -> None:
    raise RuntimeError(
        "the text encoder was freed by free_text_encoder(); encode every prompt before freeing it, "
        "or load the components again"
    )


def is_freed(module: torch.nn.Module) -> bool:
    return any(parameter.device.type == "meta" for parameter in module.parameters())


def release_cached_memory() -> None:
    """Return freed memory to the system: Python's garbage first, then the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def out_of_memory_advice(action: str, placement: Placement | None = None) -> Iterator[None]:
    """Re-raise an out-of-memory error (GPU or CPU) with what to change, for a user."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if isinstance(error, OutOfMemoryAdviceError):
            raise
        raise OutOfMemoryAdviceError(_oom_message(action, placement, error)) from error
    except (RuntimeError, MemoryError) as error:
        if isinstance(error, RuntimeError) and "can't allocate memory" not in str(error):
            raise
        raise OutOfMemoryAdviceError(_oom_message(action, placement, error)) from error


def _oom_message(action: str, placement: Placement | None, error: BaseException) -> str:
    lines = [f"out of memory while {action}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"]
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        lines.append(f"GPU memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    lines.append("To fit, try (in Placement / the model config):")
    lines.extend(f"  - {advice}" for advice in _oom_advice(placement))
    return "\n".join(lines)


def _oom_advice(placement: Placement | None) -> list[str]:
    advice = []
    if placement is None or not placement.vae_tiling:
        advice.append("vae_tiling=True: decode large images tile by tile")
    if placement is None or not placement.offload:
        advice.append("offload=True: keep each component on the GPU only while it runs")
    advice.append("free_text_encoder(components) once prompts are encoded (~8 GB for Qwen3-4B in bf16)")
    half = {"bfloat16", "float16"}
    if placement is None or not {placement.text_encoder_dtype, placement.transformer_dtype} <= half:
        advice.append("bfloat16 for the transformer and text encoder: half the memory of float32")
    if placement is None or placement.text_encoder_device == placement.transformer_device != "cpu":
        advice.append("text_encoder_device='cpu' (or another GPU): keep the encoder off the DiT's GPU")
    return advice
