"""Metric callbacks and TensorBoard review, on a real Trainer with a fake generator.

All networks here are RANDOM-INIT stand-ins (no weights can be downloaded):
their numbers are meaningless and the metrics carry a ``_random_init`` label.
What is tested is the plumbing: per-item values reach ``GeneratedBatch.metrics``,
per-condition numbers are synced across ranks, files and TensorBoard events are
written, unset weights skip a metric with one warning, and weights that were set
but do not load stop the run before the model loads. CLIP score is checked against
open_clip's own preprocessing on the same random-init model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from llm_dit.results import figures
from callbacks.clip_score import ClipScoreCallback
from callbacks.detail import DetailScoreCallback, laplacian_variance
from callbacks.fid import ConditionFID, FidCallback, RandomFeatureNet
from callbacks.lpips_diversity import LpipsDiversityCallback, seed_pairs
from callbacks.metrics import ConditionValues, KeyedImages, compute_quietly, item_metrics, summarize
from callbacks.tensorboard_review import TensorBoardReview
from callbacks.weights import MetricWeightsError
from callbacks.timing import TimingCallback

TINY_CLIP = "llmdit-test-tiny-clip"  # random-init test architecture, registered below
SHIFTS, STEPS, SEEDS = (2.0, 3.0), (4, 8), (1, 2)
PROMPTS = [("A red cat on a couch", "animal"), ("Portrait of a woman", "portrait"), ("Neon city at night", "landscape")]


# ----- fakes mirroring llm_dit.study.StudyItem and llm_dit.outputs.GeneratedBatch -------------
@dataclass(frozen=True)
class FakeItem:
    item_id: str
    study: str
    condition: str
    condition_index: int
    prompt_index: int
    prompt: str
    original_prompt: str
    prompt_type: str | None
    seed: int
    sampler: Any
    encoding: Any
    variables: dict = field(default_factory=dict, hash=False, compare=False)
    metadata: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class FakeBatch:
    items: list
    images: torch.Tensor
    seconds_per_image: float
    peak_memory_bytes: int | None
    resumed: list
    embeddings: list = field(default_factory=list)
    encodings: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def study_items() -> list[FakeItem]:
    """A 2 x 2 shift x steps grid, 3 typed prompts (one with long-prompt elements), 3 seeds."""
    items = []
    for c, (shift, steps) in enumerate((s, n) for s in SHIFTS for n in STEPS):
        name = f"shift={shift},steps={steps}"
        for p, (text, kind) in enumerate(PROMPTS):
            meta = (
                {"elements": ["a red cat", "a couch"], "construction": "front_heavy", "target_tokens": 1024}
                if p == 0
                else {}
            )
            for seed in SEEDS:
                items.append(
                    FakeItem(
                        f"{name}/p{p:03d}_s{seed}",
                        "grid",
                        name,
                        c,
                        p,
                        text,
                        text,
                        kind,
                        seed,
                        SimpleNamespace(shift=shift, steps=steps, guidance_scale=0.0, height=32, width=32),
                        SimpleNamespace(max_length=512, long_prompt_mode="truncate"),
                        {"shift": shift, "steps": steps},
                        meta,
                    )
                )
    return items


def fake_image(item: FakeItem, size: int = 32) -> torch.Tensor:
    """Deterministic per item; more steps = finer detail, so detail_score differs by condition."""
    g = torch.Generator().manual_seed(item.seed * 1000 + item.prompt_index * 10 + item.condition_index)
    coarse = torch.rand(1, 3, item.sampler.steps, item.sampler.steps, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]


class FakeGenerator(L.LightningModule):
    """Stands in for ZImageModule: predict_step returns a GeneratedBatch-shaped object."""

    def __init__(self, resumed_ids: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.resumed_ids = resumed_ids
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # frozen items hold no tensors, as in ZImageModule

    def predict_step(self, batch: list[FakeItem], batch_idx: int) -> FakeBatch:
        return FakeBatch(
            items=batch,
            images=torch.stack([fake_image(i) for i in batch]),
            seconds_per_image=0.05,
            peak_memory_bytes=None,
            resumed=[i.item_id in self.resumed_ids for i in batch],
            embeddings=[torch.zeros(5 + i.prompt_index, 8) for i in batch],
        )


class Recorder(L.Callback):
    """Reads per-item metrics as the writer does (through item_metrics): keeps what reached batch.metrics."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for i, item in enumerate(outputs.items):
            self.metrics[item.item_id] = {k: v[i] for k, v in item_metrics(trainer, pl_module, outputs).items()}


