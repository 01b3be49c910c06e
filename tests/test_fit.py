"""`fit`: the image+caption data module, the flow-matching objective against the sampler,
and configs/refiner_style_adapter.yaml run through the real CLI on the tiny model,
then its exported adapter used by `predict` through the style_adapter surgery spec."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_dit.cli import cli_main
from llm_dit.encoding.encoder import ZImageTextEncoder
from llm_dit.fit_data import ImageCaptionDataModule, encode_latents, find_examples, load_image
from llm_dit.models import build_tiny_components
from llm_dit.models.tiny import ZIMAGE_SCHEDULER_CONFIG
from llm_dit.run_folder import model_fingerprint
from llm_dit.sampling.euler import denoise
from llm_dit.sampling.schedule import make_scheduler, shifted_sigmas
from llm_dit.training import FlowMatchObjective, flow_matching_loss, noisy_latents, sample_sigmas, shift_sigmas, velocity_target
from llm_dit.training.objective import draw_noise
from llm_dit.training.synthetic_style import write_synthetic_style

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "refiner_style_adapter.yaml"
RUN = "refiner_style_adapter"
FIT_STEPS = 40  # a multiple of the config's checkpoint cadence (20): last.ckpt is the final step


pytestmark = pytest.mark.usefixtures("one_thread")


# ----- the objective ----------------------------------------------------------------------


class RecordingTransformer(torch.nn.Module):
    """Stands in for the DiT: records the timestep it gets, returns a fixed output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.output, self.timesteps = output, []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, x, t, cap_feats, return_dict=False):
        self.timesteps.append(t.clone())
        return ([o.unsqueeze(1) + 0 * self.weight for o in self.output],)


def test_raw_output_target_makes_the_sampler_step_follow_the_flow():
    """prev = x + (sigma_next - sigma) * (-raw): with raw = x0 - noise, one Euler step of the
    real scheduler lands exactly on the straight path at sigma_next."""
    scheduler = make_scheduler(FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG), steps=4, shift=3.0)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    x = noisy_latents(x0, noise, sigma.expand(2))
    stepped = scheduler.step(-velocity_target(x0, noise), scheduler.timesteps[0], x, return_dict=False)[0]
    assert torch.allclose(stepped, noisy_latents(x0, noise, sigma_next.expand(2)), atol=1e-5)


def test_training_and_sampling_give_the_transformer_the_same_time_input():
    scheduler = make_scheduler(FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG), steps=4, shift=3.0)
    x0 = torch.zeros(1, 16, 4, 4)
    sampler_side = RecordingTransformer(x0)
    denoise(sampler_side, scheduler, torch.randn(1, 16, 4, 4), [torch.zeros(3, 32)])
    training_side = RecordingTransformer(x0)
    flow_matching_loss(training_side, x0, torch.randn_like(x0), scheduler.sigmas[:1].float(), [torch.zeros(3, 32)])
    assert torch.allclose(training_side.timesteps[0], sampler_side.timesteps[0], atol=1e-6)


def test_perfect_prediction_has_zero_loss():
    x0, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    loss = flow_matching_loss(RecordingTransformer(velocity_target(x0, noise)), x0, noise, torch.tensor([0.2, 0.7]), [torch.zeros(2, 32)] * 2)
    assert loss.item() < 1e-10


def test_sigma_sampling_is_shifted_like_the_schedule():
    base = torch.linspace(1.0, 1 / 8, 8, dtype=torch.float64)
    assert torch.allclose(shift_sigmas(base, 3.0), torch.tensor(shifted_sigmas(8, 3.0)[:-1], dtype=torch.float64))
    for sampling in ("uniform", "logit_normal"):
        sigmas = sample_sigmas(FlowMatchObjective(sigma_sampling=sampling), 4000, generator=torch.Generator().manual_seed(0))
        assert 0 < sigmas.min() and sigmas.max() < 1
        assert sigmas.median() > 0.6  # shift 3 puts most training where Turbo's steps are: high noise
    with pytest.raises(ValueError, match="sigma_sampling"):
        FlowMatchObjective(sigma_sampling="cosine")


def test_fixed_noise_pairs_repeat_per_example():
    objective, x0 = FlowMatchObjective(fixed_noise_seed=0), torch.zeros(3, 16, 2, 2)
    first, again = draw_noise(objective, x0, torch.tensor([0, 1, 2])), draw_noise(objective, x0[:1], torch.tensor([1]))
    assert torch.equal(first[0][1], again[0][0]) and first[1][1] == again[1][0]
    assert not torch.equal(first[0][0], first[0][1])


# ----- the data module --------------------------------------------------------------------


