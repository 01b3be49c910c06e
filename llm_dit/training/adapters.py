"""Style adapters on the context refiner: attach one to train it, export it, apply an exported one.

Training and applying both SWAP the refiner's block list for an adapter list
through a surgery HookRegistry, never editing the base blocks: the base weights
stay bit-identical, the fingerprint of the base is well defined, and removing
the registry gives back the very same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_dit.training import adapter_blocks as ab
from llm_dit.training.adapter_files import AdapterSpec, save_adapter
from llm_dit.training.config import AdapterConfig
from llm_dit.training.fingerprint import base_fingerprints
from surgery.hooks import HookRegistry
from surgery.targets import blocks_of, get_blocks

TARGET = "context_refiner"


def freeze(module: nn.Module) -> None:
    """Nothing trains, everything in eval mode (dropout off, norms fixed)."""
    module.requires_grad_(False)
    module.eval()


class TrainableAdapter:
    """The trainable stand-in for `transformer.context_refiner`, swapped in for a fit.

    Everything in the transformer except the adapter's own weights is frozen and
    in eval mode; `parameters()` is what the optimizer gets; `export()` writes
    the adapter alone. `remove()` puts the original refiner back.
    """

    def __init__(self, transformer: nn.Module, config: AdapterConfig, name: str = "style_adapter_training") -> None:
        self.config = config
        self.fingerprints = base_fingerprints(transformer)  # before any change: the BASE weights
        base = blocks_of(get_blocks(transformer, TARGET))
        self.base_count = len(base)
        self.blocks = self._build(base)
        self.registry = HookRegistry(name)
        self.registry.swap_child(transformer, TARGET, nn.ModuleList(self.blocks), name=f"{config.variant}({TARGET})")
        freeze(transformer)
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        for module in self.trainable_modules():
            module.train()

    def _build(self, base: list[nn.Module]) -> list[nn.Module]:
        if self.config.variant == "lora":
            return ab.lora_blocks(base, self.config.rank, self.config.lora_alpha, self.config.lora_targets)
        if self.config.variant == "full":
            return [ab.copy_block(block) for block in base]
        return list(base) + ab.identity_blocks(base, self.config.extra_blocks)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors under their exported names."""
        if self.config.variant == "lora":
            return dict(ab.lora_parameters(self.blocks))
        if self.config.variant == "full":
            return ab.full_parameters(self.blocks)
        return ab.extra_parameters(self.blocks[self.base_count:])

    def parameters(self) -> list[nn.Parameter]:
        return [t for t in self.named_tensors().values() if isinstance(t, nn.Parameter)]

    def trainable_modules(self) -> list[nn.Module]:
        if self.config.variant == "lora":
            lora_parts = ("lora_A", "lora_B", "lora_dropout")
            return [m for b in self.blocks for name, m in b.named_modules() if name.rsplit(".", 1)[-1] in lora_parts]
        return self.blocks if self.config.variant == "full" else self.blocks[self.base_count:]

    def spec(self, info: dict[str, Any] | None = None) -> AdapterSpec:
        lora = self.config.variant == "lora"
        return AdapterSpec(
            variant=self.config.variant,
            base_fingerprint=self.fingerprints[0],
            portable_fingerprint=self.fingerprints[1],
            base_blocks=self.base_count,
            target=TARGET,
            rank=self.config.rank if lora else None,
            alpha=self.config.lora_alpha if lora else None,
            target_modules=self.config.lora_targets if lora else None,
            extra_blocks=self.config.extra_blocks if self.config.variant == "extra_blocks" else None,
            info=dict(info or {}),
        )

    def export(self, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
        """Write the adapter alone (safetensors + JSON spec) to `folder`."""
        tensors = {name: t.detach().float() if t.is_floating_point() else t.detach() for name, t in self.named_tensors().items()}
        return save_adapter(folder, self.spec(info), tensors)

    def remove(self) -> None:
        self.registry.remove()


def applied_blocks(base: list[nn.Module], spec: AdapterSpec, tensors: dict[str, torch.Tensor], scale: float) -> list[nn.Module]:
    """The block list that applies an exported adapter at `scale` on top of `base`.

    Only the adapter's own modules are new (frozen, eval); the base blocks and
    their weights are used as they are and never modified.
    """
    if len(base) != spec.base_blocks:
        raise ValueError(f"style adapter expects a {spec.target} of {spec.base_blocks} blocks, this one has {len(base)}")
    if scale == 0:
        return list(base)
    what = f"style adapter ({spec.variant})"
    if spec.variant == "lora":
        blocks = ab.lora_blocks(base, int(spec.rank), float(spec.alpha), list(spec.target_modules))
        ab.load_tensors(ab.lora_parameters(blocks), tensors, what)
        ab.set_lora_scale(blocks, scale)
        own: list[torch.Tensor] = list(ab.lora_parameters(blocks).values())
    elif spec.variant == "full":
        ab.check_tensors(ab.full_parameters(base), tensors, what)
        blocks = ab.lerp_blocks(base, tensors, scale)
        own = [p for block in blocks for p in block.parameters()]
    else:
        extra = ab.identity_blocks(base, int(spec.extra_blocks))
        ab.load_tensors(ab.extra_parameters(extra), tensors, what)
        blocks = list(base) + [block if scale == 1 else ab.ScaledResidual(block, scale) for block in extra]
        own = [p for block in extra for p in block.parameters()]
    for parameter in own:
        parameter.requires_grad_(False)
    return blocks


def export_checkpoint(checkpoint_path: str | Path, folder: str | Path) -> Path:
    """Write the adapter of a fit checkpoint (e.g. `<run>/checkpoints/last.ckpt` of an interrupted
    fit, which never reached the end-of-fit export) as `adapter.safetensors` + `adapter.json`."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if "style_adapter" not in checkpoint:
        raise ValueError(f"{checkpoint_path} is not a style-adapter fit checkpoint (no 'style_adapter' entry)")
    spec = AdapterSpec.from_dict(checkpoint["style_adapter"])
    prefix = f"transformer.{spec.target}."
    tensors = {}
    for name, tensor in checkpoint["state_dict"].items():
        index, rest = name.removeprefix(prefix).split(".", 1)
        if spec.variant == "extra_blocks":
            index = str(int(index) - spec.base_blocks)
        if spec.variant == "lora":
            rest = rest.replace(f".{ab.PEFT_ADAPTER}.", ".")
        tensors[f"{index}.{rest}"] = tensor.float() if tensor.is_floating_point() else tensor
    return save_adapter(folder, spec, tensors)
