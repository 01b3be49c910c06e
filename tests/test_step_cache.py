"""Shared steps across conditions (llm_dit.sampling.step_cache): fewer DiT calls, the same images."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.module_settings import group_options
from llm_dit.sampling.schedule import shifted_sigmas
from llm_dit.sampling.step_cache import StepCache, shared_prefixes
from llm_dit.study import Study


def test_shift_and_step_sweeps_share_their_first_sigma_only():
    shifts = [shifted_sigmas(8, shift) for shift in (1.0, 3.0, 6.0)]
    assert shared_prefixes(shifts) == {(1.0,)}
    assert shared_prefixes([shifted_sigmas(4, 3.0), shifted_sigmas(8, 3.0)]) == {(1.0,)}
    assert shared_prefixes([shifted_sigmas(8, 3.0)]) == set()  # one schedule: nothing to share


def test_identical_prefixes_are_shared_up_to_where_schedules_part():
    assert shared_prefixes([[1.0, 0.7, 0.3, 0.0], [1.0, 0.7, 0.2, 0.0], [1.0, 0.5, 0.0]]) == {(1.0,), (1.0, 0.7)}


def test_cache_serves_only_complete_batches_and_evicts_oldest():
    cache = StepCache({(1.0,)}, max_bytes=3 * 4 * 4)  # room for three rows of 4 floats
    rows = torch.arange(8.0).reshape(2, 4)
    cache.store(["a", "b"], rows)
    assert torch.equal(cache.lookup(["b", "a"], "cpu"), rows.flip(0))
    assert cache.lookup(["a", "c"], "cpu") is None
    cache.store(["c", "d"], rows + 10)  # four rows > three: "b" (served before "a") goes
    assert len(cache) == 3 and cache.nbytes == 48
    assert cache.lookup(["b"], "cpu") is None and cache.lookup(["a", "c", "d"], "cpu") is not None
    assert (cache.hits, cache.misses) == (2, 2)
    with pytest.raises(ValueError, match="2 keys for a batch of 1"):
        cache.store(["x", "y"], rows[:1])


def sweep(**sampler) -> Study:
    conditions = [{"name": "control"}] + [{"name": f"shift={s}", "sampler": {"shift": s}} for s in (1.5, 6.0)]
    conditions.append({"name": "steps=3", "sampler": {"steps": 3}})
    conditions.append({"name": "skip-refiner", "surgery": [{"variant": "skip", "target": "context_refiner"}]})
    return Study(name="share", prompts=["A cat", "A red bicycle at sunset"], seeds=[1, 2], conditions=conditions,
                 sampler={"steps": 2, "height": 32, "width": 32, **sampler})


class Collect(L.Callback):
    def __init__(self) -> None:
        self.images: dict[str, torch.Tensor] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for item, image in zip(outputs.items, outputs.images):
            self.images[item.item_id] = image


def predict(study: Study, tmp_path, calls: list[int], **options) -> tuple[ZImageModule, dict[str, torch.Tensor]]:
    module, collect = ZImageModule(weights="tiny-random", **group_options(**options)), Collect()
    module.configure_model()
    module.transformer.register_forward_hook(lambda *_: calls.append(1))
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, callbacks=[collect],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(module, datamodule=StudyDataModule(study, batch_size=2), return_predictions=False)
    return module, collect.images


@pytest.mark.parametrize("sampler", [{}, {"guidance_scale": 3.0}], ids=["plain", "cfg"])
def test_shared_steps_give_the_same_images_with_fewer_dit_calls(tmp_path, sampler):
    study = sweep(**sampler)
    plain_calls, shared_calls = [], []
    _, plain = predict(study, tmp_path / "plain", plain_calls, share_steps=False)
    module, shared = predict(study, tmp_path / "shared", shared_calls)
    assert plain.keys() == shared.keys() and len(plain) == 20
    for item_id in plain:
        assert torch.equal(shared[item_id], plain[item_id]), item_id
    # 2 prompts x 1 batch of 2 seeds: step 0 is computed by the control and served to the two
    # shift conditions and to steps=3; the skip-refiner condition (other surgery) computes its own.
    batches = 2
    assert len(plain_calls) - len(shared_calls) == 3 * batches
    assert module.step_cache is None  # dropped at the end of the run


def test_step_sharing_is_off_when_every_step_must_run(tmp_path):
    module = ZImageModule(weights="tiny-random", predict={"record_refiner_drift": True})
    module.configure_model()
    assert module.plan_shared_steps(sweep().items()) is None
    module = ZImageModule(weights="tiny-random")
    module.configure_model()
    one_schedule = Study(name="one", prompts=["A cat"], seeds=[1, 2], sampler={"steps": 2, "height": 32, "width": 32})
    assert module.plan_shared_steps(one_schedule.items()) is None
    assert module.plan_shared_steps(sweep().items()).prefixes == {(1.0,)}


def test_changed_weights_are_not_served_old_steps():
    study = sweep()
    items = study.items()
    module = ZImageModule(weights="tiny-random")
    module.configure_model()
    module.plan_shared_steps(items)
    control = [i for i in items if i.condition == "control"][:2]
    shifted = [i for i in items if i.condition == "shift=1.5"][:2]
    module.generate(control)
    with torch.no_grad():
        module.transformer.layers[0].attention.to_q.weight.mul_(1.5)
    fresh, *_ = module.generate(shifted)
    hits = module.step_cache.hits
    assert hits == 0  # the stored step belonged to the old weights
    module.step_cache = None
    reference, *_ = module.generate(shifted)
    assert torch.equal(fresh, reference)
