"""The block lists a style adapter puts in place of the context refiner.

One builder per variant, used both to train (no tensors: the adapter starts as
an exact no-op) and to apply an exported adapter at a `scale`:

- lora: copies of the refiner blocks that SHARE the base weights, with peft
  LoRA layers injected into the copies only; the delta is multiplied by `scale`.
- full: independent copies whose weights are lerp(base, tuned, scale)
  (exactly base at 0, exactly tuned at 1).
- extra_blocks: the base blocks themselves, then new blocks (copies of the last
  one with zeroed output projections: the identity, see surgery.variants);
  at a scale other than 1 each new block contributes x + scale * (block(x) - x).

At scale 0 every builder returns the base blocks themselves: the adapter does
not run at all, so images are bit-identical to the base model by construction.
Tensor names are `<block index>.<parameter path>` (LoRA without peft's adapter
name), indices counting the list's blocks (extra blocks: from 0).
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.variants import copy_block, zero_output_projections

PEFT_ADAPTER = "default"


class ScaledResidual(nn.Module):
    """An appended block at strength `scale`: x + scale * (block(x) - x)."""

    def __init__(self, block: nn.Module, scale: float) -> None:
        super().__init__()
        self.block = block
        self.scale = scale

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x + self.scale * (self.block(x, *args, **kwargs) - x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def shared_weight_copy(block: nn.Module) -> nn.Module:
    """A new module tree over the SAME parameter and buffer tensors (no hooks).

    peft replaces Linear modules by wrappers in the tree it is given; giving it
    this copy leaves the original blocks untouched without duplicating weights.
    """
    return copy_block(block, share_weights=True)


# ----- lora ---------------------------------------------------------------------------


def lora_blocks(base: list[nn.Module], rank: int, alpha: float, targets: list[str]) -> list[nn.Module]:
    """Shared-weight copies of `base` with LoRA (B = 0: a no-op until trained) on `targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.ModuleList([shared_weight_copy(block) for block in base])
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    try:
        inject_adapter_in_model(config, holder, adapter_name=PEFT_ADAPTER)
    except ValueError as error:
        raise ValueError(f"LoRA target_modules {list(targets)} do not match the refiner's linear layers: {error}") from None
    return list(holder)


def set_lora_scale(blocks: list[nn.Module], scale: float) -> None:
    from peft.tuners.lora import LoraLayer

    for block in blocks:
        for module in block.modules():
            if isinstance(module, LoraLayer):
                module.set_scale(PEFT_ADAPTER, scale)


def lora_parameters(blocks: list[nn.Module]) -> dict[str, nn.Parameter]:
    """LoRA weights by exported name, e.g. `0.attention.to_q.lora_A.weight`."""
    found = {}
    for index, block in enumerate(blocks):
        for name, parameter in block.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                found[f"{index}.{name.replace(f'.{PEFT_ADAPTER}.', '.')}"] = parameter
    return found


# ----- full ---------------------------------------------------------------------------


def full_parameters(blocks: list[nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": t for i, block in enumerate(blocks) for name, t in block.state_dict(keep_vars=True).items()}


def lerp_blocks(base: list[nn.Module], tensors: dict[str, torch.Tensor], scale: float) -> list[nn.Module]:
    """Copies of `base` with every tensor lerp(base, tuned, scale)."""
    blocks = [copy_block(block) for block in base]
    with torch.no_grad():
        for name, target in full_parameters(blocks).items():
            tuned = tensors[name].to(device=target.device, dtype=target.dtype)
            target.copy_(torch.lerp(target, tuned, scale) if target.is_floating_point() else tuned)
    return blocks


# ----- extra blocks -------------------------------------------------------------------


def identity_blocks(base: list[nn.Module], count: int) -> list[nn.Module]:
    """`count` copies of the last base block, each exactly the identity (zeroed output projections)."""
    fresh = []
    for _ in range(count):
        block = copy_block(base[-1])
        zero_output_projections(block)
        fresh.append(block)
    return fresh


def extra_parameters(extra: list[nn.Module]) -> dict[str, torch.Tensor]:
    return full_parameters(extra)


# ----- loading ------------------------------------------------------------------------


def check_tensors(named: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], what: str) -> None:
    """Every name must match both ways, with equal shapes; else a ValueError saying what differs."""
    missing, unexpected = sorted(set(named) - set(tensors)), sorted(set(tensors) - set(named))
    if missing or unexpected:
        raise ValueError(
            f"{what}: the adapter's tensors do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, target in named.items():
        if tensors[name].shape != target.shape:
            raise ValueError(f"{what}: tensor {name} has shape {tuple(tensors[name].shape)}, the model needs {tuple(target.shape)}")


def load_tensors(named: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy `tensors` into the `named` targets (checked first)."""
    check_tensors(named, tensors, what)
    with torch.no_grad():
        for name, target in named.items():
            target.copy_(tensors[name].to(device=target.device, dtype=target.dtype))