def predict(
    root: Path,
    callbacks: list,
    items: list[FakeItem],
    module: L.LightningModule | None = None,
    devices: int = 1,
    **trainer_args,
) -> Path:
    logger = TensorBoardLogger(root, name="lightning_logs", version="grid")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    loader = torch.utils.data.DataLoader(
        items, batch_size=6, collate_fn=list
    )  # 6 items per condition: never mixes conditions
    trainer.predict(module or FakeGenerator(), loader, return_predictions=False)
    return Path(logger.log_dir)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    import open_clip

    folder = tmp_path_factory.mktemp("clip_config")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return TINY_CLIP


@pytest.fixture
def reference_dir(tmp_path) -> Path:
    folder = tmp_path / "reference"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        size = 24 + 4 * i  # mixed sizes: the loader must resize before batching
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"r{i}.png")
    return folder


# ----- pure pieces ---------------------------------------------------------------------------
def test_laplacian_variance_matches_numpy_and_orders_sharpness():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((1, 3, 20, 24))).float()
    px = image[0].double().numpy()
    luma = (0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]) * 255
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    assert float(laplacian_variance(image)[0]) == pytest.approx(lap.var(), rel=1e-9)
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1)
    assert laplacian_variance(blurred)[0] < laplacian_variance(image)[0]
    assert float(laplacian_variance(torch.full((1, 3, 8, 8), 0.5))[0]) == 0.0


def test_seed_pairs_groups_by_condition_and_prompt():
    keys = torch.tensor(
        [[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 1], [1, 0, 1], [1, 0, 7], [0, 0, 2]], dtype=torch.float64
    )
    pairs = seed_pairs(keys)
    assert set(pairs) == {(0, 0), (1, 0)}  # (0, 1) has one seed: no pair
    assert len(pairs[(0, 0)]) == 3  # seeds {1, 2, 3}; the repeated seed 2 counts once
    assert pairs[(1, 0)] == [(4, 5)]


def test_condition_fid_equals_torchmetrics_per_condition():
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = RandomFeatureNet(num_features=8)
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(20, 3, 64, 64, generator=g) * 255).to(torch.uint8)
    fake = {c: (torch.rand(12, 3, 64, 64, generator=g) * (200 + 50 * c)).to(torch.uint8) for c in (0, 1)}
    ours = ConditionFID(8)
    ours.update(net(real))
    for c, images in fake.items():
        ours.update(net(images), torch.full((len(images),), c))
    result = ours.compute()
    for c, images in fake.items():
        reference = FrechetInceptionDistance(feature=net)
        reference.update(real, real=True)
        reference.update(images, real=False)
        assert result[c][0] == pytest.approx(float(reference.compute()), rel=1e-3, abs=1e-5)
        assert result[c][1] == 12


def test_pareto_front_and_figures_are_pure(tmp_path):
    #            cheap+bad  cheap+good  mid+good(dominated)  slow+best
    seconds, quality = [1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 1.5, 3.0]
    assert figures.pareto_front(seconds, quality) == [1, 3]
    assert figures.pareto_front(seconds, [-q for q in quality], higher_is_better=False) == [1, 3]
    made = [
        figures.metric_heatmap(["a", "b"], ["c1", "c2"], [[1.0, float("nan")], [2.0, 3.0]], "clip_score"),
        figures.pareto_figure([2.0, 2.0, 3.0, 3.0], [4, 8, 4, 8], seconds, quality, "clip_score"),
        figures.compression_curve_figure({"pool": [(1.0, 20.0, 19.0, 21.0), (2.0, 18.0, 17.0, 19.0)]}, "clip_score"),
        figures.cosine_matrix_figure(["l-1", "l-2"], [[1.0, 0.9], [0.9, 1.0]]),
        figures.drift_figure(
            ["input", "refiner.0", "refiner.1"], {"portrait": [1.0, 0.95, 0.9], "abstract": [1.0, 0.9, 0.7]}
        ),
        figures.condition_bar_figure(["c", "d"], [1.0, 2.0], [0.5, 1.5], [1.5, 2.5], "clip_score", control="c"),
    ]
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # no pyplot state: nothing to leak
    pareto_axes = made[1].axes[0]
    assert len(pareto_axes.get_lines()) == 3  # two shifts + the front
    for index, fig in enumerate(made):
        assert figures.save_figure(fig, tmp_path / f"figure_{index}.png").stat().st_size > 1000


