"""What surgery needs to know about a block class: what it returns when bypassed, which
projections make it the identity when zeroed, and which argument holds its hidden states.

One small table keyed by class name (diffusers' `TransformerBlockRegistry` idea), so the
variants work on any model whose blocks are listed here, and a new model needs one entry,
not new variants. Names are matched along the block's class hierarchy (a subclass of a
listed block is that block); an unlisted class is bypassed by returning its first input
and refuses identity_init until registered with `register_block`.

Entries (signatures read from diffusers 0.42.1):

- Z-Image `ZImageTransformerBlock.forward(x, attn_mask, freqs_cis, adaln_input=None, ...)`
  returns `x`; sandwich norms make zeroed `attention.to_out.0` and `feed_forward.w2` the identity.
- Flux `FluxTransformerBlock` (double stream) and `FluxSingleTransformerBlock`
  `.forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None)`
  both return `(encoder_hidden_states, hidden_states)`; each output is `x + gate * proj(...)`,
  so zeroing the output projections (double: attention out, added-KV out, both FFN outs;
  single: `proj_out`) makes the block the identity.
- SD3 `JointTransformerBlock.forward(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None)`
  returns `(encoder_hidden_states, hidden_states)`, with `None` for the text stream in the
  last block (`context_pre_only`); SD3.5's dual attention adds `attn2`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BlockKind:
    """How surgery treats one block class.

    Attributes:
        returns: the forward's parameter names whose input values a bypassed block returns, in
            output order; one name returns that value alone, several return a tuple.
        hidden: the parameter holding the hidden states that probes record (it must be in `returns`).
        mask: the parameter holding the attention mask probes record with it (None: none).
        zero_for_identity: dotted submodule paths (linears) whose zeroed weight and bias make the
            block exactly the identity; a trailing "?" marks a part some configurations lack.
        none_when: (returned name, block attribute): that output is None when the attribute is true.
    """

    returns: tuple[str, ...]
    hidden: str
    mask: str | None = None
    zero_for_identity: tuple[str, ...] = ()
    none_when: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.hidden not in self.returns:
            raise ValueError(f"BlockKind: hidden {self.hidden!r} must be one of returns {self.returns}")

    @property
    def hidden_index(self) -> int | None:
        """Position of the hidden states in a tuple output (None: the output is the hidden states)."""
        return None if len(self.returns) == 1 else self.returns.index(self.hidden)


_FLUX_DOUBLE_ZERO = ("attn.to_out.0", "attn.to_add_out", "ff.net.2", "ff_context.net.2")
_STREAMS = ("encoder_hidden_states", "hidden_states")

BLOCKS: dict[str, BlockKind] = {
    "ZImageTransformerBlock": BlockKind(("x",), "x", "attn_mask", ("attention.to_out.0", "feed_forward.w2")),
    "FluxTransformerBlock": BlockKind(_STREAMS, "hidden_states", None, _FLUX_DOUBLE_ZERO),
    "FluxSingleTransformerBlock": BlockKind(_STREAMS, "hidden_states", None, ("proj_out",)),
    "JointTransformerBlock": BlockKind(
        _STREAMS, "hidden_states", None,
        ("attn.to_out.0", "attn.to_add_out?", "attn2.to_out.0?", "ff.net.2", "ff_context.net.2?"),
        (("encoder_hidden_states", "context_pre_only"),),
    ),
}

FIRST_INPUT = BlockKind(("_first_",), "_first_")  # unlisted classes: the first input is the hidden states


def register_block(class_name: str, kind: BlockKind) -> None:
    """Teach surgery a block class (by class name); replaces an earlier entry of that name."""
    BLOCKS[class_name] = kind


def block_class(block: nn.Module) -> type:
    """The class a block behaves as: its own, or for a stand-in (a bypass) the class it replaced."""
    return getattr(block, "stands_in_for", None) or type(block)


def block_kind(block: nn.Module | type) -> BlockKind:
    """The table entry for `block`'s class or its nearest listed base class; FIRST_INPUT if none."""
    cls = block if isinstance(block, type) else block_class(block)
    for base in cls.__mro__:
        if base.__name__ in BLOCKS:
            return BLOCKS[base.__name__]
    return FIRST_INPUT


def bound_arguments(cls: type, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The block call's arguments by parameter name of `cls.forward` (defaults left out)."""
    signature = _signature(cls)
    if signature is None or block_kind(cls) is FIRST_INPUT:
        return {"_first_": args[0] if args else next(iter(kwargs.values()), None)}
    bound = signature.bind_partial(None, *args, **kwargs).arguments
    bound.pop(next(iter(signature.parameters)), None)  # self
    return dict(bound)


def bypass_output(block_class: type, kind: BlockKind, flags: Mapping[str, bool], args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """What a bypassed block of `block_class` returns for this call: its `returns` inputs."""
    if kind is FIRST_INPUT:
        return args[0] if args else next(iter(kwargs.values()))
    arguments = bound_arguments(block_class, args, kwargs)
    values = []
    for name in kind.returns:
        if name not in arguments:
            raise TypeError(f"bypassed {block_class.__name__} was called without {name!r}; got {', '.join(arguments)}")
        values.append(None if flags.get(name) else arguments[name])
    return values[0] if len(values) == 1 else tuple(values)


def none_flags(block: nn.Module, kind: BlockKind) -> dict[str, bool]:
    """Which returned names are None for this block instance (e.g. SD3's last block's text stream)."""
    return {name: bool(getattr(block, attribute, False)) for name, attribute in kind.none_when}


def hidden_input(block: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(hidden states, attention mask) a block was called with, per its table entry."""
    kind = block_kind(block)
    arguments = bound_arguments(block_class(block), args, kwargs)
    hidden = arguments.get(kind.hidden)
    mask = arguments.get(kind.mask) if kind.mask else None
    return hidden, mask


def hidden_output(block: nn.Module, output: Any) -> torch.Tensor:
    """The hidden states in a block's output (the element named `hidden` of a tuple output)."""
    index = block_kind(block).hidden_index
    if index is None or not isinstance(output, (tuple, list)):
        return output
    return output[index]


def zero_for_identity(block: nn.Module) -> None:
    """Zero the projections the table names for `block`'s class, making it exactly the identity."""
    kind = block_kind(block)
    if not kind.zero_for_identity:
        known = ", ".join(sorted(BLOCKS))
        raise ValueError(
            f"identity_init does not know which projections make a {type(block).__name__} the identity; "
            f"known block classes: {known} (add one with surgery.register_block)"
        )
    linears = []
    for path in kind.zero_for_identity:
        optional = path.endswith("?")
        module = _submodule(block, path.rstrip("?"))
        if module is None:
            if optional:
                continue
            raise ValueError(f"identity_init: {type(block).__name__} has no {path!r} (expected by surgery.blocks.BLOCKS)")
        linears.append(module)
    with torch.no_grad():
        for linear in linears:
            linear.weight.zero_()
            if getattr(linear, "bias", None) is not None:
                linear.bias.zero_()


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


_SIGNATURES: dict[type, inspect.Signature | None] = {}


def _signature(cls: type) -> inspect.Signature | None:
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(cls.forward)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    return _SIGNATURES[cls]