def test_data_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageCaptionDataModule(str(tmp_path / "empty"), resolution=32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionDataModule(str(tmp_path / "nowhere"), resolution=32)
    write_synthetic_style(tmp_path / "data", count=3, size=32)
    (tmp_path / "data" / "style_001.txt").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) .* no caption, e.g. style_001.png: add style_001.txt"):
        ImageCaptionDataModule(str(tmp_path / "data"), resolution=32)
    with pytest.raises(ValueError, match="multiple of 16, got 100 \\(nearest: 96\\)"):
        ImageCaptionDataModule(str(tmp_path / "data"), resolution=100)


def test_captions_from_json_csv_and_sidecars(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (40, 24), (200, 10, 10)).save(tmp_path / f"{name}.png")
    (tmp_path / "c.txt").write_text("sidecar c\n")
    (tmp_path / "captions.json").write_text(json.dumps({"a.png": "json a", "b.png": "json b"}))
    assert [e.caption for e in find_examples(tmp_path)] == ["json a", "json b", "sidecar c"]
    (tmp_path / "captions.json").unlink()
    (tmp_path / "list.csv").write_text("file,caption\na.png,csv a\nb.png,csv b\n")
    assert [e.caption for e in find_examples(tmp_path, "list.csv")] == ["csv a", "csv b", "sidecar c"]


def test_images_are_resized_and_center_cropped(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 0, 0))
    image.paste((255, 255, 255), (20, 0, 40, 20))  # a white band in the middle third
    image.save(tmp_path / "wide.png")
    pixels = load_image(tmp_path / "wide.png", 16)
    assert pixels.shape == (3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1
    assert pixels[:, :, 8].mean() > 0.9  # the centre survives the crop


def test_latents_invert_decode_scaling(tiny):
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    latents = encode_latents(tiny.vae, pixels)
    with torch.no_grad():
        mode = tiny.vae.encode(pixels).latent_dist.mode()
    # decode_latents does z / scaling_factor + shift_factor: that must give back the VAE's own latent
    assert torch.allclose(latents / tiny.vae.config.scaling_factor + tiny.vae.config.shift_factor, mode, atol=1e-6)


def test_cache_is_built_once_then_read_without_the_models(tmp_path, tiny):
    write_synthetic_style(tmp_path / "data", count=3, size=32)
    data = ImageCaptionDataModule(str(tmp_path / "data"), resolution=32, batch_size=2, cache_dir=str(tmp_path / "cache"))
    encoder = ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer, padding="none")
    path = data.prepare_cache(encoder, tiny.vae)
    batch = next(iter(data.val_dataloader()))
    assert batch["latents"].shape == (2, 16, 4, 4) and batch["captions"][0].shape[1] == 32

    class Refuse:
        text_encoder = tiny.text_encoder

        def encode(self, *args, **kwargs):
            raise AssertionError("the cache should have been read, not rebuilt")

    again = ImageCaptionDataModule(str(tmp_path / "data"), resolution=32, cache_dir=str(tmp_path / "cache"))
    assert again.prepare_cache(Refuse(), tiny.vae) == path
    assert torch.equal(again.dataset.latents[1], data.dataset.latents[1])
    other = ImageCaptionDataModule(str(tmp_path / "data"), resolution=32, cache_dir=str(tmp_path / "cache"),
                                   encoding={"hidden_layer": -3})
    assert other.prepare_cache(encoder, tiny.vae) != path  # other encoding options: another cache


# ----- a real fit through the CLI ---------------------------------------------------------


class GradientAudit(L.Callback):
    """Records, before every optimizer step, which parameters hold a gradient (added via the CLI)."""

    with_grad: set[str] = set()
    steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        GradientAudit.steps += 1
        GradientAudit.with_grad |= {n for n, p in pl_module.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """configs/refiner_style_adapter.yaml, shrunk: 8 images, 40 steps, one validation at the end.

    Fixed (noise, sigma) per example: on the random-weight tiny model (its random
    VAE gives latents of std ~0.1) almost nothing about fresh noise is learnable
    through the refiner, so the check that the training path learns is the classic
    overfit-a-batch one, with the whole set in every batch (a smooth loss curve).
    """
    root = tmp_path_factory.mktemp("fit")
    write_synthetic_style(root / "data", count=8, size=32)
    cli = cli_main([
        "fit", "--config", str(CONFIG), "--trainer.default_root_dir", str(root), "--model.weights", "tiny-random",
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", str(FIT_STEPS),
        "--trainer.val_check_interval", str(FIT_STEPS), "--trainer.num_sanity_val_steps", "0",
        "--model.fit.objective.fixed_noise_seed", "0", "--model.fit.adapter.learning_rate", "0.01",
        "--model.fit.validation_sampler", "{steps: 2}", f"--trainer.callbacks+={__name__}.GradientAudit",
        "--data.init_args.folder", str(root / "data"), "--data.init_args.batch_size", "8",
    ])
    yield cli, root / "lightning_logs" / RUN
    cli.model.trainable_adapter.remove()  # the live-surgery table is process-wide: leave it empty


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_training_loss_falls(fitted):
    _, run = fitted
    losses = scalars(run, "train/loss")
    assert len(losses) == FIT_STEPS
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.05, (first, last)
    assert len(scalars(run, "val/loss")) == 1


def test_only_the_adapter_trains_and_the_base_is_bit_identical(fitted):
    cli, _ = fitted
    module = cli.model
    adapter = {id(p) for p in module.trainable_adapter.parameters()}
    named = dict(module.named_parameters())
    assert adapter and all(".lora_A." in n or ".lora_B." in n for n, p in named.items() if id(p) in adapter)
    assert [n for n, p in named.items() if p.requires_grad and id(p) not in adapter] == []
    assert GradientAudit.steps == FIT_STEPS
    assert GradientAudit.with_grad == {n for n, p in named.items() if id(p) in adapter}
    lora_modules = {name for name, _ in module.transformer.named_modules() if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "lora_dropout")}
    in_train_mode = [n for n, m in module.transformer.named_modules() if m.training and not any(n.startswith(l) for l in lora_modules)]
    assert in_train_mode == []

    base = build_tiny_components(seed=0).transformer.state_dict()
    trained = {k.replace(".base_layer.", "."): v for k, v in module.transformer.state_dict().items() if ".lora_" not in k}
    assert set(trained) == set(base)
    assert [k for k in base if not torch.equal(base[k], trained[k])] == []