def two_ranks(make, fill_rank0, fill_rank1):
    """Compute ``make()`` as rank 0 of two, with rank 1's states gathered through a fake all_gather.

    The fake checks what a real gather needs (same dtype and trailing shape on
    every rank); the multi-process run is ``test_two_ranks_aggregate_like_one``.
    """
    sent: list[torch.Tensor] = []
    other = make(dist_sync_fn=lambda t, group=None: sent.append(t) or [t], distributed_available_fn=lambda: True)
    fill_rank1(other)
    compute_quietly(other)
    queue = iter(sent)

    def gather(tensor, group=None):
        theirs = next(queue)
        assert theirs.dtype == tensor.dtype and theirs.shape[1:] == tensor.shape[1:], "ranks would not gather"
        return [tensor, theirs]

    mine = make(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    fill_rank0(mine)
    return compute_quietly(mine)


def test_metric_states_sync_when_a_rank_is_empty():
    def fill_values(metric):
        metric.update(
            torch.tensor([0.0, 0, 1]),
            torch.tensor([0.0, 1, 0]),
            torch.tensor([42.0, 42, 2**40]),
            torch.tensor([1.0, 3.0, float("nan")]),
        )

    for rank0, rank1 in ((fill_values, lambda m: None), (lambda m: None, fill_values)):
        columns = two_ranks(ConditionValues, rank0, rank1)
        assert summarize(columns) == {0: (2.0, 2)}  # condition 1 had only a NaN: no value
        assert columns["seed"].tolist()[-1] == 2**40  # float64 keys keep large seeds exact

    def fill_images(metric):
        metric.update(torch.tensor([[0.0, 0, 42]]), torch.ones(1, 3, 8, 8))

    keys, pixels = two_ranks(lambda **kw: KeyedImages(4, **kw), lambda m: None, fill_images)
    assert keys.shape == (1, 3) and pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 4, 4)
    features = two_ranks(
        lambda **kw: ConditionFID(4, **kw),
        lambda m: m.update(torch.rand(3, 4)),
        lambda m: m.update(torch.rand(2, 4), torch.tensor([0, 0])),
    )
    assert features[0][1] == 2 and features[0][0] is not None


