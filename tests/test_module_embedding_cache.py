"""The prompt-embedding cache is bounded: entries on the CPU, each dropped after its last pending item.

Oracle: the keys the not-yet-generated items need, computed here from the study's own item
list (prompt and encoding of each item, plus the negative prompt where CFG is on), checked
after every batch of a real `trainer.predict` on the tiny model.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from llm_dit.data import StudyDataModule
from llm_dit.encoding.cache import EmbeddingCache
from llm_dit.module import ZImageModule
from llm_dit.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")


def study() -> Study:
    """Two conditions share an encoding (control, shift=2: kept across them), one encodes
    differently (layer=-1), one uses CFG (its negative prompt is an entry too)."""
    return Study(
        name="cache", prompts=["A cat", "A dog", "A bird"], seeds=[1, 2],
        sampler={"steps": 1, "height": 32, "width": 32},
        conditions=[
            {"name": "control"},
            {"name": "layer=-1", "encoding": {"hidden_layer": -1}},
            {"name": "shift=2", "sampler": {"shift": 2.0}},
            {"name": "cfg", "sampler": {"guidance_scale": 4.0, "negative_prompt": "blurry"}},
        ],
    )


def needed(items) -> set:
    keys = set()
    for item in items:
        keys.add((item.prompt, item.encoding))
        if item.sampler.guidance_scale > 0:
            keys.add((item.sampler.negative_prompt, item.encoding))
    return keys


class Watch(L.Callback):
    """After each batch: the cache's keys, where its tensors live, and the items still to come."""

    def __init__(self, items) -> None:
        self.remaining = list(items)
        self.snapshots: list[tuple[set, set, set]] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.snapshots:  # the plan came from this process's loader, not a fallback to all items
            assert [i.item_id for i in pl_module._items_of_this_process([])] == [i.item_id for i in self.remaining]
        done = {item.item_id for item in batch}
        self.remaining = [item for item in self.remaining if item.item_id not in done]
        cache = pl_module.embedding_cache
        devices = {t.device.type for e in cache.values() for t in (e.embeddings, e.token_ids)}
        self.snapshots.append((set(cache), needed(self.remaining), devices))


@pytest.mark.parametrize("free_encoder", [False, True])
def test_cache_holds_only_what_pending_items_need(tmp_path, free_encoder):
    data = StudyDataModule(study(), batch_size=2)
    module = ZImageModule(weights="tiny-random", predict={"free_encoder_after_encoding": free_encoder})
    module.configure_model()
    encoded: list[tuple] = []
    encode = module.encoder.encode

    def counting(prompts, options):
        encoded.extend((p, options) for p in prompts)
        return encode(prompts, options)

    module.encoder.encode = counting
    watch = Watch(data.items)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[watch],
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.predict(module, datamodule=data, return_predictions=False)

    assert len(watch.snapshots) == 12  # 4 conditions x 3 batches
    for cached, pending, devices in watch.snapshots:
        assert cached <= pending  # never more than the items still to come need
        assert devices <= {"cpu"}
    assert max(len(cached) for cached, _, _ in watch.snapshots) > 0
    # shift=2 reuses control's encodings although layer=-1 ran in between: each is encoded once
    assert sorted(map(repr, encoded)) == sorted(map(repr, set(encoded)))
    assert set(encoded) == needed(data.items)
    assert len(module.embedding_cache) == 0


def test_without_a_plan_entries_stay_and_live_on_the_cpu():
    """Training's validation prompts and direct calls: nothing is dropped, tensors leave the device."""
    from llm_dit.encoding.encoder import EncodedPrompt
    from llm_dit.encoding.options import EncodingOptions

    class Recorded(torch.Tensor):
        """A tensor that remembers whether `.cpu()` was called on it (the copy off the device)."""

        moved = False

        def cpu(self, *args, **kwargs):
            Recorded.moved = True
            return torch.Tensor.cpu(self, *args, **kwargs).as_subclass(torch.Tensor)

    embeddings = torch.randn(4, 8).as_subclass(Recorded)
    encoded = EncodedPrompt(embeddings, torch.arange(4), ["a"] * 4, ["user"] * 4, "a", 4, False, ["user"] * 4)
    cache = EmbeddingCache()
    cache[("a", EncodingOptions())] = encoded
    stored = cache[("a", EncodingOptions())]
    assert Recorded.moved and type(stored.embeddings) is torch.Tensor and torch.equal(stored.embeddings, embeddings)
    cache.release([])  # no plan: a no-op
    cache.plan([])  # a predict run after it: what was cached without a plan (validation prompts) stays
    cache[("b", EncodingOptions())] = encoded  # ... but nothing the plan does not need is added
    cache.end_plan()
    assert list(cache) == [("a", EncodingOptions())]


def test_under_ddp_the_plan_is_this_ranks_share():
    """Each rank plans only the batches its distributed sampler serves, so a rank drops an entry
    when its own last user is done (batches of other ranks never count)."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler

    from llm_dit.data import StudyBatches, group_into_batches

    items = study().items()
    batches = group_into_batches(items, 2)
    module = ZImageModule(weights="tiny-random")
    for rank in (0, 1):
        sampler = DistributedSampler(StudyBatches(batches), num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(StudyBatches(batches), batch_size=1, sampler=sampler, collate_fn=lambda b: b[0])
        module._trainer = SimpleNamespace(predict_dataloaders=loader)
        mine = module._items_of_this_process(items)
        assert [i.item_id for i in mine] == [i.item_id for b in batches[rank::2] for i in b]
