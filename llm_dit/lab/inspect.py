"""What /encode and /memory report: a prompt's tokens and segments with feature statistics, and memory."""

from __future__ import annotations

import os
import resource
from typing import Any

import torch

from llm_dit.encoding.encoder import EncodedPrompt
from llm_dit.encoding.template import SEGMENT_LABELS
from llm_dit.study import StudyItem

MIB = 2**20


def encoding_report(item: StudyItem, encoded: EncodedPrompt) -> dict[str, Any]:
    """Tokens (text, id, segment), the templated text, and per-segment and overall row statistics.

    Norms are L2 norms of rows of the caption features the DiT receives (after any long-prompt
    compression, so rows can be fewer than tokens); statistics are over every element, in float32.
    """
    features = encoded.embeddings.detach().float().cpu()
    norms = features.norm(dim=-1)
    segments = {}
    for label in SEGMENT_LABELS:
        tokens = sum(1 for s in encoded.segments if s == label)
        mask = torch.tensor([s == label for s in encoded.row_segments], dtype=torch.bool)
        if tokens or bool(mask.any()):
            rows = norms[mask]
            segments[label] = {"tokens": tokens, "rows": int(mask.sum()),
                               "mean_norm": float(rows.mean()) if len(rows) else None}
    return {
        "prompt": item.prompt,
        "encoding": item.encoding.to_dict(),
        "text": encoded.text,
        "tokens": [{"text": text, "id": int(token_id), "segment": segment}
                   for text, token_id, segment in zip(encoded.tokens, encoded.token_ids.tolist(), encoded.segments)],
        "num_tokens": int(encoded.num_tokens),
        "compressed": bool(encoded.compressed),
        "segments": segments,
        "stats": {
            "rows": int(features.shape[0]), "dim": int(features.shape[1]),
            "mean": float(features.mean()), "std": float(features.std()) if features.numel() > 1 else 0.0,
            "min": float(features.min()), "max": float(features.max()),
            "mean_row_norm": float(norms.mean()), "row_norms": [round(float(v), 4) for v in norms],
        },
    }


def memory_report(module: Any) -> dict[str, Any]:
    """Accelerator memory (allocated, reserved, peak, total in MiB) and this process's resident memory."""
    transformer = getattr(module, "transformer", None)
    device = transformer.device if transformer is not None else torch.device("cpu")
    report: dict[str, Any] = {"device": str(device), "process_rss_mib": _rss_mib(),
                              "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        report["cuda"] = {
            "allocated_mib": torch.cuda.memory_allocated(device) / MIB,
            "reserved_mib": torch.cuda.memory_reserved(device) / MIB,
            "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB,
            "total_mib": torch.cuda.get_device_properties(device).total_memory / MIB,
        }
    report["components"] = {name: _component(getattr(module, name, None)) for name in ("text_encoder", "transformer", "vae")}
    return report


def _component(part: torch.nn.Module | None) -> dict[str, Any] | None:
    """Size, dtype and device of a component; None when it is not loaded (saved embeddings: no encoder)."""
    if part is None:
        return None
    first = next(part.parameters())
    return {"parameters": sum(p.numel() for p in part.parameters()),
            "dtype": str(first.dtype).removeprefix("torch."), "device": str(first.device)}


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return None