# ----- the callbacks on a real Trainer ---------------------------------------------------------
def test_full_stack_writes_metrics_set_metrics_and_tensorboard(tmp_path, tiny_clip, reference_dir):
    recorder = Recorder()
    review = TensorBoardReview(grid_prompts=2, grid_seeds=2, thumbnail_size=16)
    callbacks = [
        ClipScoreCallback(tiny_clip, probes={"photo": "a photograph"}, max_elements=2, random_init_for_tests=True),
        DetailScoreCallback(),
        TimingCallback(),
        FidCallback(reference_dir=str(reference_dir), random_init_for_tests=True, min_images=100),
        LpipsDiversityCallback(resolution=64, random_init_for_tests=True),
        review,
        recorder,
    ]
    with pytest.warns(UserWarning, match="FID from fewer than 100 images"):
        run = predict(tmp_path, callbacks, study_items())

    first = recorder.metrics["shift=2.0,steps=4/p000_s1"]
    assert set(first) >= {
        "clip_score_random_init",
        "clip_score_encoded_random_init",
        "clip_elements_mean_random_init",
        "clip_element_0_random_init",
        "clip_probe_photo_random_init",
        "detail_score",
        "caption_tokens",
    }
    assert 0 <= first["clip_score_random_init"] <= 100 and first["clip_element_1_random_init"] is not None
    assert recorder.metrics["shift=2.0,steps=4/p001_s1"]["clip_elements_mean_random_init"] is None  # no elements
    assert "seconds_per_image" not in first  # timing is summarised, the writer stores seconds itself

    sets = json.loads((run / "set_metrics.json").read_text())
    assert set(sets["fid_random_init"]["conditions"]) == {f"shift={s},steps={n}" for s in SHIFTS for n in STEPS}
    assert all(e["n"] == 6 for e in sets["fid_random_init"]["conditions"].values())
    lpips = sets["lpips_diversity_random_init"]["conditions"]["shift=3.0,steps=8"]
    assert lpips["n"] == 3 and set(lpips["per_prompt"]) == {"0", "1", "2"}
    assert sets["seconds_per_image"]["conditions"]["shift=3.0,steps=8"]["value"] == pytest.approx(0.05)
    assert sets["caption_tokens"]["conditions"]["shift=2.0,steps=4"]["value"] == pytest.approx(6.0)
    detail = sets["detail_score"]["conditions"]
    assert detail["shift=2.0,steps=8"]["value"] > detail["shift=2.0,steps=4"]["value"]  # finer fake images
    assert "random-init" in sets["clip_score_random_init"]["info"]["weights"]

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert "grids/shift=2.0,steps=4" in images
    assert {"figures/heatmap_prompt_type_clip_score_random_init", "figures/pareto_shift_steps"} <= set(images)
    grid = events.Images("grids/shift=2.0,steps=4")[0]
    assert (grid.height, grid.width) == (2 * 18 + 2, 2 * 18 + 2)  # 2 prompts x 2 seeds of 16 px + padding
    scalars = events.Tags()["scalars"]
    assert "fid_random_init/shift=2.0,steps=4" in scalars and "by_condition/detail_score" in scalars
    assert len(events.Scalars("by_condition/detail_score")) == 4
    hparam_runs = sorted(p.name for p in (run / "hparams").iterdir())
    assert len(hparam_runs) == 4 and all(list((run / "hparams" / r).glob("events.out.tfevents.*")) for r in hparam_runs)
    session = EventAccumulator(str(run / "hparams" / hparam_runs[1]), size_guidance={"scalars": 0})
    session.Reload()
    plugin = plugin_data_pb2.HParamsPluginData.FromString(
        session.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    )
    hparams = plugin.session_start_info.hparams
    assert hparams["condition"].string_value == "shift=2.0,steps=8" and hparams["var.steps"].number_value == 8
    assert "hparam/fid_random_init" in session.Tags()["scalars"]
    assert (run / "figures" / "pareto_shift_steps.png").is_file()
    assert review.run is not None and len(review.run.rows) == 24


def test_missing_weights_skip_with_one_clear_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached LPIPS backbone
    recorder = Recorder()
    callbacks = [
        ClipScoreCallback("ViT-B-32"),
        FidCallback(reference_dir=str(tmp_path)),
        LpipsDiversityCallback(),
        DetailScoreCallback(),
        recorder,
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = predict(tmp_path, callbacks, study_items()[:8])
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert sum("ClipScoreCallback(pretrained=...)" in m for m in messages) == 1
    assert sum("FidCallback(weights=...)" in m for m in messages) == 1
    assert sum("LpipsDiversityCallback(backbone_weights=...)" in m for m in messages) == 1
    assert all(set(m) == {"detail_score"} for m in recorder.metrics.values())  # no invented numbers
    sets = json.loads((run / "set_metrics.json").read_text())
    assert set(sets) == {"detail_score"}


class ModelMustNotLoad(FakeGenerator):
    """Fails the test if the trainer gets as far as loading the generator or making an image."""

    def configure_model(self) -> None:
        pytest.fail("the generator was loaded although metric weights were bad")

    def predict_step(self, batch, batch_idx):
        pytest.fail("an image was generated although metric weights were bad")


@pytest.mark.parametrize("make, message", [
    (lambda bad, folder: ClipScoreCallback("ViT-B-32", pretrained=str(bad)), "CLIP score: pretrained="),
    (lambda bad, folder: FidCallback(reference_dir=str(folder), weights=str(bad)), "FID: weights="),
    (lambda bad, folder: FidCallback(reference_dir=str(folder / "none")), "FID: reference_dir="),
    (lambda bad, folder: LpipsDiversityCallback(backbone_weights=str(bad)), "LPIPS diversity: backbone_weights="),
    (lambda bad, folder: LpipsDiversityCallback(backbone_weights=str(folder / "none.pth")), "(file not found)"),
])
def test_set_weights_that_do_not_load_stop_the_run_before_the_model(tmp_path, make, message):
    """Weights that were set but do not load are a config mistake: the trainer stops in setup (before
    configure_model and the first image) with a one-line error naming the file and the cause."""
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    callback = make(bad, tmp_path)
    with pytest.raises(MetricWeightsError) as error:
        predict(tmp_path, [callback], study_items()[:6], ModelMustNotLoad())
    text = str(error.value)
    assert message in text and "could not be loaded (" in text and "\n" not in text
    assert str(tmp_path) in text


def test_clip_score_matches_open_clips_own_preprocess(tiny_clip):
    """Oracle: open_clip's own PIL preprocess (bicubic resize, centre crop, normalize) and tokenizer
    on the same random-init model, scored as torchmetrics does: 100 * max(cos, 0). Non-square
    images exercise the resize and crop; they are uint8-exact so PIL sees the same pixels."""
    import open_clip

    callback = ClipScoreCallback(tiny_clip, probes={"photo": "a photograph"}, random_init_for_tests=True)
    assert callback.enabled()
    items = study_items()[:4]
    images = torch.stack([fake_image(item, size=96)[:, :, 8:88] for item in items])  # 96 x 80
    images = (images * 255).round() / 255
    batch = FakeBatch(items, images, 0.1, None, [False] * len(items))
    ours = callback.score(batch, torch.device("cpu"))

    _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip, pretrained=None)
    tokenizer = open_clip.get_tokenizer(tiny_clip)
    model = callback._model
    pil = [Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()) for image in images]
    with torch.no_grad():
        image_features = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(p) for p in pil])), dim=-1)

        def reference(text: str) -> list[float]:
            text_features = torch.nn.functional.normalize(model.encode_text(tokenizer([text])), dim=-1)[0]
            return (100 * (image_features @ text_features).clamp(min=0)).tolist()

    for i, item in enumerate(items):
        assert ours["clip_score_random_init"][i] == pytest.approx(reference(item.original_prompt)[i], abs=0.1)
        assert ours["clip_probe_photo_random_init"][i] == pytest.approx(reference("a photograph")[i], abs=0.1)
    element = items[0].metadata["elements"][0]
    assert ours["clip_element_0_random_init"][0] == pytest.approx(reference(element)[0], abs=0.1)
    spread = max(ours["clip_score_random_init"]) - min(ours["clip_score_random_init"])
    assert spread > 0.5  # the items really differ, so a 0.1 agreement is informative