def test_fit_writes_adapter_checkpoints_grids_and_config(fitted):
    _, run = fitted
    spec = json.loads((run / "adapter" / "adapter.json").read_text())
    assert spec["variant"] == "lora" and spec["rank"] == 8 and spec["target"] == "context_refiner"
    assert spec["base_fingerprint"] == model_fingerprint(build_tiny_components(seed=0).transformer)
    assert spec["info"]["resolution"] == 32 and spec["info"]["global_step"] == FIT_STEPS
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(".lora_" in k for k in checkpoint["state_dict"])
    assert checkpoint["style_adapter"]["variant"] == "lora"
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    grid = events.Images("validation/samples")[-1]
    assert (grid.height, grid.width) == (2 * 32, 2 * 32)  # 2 prompts x 2 seeds
    assert (run / "config.yaml").is_file() and list((run / "cache").glob("latents-*.safetensors"))


def test_adapter_exported_from_the_last_checkpoint_equals_the_fit_end_export(fitted, tmp_path):
    from llm_dit.training import export_checkpoint, load_adapter

    _, run = fitted
    spec, tensors = load_adapter(export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt"))
    fit_spec, fit_tensors = load_adapter(run / "adapter")
    assert spec.base_fingerprint == fit_spec.base_fingerprint and set(tensors) == set(fit_tensors)
    assert all(torch.equal(tensors[k], fit_tensors[k]) for k in tensors)


def test_fit_resumes_from_its_adapter_only_checkpoint(fitted, tmp_path):
    _, run = fitted
    cli = cli_main([
        "fit", "--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", str(FIT_STEPS + 2),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--model.fit.objective.fixed_noise_seed", "0",
        "--data.init_args.folder", str(run.parent.parent / "data"), "--data.init_args.batch_size", "8",
        "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
    ])
    assert cli.trainer.global_step == FIT_STEPS + 2
    lora_b = [p for n, p in cli.model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # trained values came back (B starts at zero)
    cli.model.trainable_adapter.remove()


def test_predict_uses_the_fitted_adapter_through_surgery(fitted, tmp_path):
    _, run = fitted
    adapter = str(run / "adapter")
    study = {
        "name": "with_adapter", "prompts": ["a coral circle in the zstripe style"], "seeds": [0, 1],
        "sampler": {"steps": 4, "height": 32, "width": 32},
        "conditions": [
            {"name": "adapter_1", "surgery": [{"variant": "style_adapter", "path": adapter, "scale": 1.0}]},
            {"name": "adapter_0", "surgery": [{"variant": "style_adapter", "path": adapter, "scale": 0.0}]},
        ],
    }
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "model": {"weights": "tiny-random"},
        "data": {"class_path": "llm_dit.data.StudyDataModule", "init_args": {"batch_size": 2, "study": study}},
    }))
    cli = cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    images = tmp_path / "lightning_logs" / "with_adapter" / "images"
    for seed in (0, 1):
        name = f"p000_s{seed}.png"
        assert (images / "adapter_0" / name).read_bytes() == (images / "control" / name).read_bytes()
        assert (images / "adapter_1" / name).read_bytes() != (images / "control" / name).read_bytes()

    from llm_dit.study import Study

    items = Study(**study).items()
    by_condition = {c: cli.model.generate([i for i in items if i.condition == c])[0] for c in ("control", "adapter_0", "adapter_1")}
    assert torch.equal(by_condition["adapter_0"], by_condition["control"])  # bit-identical tensors, not just PNGs
    assert (by_condition["adapter_1"] - by_condition["control"]).abs().max() > 1e-3
