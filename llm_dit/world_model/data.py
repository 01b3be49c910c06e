"""Training data of the embedded world model: rendered scenes and their captions.

Everything is drawn from one seed: scene i of the training set is
`sample_scene(seed_sequence(seed, i))`, rendered with its own jitter and captioned
by `training_caption`. Rendering fans out over processes in fixed chunks, so the
data are the same whatever the number of workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.template import render_chat_text
from llm_dit.world.captions import caption, training_caption
from llm_dit.world.render import render_batch
from llm_dit.world.scene import Scene, sample_scene

CHUNK = 2048
SPLIT_OFFSETS = {"train": 0, "heldout": 1}

# Chat contexts the encoder learns to read (stage 2), none of them the studies' own texts.
SYSTEM_PROMPTS = (
    None, None, None,
    "You are a helpful assistant.",
    "You describe simple pictures of coloured shapes.",
    "Answer briefly.",
    "You are an assistant that draws geometric scenes on request.",
)
THINK_FILLERS = (
    "Let me picture this.",
    "The user wants a simple picture.",
    "I should get the colours and positions right.",
)


@dataclass
class WorldSample:
    scene: Scene
    captions: list[str]


def _scene_seed(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_OFFSETS[split], index])


def _chunk(args: tuple[int, str, int, int, int, int]) -> tuple[np.ndarray, list[WorldSample]]:
    seed, split, start, stop, size, captions_per_scene = args
    samples = []
    for index in range(start, stop):
        rng = _scene_seed(seed, split, index)
        scene = sample_scene(rng, split=split)
        samples.append(WorldSample(scene, [training_caption(scene, rng) for _ in range(captions_per_scene)]))
    images = render_batch([s.scene for s in samples], size, seed=np.random.default_rng([seed, 7, SPLIT_OFFSETS[split], start]))
    return images, samples


def build_world(seed: int, split: str, count: int, size: int, captions_per_scene: int = 1,
                workers: int | None = None) -> tuple[np.ndarray, list[WorldSample]]:
    """(images uint8 [N, size, size, 3], samples) for scenes 0..count-1 of a split."""
    jobs = [(seed, split, start, min(start + CHUNK, count), size, captions_per_scene) for start in range(0, count, CHUNK)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or len(jobs) == 1:
        parts = [_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, size, size, 3), np.uint8)
    samples = [s for p in parts for s in p[1]]
    return images, samples


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W,3] (numpy, or a tensor on any device) -> float [N,3,H,W] in [-1, 1] (the VAE's range)."""
    images = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def chat_lm_text(scene: Scene, user_caption: str, rng: np.random.Generator) -> str:
    """A chat transcript for the encoder's language-model stage.

    The user turn is a world caption, sometimes behind a system turn, sometimes
    followed by an empty or filled think block; the assistant answers with the
    scene in one canonical form. Predicting that answer makes the encoder's layers
    carry the caption's structure (objects, attributes, their binding).
    """
    system = SYSTEM_PROMPTS[int(rng.integers(len(SYSTEM_PROMPTS)))]
    think = int(rng.integers(4))  # 0/1: none, 2: empty block, 3: block with content
    options = EncodingOptions(
        system_prompt=system,
        force_think_block=think == 2,
        thinking_content=THINK_FILLERS[int(rng.integers(len(THINK_FILLERS)))] if think == 3 else None,
        assistant_content=caption(scene, rng, form="plain"),
    )
    return render_chat_text(user_caption, options) + "<|im_end|>\n"


def dit_prompt_text(user_caption: str) -> str:
    """What inference feeds the encoder for a prompt (diffusers' template, default options)."""
    return render_chat_text(user_caption, EncodingOptions())