def test_resumed_items_keep_their_stored_values_and_take_seconds_from_the_table(tmp_path):
    """A resumed item is never rescored from its PNG: its stored metric values pass through unchanged."""
    items = study_items()[:6]
    run = tmp_path / "lightning_logs" / "grid"
    run.mkdir(parents=True)
    with open(run / "results.jsonl", "w") as handle:
        for item in items[:3]:
            stored = {"item_id": item.item_id, "seconds": 5.0, "peak_memory_mb": 7.0, "metric.detail_score": 11.5}
            handle.write(json.dumps(stored) + "\n")
    recorder = Recorder()
    module = FakeGenerator(resumed_ids=frozenset(i.item_id for i in items[:3]))
    predict(tmp_path, [DetailScoreCallback(), TimingCallback(), recorder], items, module)
    assert [recorder.metrics[i.item_id]["detail_score"] for i in items[:3]] == [11.5] * 3
    fresh = [float(laplacian_variance(fake_image(i)[None])[0]) for i in items[3:]]
    assert [recorder.metrics[i.item_id]["detail_score"] for i in items[3:]] == pytest.approx(fresh)
    sets = json.loads((run / "set_metrics.json").read_text())
    assert sets["detail_score"]["conditions"]["shift=2.0,steps=4"]["value"] == pytest.approx((3 * 11.5 + sum(fresh)) / 6)
    seconds = sets["seconds_per_image"]["conditions"]["shift=2.0,steps=4"]
    assert seconds["n"] == 6 and seconds["value"] == pytest.approx((3 * 5.0 + 3 * 0.05) / 6)
    assert sets["peak_memory_mb"]["conditions"]["shift=2.0,steps=4"]["value"] == 7.0  # max; fresh ones have None


@pytest.mark.slow  # two spawned interpreters importing torch + lightning: ~1 min on 2 CPU cores
def test_two_ranks_aggregate_like_one(tmp_path, reference_dir):
    """ddp_spawn on CPU: each rank sees part of every condition; the synced numbers match one rank."""

    def run_with(devices: int, root: Path) -> dict:
        callbacks = [
            DetailScoreCallback(),
            TimingCallback(),
            FidCallback(str(reference_dir), random_init_for_tests=True),
            LpipsDiversityCallback(resolution=32, random_init_for_tests=True),
            TensorBoardReview(thumbnail_size=8),
        ]
        kwargs = {"strategy": "ddp_spawn"} if devices > 1 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = predict(root, callbacks, study_items()[:18], devices=devices, **kwargs)
        return json.loads((run / "set_metrics.json").read_text())

    single, double = run_with(1, tmp_path / "one"), run_with(2, tmp_path / "two")
    assert set(single) == set(double)
    for metric, entry in single.items():
        for condition, value in entry["conditions"].items():
            other = double[metric]["conditions"][condition]
            assert other["n"] == value["n"], (metric, condition)
            assert other["value"] == pytest.approx(value["value"], rel=1e-4), (metric, condition)
    assert not math.isnan(single["fid_random_init"]["conditions"]["shift=2.0,steps=4"]["value"])


@pytest.mark.slow  # builds the embedded tiny Z-Image and generates: ~20 s on 2 CPU cores
def test_with_the_real_tiny_pipeline_and_writer(tmp_path):
    """The contract with ZImageModule / StudyWriter, not a fake: metrics land in results.jsonl."""
    module_mod = pytest.importorskip("llm_dit.module")
    from callbacks.writer import StudyWriter, read_rows
    from llm_dit.data import StudyDataModule
    from llm_dit.report import write_report
    from llm_dit.study import Study

    study = Study(
        name="hl",
        kind="hidden_layer",
        prompts=[{"text": "A cat", "type": "animal"}, "A city"],
        seeds=[1, 2],
        sampler={"steps": 2, "height": 32, "width": 32},
        control="layer=-2",
        conditions=[
            {"name": "layer=-2", "encoding": {"hidden_layer": -2}},
            {"name": "layer=-1", "encoding": {"hidden_layer": -1}},
        ],
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        logger=TensorBoardLogger(tmp_path, name="lightning_logs", version="hl"),
        callbacks=[DetailScoreCallback(), TimingCallback(), TensorBoardReview(), StudyWriter(log_grids=False)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.predict(
            module_mod.ZImageModule(weights="tiny-random"),
            datamodule=StudyDataModule(study, batch_size=2),
            return_predictions=False,
        )
    run = tmp_path / "lightning_logs" / "hl"
    rows = read_rows(run / "results.jsonl")
    assert len(rows) == 8 and all(r["metric.detail_score"] > 0 and r["metric.caption_tokens"] > 0 for r in rows)
    assert "### Q1.1:" in write_report(run, n_boot=100).read_text()


def test_clip_loads_a_local_weights_file(tmp_path, tiny_clip):
    """The ``pretrained=<file>`` path, with weights saved from the random-init test model."""
    random_init = ClipScoreCallback(tiny_clip, random_init_for_tests=True)
    assert random_init.enabled()
    weights = tmp_path / "open_clip_model.pt"
    torch.save(random_init._model.state_dict(), weights)
    local = ClipScoreCallback(tiny_clip, pretrained=str(weights), convention="hessel")
    assert local.enabled() and local.metric_names[0] == "clip_score"
    items = study_items()[:2]
    batch = FakeBatch(items, torch.stack([fake_image(i) for i in items]), 0.1, None, [False, False])
    ours, reference = local.score(batch, torch.device("cpu")), random_init.score(batch, torch.device("cpu"))
    assert ours["clip_score"] == pytest.approx([v / 40 for v in reference["clip_score_random_init"]])  # 2.5 vs 100
    assert local.info("clip_score")["convention"] == "hessel: 2.5*max(cos,0)"


def test_stored_values_of_resumed_items_come_from_the_newest_row(tmp_path):
    """An item made again (changed setting, damaged PNG) has a newer row in a shard: resumed items read that."""
    from callbacks.metrics import read_results_table
    from llm_dit.results.table import all_rows

    (tmp_path / "results.jsonl").write_text(json.dumps({"item_id": "c/p000_s1", "detail_score": 0.1}) + "\n")
    (tmp_path / "results.rank0.jsonl").write_text(json.dumps({"item_id": "c/p000_s1", "detail_score": 0.9}) + "\n")
    assert read_results_table(tmp_path)["c/p000_s1"]["detail_score"] == 0.9
    assert read_results_table(tmp_path) == all_rows(tmp_path)  # the summaries' reading
