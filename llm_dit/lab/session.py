"""The lab's engine: one loaded ZImageModule, and a run folder that grows as an ordinary study.

Every generation is a one-item `trainer.predict` through the same StudyWriter and metric
callbacks a CLI study uses, so the lab folder holds what any run folder holds (PNGs,
results.jsonl rows with settings fingerprints, study.json, environment.json, TensorBoard events)
and `report`, `ab-page` and TensorBoard work on it unchanged. The lab's study is the union of
what was asked: each new prompt, seed and condition is appended (an item id is
`<condition>/p<prompt index>_s<seed>`, as in any study), and study.json is where a restarted
server finds it again. `lab_history.jsonl` adds the order of requests and which ones were
compared side by side.

One lock serialises every use of the model: concurrent requests queue. A request that fails
leaves the model and the folder as they were before it (its error is one line, as on the CLI).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import SingleDeviceStrategy

from callbacks.writer import StudyWriter, all_rows, append_rows, read_rows
from llm_dit.encoding.options import check_keys
from llm_dit.lab.data import LabDataModule
from llm_dit.module import ZImageModule
from llm_dit.resume import canonical
from llm_dit.study import ConditionSpec, Study, StudyItem, check_name, slug
import surgery
from callbacks.detail import DetailScoreCallback
from callbacks.tensorboard_review import TensorBoardReview
from callbacks.timing import TimingCallback
from llm_dit import errors
from llm_dit.lab.inspect import encoding_report, memory_report

HISTORY = "lab_history.jsonl"
STUDY_RECORD = "study.json"
CONDITIONS_FOLDER = "conditions"
CONTROL = "baseline"
CONDITION_KEYS = ("name", "encoding", "sampler", "surgery", "prompt_transform")


class LabError(ValueError):
    """Bad input to the lab (HTTP 422), with the one-line message the CLI would print."""


class LabFailure(RuntimeError):
    """A request that failed for a reason that is not the user's (HTTP 500); the server goes on."""


class StayOnDevice(SingleDeviceStrategy):
    """Lightning moves the model to the CPU when a predict ends; the lab keeps it where it works
    (for a 6B DiT the round trip would cost seconds per request)."""

    def teardown(self) -> None:
        module, self._lightning_module = self._lightning_module, None
        try:
            super().teardown()
        finally:
            self._lightning_module = module


def prune_hparams_events(folder: Path) -> None:
    """Keep the newest HParams event file per condition: TensorBoardReview writes a complete one at
    every predict end, so after hundreds of lab requests the older ones would only repeat it."""
    for session in (folder / "hparams").glob("*"):
        files = sorted(session.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in files[:-1]:
            old.unlink(missing_ok=True)


def condition_settings(condition: ConditionSpec) -> dict[str, Any]:
    """What a condition does (never its name): the lab matches conditions on this."""
    return canonical({"encoding": condition.encoding, "sampler": condition.sampler,
                      "surgery": condition.surgery, "prompt_transform": condition.prompt_transform or None})


def parse_condition(raw: Any) -> ConditionSpec:
    """A condition in the study YAML's schema ({name, encoding, sampler, surgery, prompt_transform})."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LabError(f"condition must be a mapping like {{name: skip, surgery: [{{variant: skip}}]}}, got {raw!r}")
    check_keys({k: v for k, v in raw.items() if k != "variables"}, _ConditionFields, "condition")
    for key, kind in (("encoding", dict), ("sampler", dict), ("surgery", list)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise LabError(f"condition.{key} must be a {'mapping' if kind is dict else 'list'}, got {raw[key]!r}")
    return ConditionSpec(name=str(raw.get("name") or ""), encoding=dict(raw.get("encoding") or {}),
                         sampler=dict(raw.get("sampler") or {}), surgery=list(raw.get("surgery") or []),
                         prompt_transform=raw.get("prompt_transform") or None)


@dataclasses.dataclass
class _ConditionFields:  # the keys check_keys accepts (ConditionSpec's, without `variables`)
    name: str = ""
    encoding: dict = dataclasses.field(default_factory=dict)
    sampler: dict = dataclasses.field(default_factory=dict)
    surgery: list = dataclasses.field(default_factory=list)
    prompt_transform: str | None = None


class LabSession:
    """The loaded model, the lab folder and the lab's study; every public method is thread-safe.

    Args:
        module: a ZImageModule (its weights load here, once).
        folder: the lab run folder (created); nothing is written outside it.
        encoding / sampler: the lab's baseline, which conditions override (as a study's).
        accelerator: Lightning accelerator for generation ("auto": the GPU if there is one).
    """

    def __init__(self, module: ZImageModule, folder: str | os.PathLike, encoding: dict[str, Any] | None = None,
                 sampler: dict[str, Any] | None = None, accelerator: str = "auto") -> None:
        if module.predict_settings.free_encoder_after_encoding:
            raise LabError("model.predict.free_encoder_after_encoding frees the encoder after the first request's prompts, "
                           "so the lab could not encode the next ones; leave it out, or serve saved embeddings "
                           "(--model.embeddings DIR) to run without the encoder")
        self.module = module
        self.folder = Path(folder).expanduser().resolve()
        self.accelerator = accelerator
        self.lock = threading.Lock()
        self.study = self._open_study(dict(encoding or {}), dict(sampler or {}))
        self.module.configure_model()
        self.callbacks = self._callbacks()

    # ----- the lab's study ---------------------------------------------------------------

    def _open_study(self, encoding: dict[str, Any], sampler: dict[str, Any]) -> Study:
        name = slug(self.folder.name).lstrip(".") or "lab"
        record_path = self.folder / STUDY_RECORD
        if not record_path.is_file():
            study = Study(name=name, kind="custom", prompts=[], seeds=[], encoding=encoding, sampler=sampler,
                          control=CONTROL, conditions=[ConditionSpec(name=CONTROL)])
            study.baseline_encoding(), study.baseline_sampler()  # a bad baseline fails at start
            return study
        record = json.loads(record_path.read_text(encoding="utf-8"))
        stored = Study(name=record["name"], kind=record.get("kind", "custom"), prompts=record["prompts"],
                       seeds=record["seeds"], encoding=record["encoding"], sampler=record["sampler"],
                       control=record.get("control", CONTROL),
                       conditions=[{k: v for k, v in c.items() if k in CONDITION_KEYS} for c in record["conditions"]])
        asked = Study(encoding=encoding, sampler=sampler)
        if (canonical(asked.baseline_encoding().to_dict()), canonical(asked.baseline_sampler().to_dict())) != (
                canonical(stored.baseline_encoding().to_dict()), canonical(stored.baseline_sampler().to_dict())):
            raise LabError(f"lab folder {self.folder} was started with another baseline (encoding "
                           f"{record['encoding']}, sampler {record['sampler']}); leave --encoding/--sampler as they "
                           "were, or use another --folder")
        return stored

    def _callbacks(self) -> list[L.Callback]:
        """The same metric callbacks and writer a config's `trainer.callbacks` lists, kept across requests."""

        return [DetailScoreCallback(), TimingCallback(), TensorBoardReview(), StudyWriter()]

    def _item(self, prompt: Any, seed: Any, condition: ConditionSpec) -> tuple[StudyItem, Study]:
        """The item for (prompt, seed, condition) and the lab study that holds it (validated as the CLI does)."""
        texts = [p.text for p in self.study.prompts]
        prompt_index = texts.index(prompt) if prompt in texts else len(texts)
        condition = self._named(condition)
        try:
            single = Study(name=self.study.name, prompts=[prompt], seeds=[seed], encoding=self.study.encoding,
                           sampler=self.study.sampler, control=condition.name, conditions=[condition],
                           transform_seed=self.study.transform_seed + prompt_index)
            (item,) = single.items()
        except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as error:

            raise LabError(errors.user_message(error, started=False) or str(error)) from None
        names = [c.name for c in self.study.conditions]
        study = dataclasses.replace(
            self.study,
            prompts=list(self.study.prompts) + ([prompt] if prompt_index == len(texts) else []),
            seeds=list(self.study.seeds) + ([seed] if seed not in self.study.seeds else []),
            conditions=list(self.study.conditions) + ([condition] if condition.name not in names else []),
        )
        condition_index = [c.name for c in study.conditions].index(condition.name)
        item = dataclasses.replace(item, item_id=f"{condition.name}/p{prompt_index:03d}_s{seed}",
                                   condition_index=condition_index, prompt_index=prompt_index)
        return item, study

    def _named(self, condition: ConditionSpec) -> ConditionSpec:
        """The condition under a name that means one set of settings in this lab: an unnamed one is named
        after its settings; a name already used for other settings gets a suffix (-2, -3, ...)."""
        settings = condition_settings(condition)
        known = {c.name: condition_settings(c) for c in self.study.conditions}
        if not condition.name:
            same = [name for name, s in known.items() if s == settings]
            if same:
                return dataclasses.replace(condition, name=same[0])
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
            return dataclasses.replace(condition, name=f"c-{digest}")
        check_name(condition.name, "condition name")
        name, number = condition.name, 1
        while name in known and known[name] != settings:
            number += 1
            name = f"{condition.name}-{number}"
        return dataclasses.replace(condition, name=name)

    # ----- generate ----------------------------------------------------------------------

    def generate(self, prompt: Any, seed: Any, condition: Any, group: str | None = None) -> dict[str, Any]:
        """One image as one study item: returns its results row, PNG bytes and whether it was made before."""
        spec = parse_condition(condition)
        with self.lock:
            item, study = self._item(prompt, seed, spec)
            finished_before = item.item_id in all_rows(self.folder)
            try:
                self._predict(study, item)
            except Exception as error:  # the model and the folder stay usable: report and go on

                message = errors.user_message(error, started=True)
                if message is None:
                    raise LabFailure(f"generating {item.item_id} failed: {type(error).__name__}: "
                                     f"{errors.one_line(str(error))}") from error
                raise LabError(message) from None
            self.study = study
            row = all_rows(self.folder)[item.item_id]
            append_rows(self.folder / HISTORY, [{"item_id": item.item_id, "group": group, "time": time.time()}])
        png = (self.folder / row["image"]).read_bytes()
        return {"row": row, "png": png, "resumed": finished_before}

    def _predict(self, study: Study, item: StudyItem) -> None:
        trainer = L.Trainer(
            accelerator=self.accelerator, devices=1, strategy=self._strategy(),
            default_root_dir=str(self.folder), enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, callbacks=self.callbacks,
            logger=TensorBoardLogger(save_dir=str(self.folder.parent), name="", version=self.folder.name,
                                     default_hp_metric=False),
        )
        try:
            trainer.predict(self.module, datamodule=LabDataModule(study, [item]), return_predictions=False)
        finally:
            self.module.step_cache = None
            self.module.embedding_cache.end_plan()
            prune_hparams_events(self.folder)

    def _strategy(self) -> StayOnDevice:
        from lightning.pytorch.accelerators import find_usable_cuda_devices

        use_cuda = self.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return StayOnDevice(device=torch.device("cuda", find_usable_cuda_devices(1)[0]) if use_cuda else "cpu")

    # ----- encode, inspect ---------------------------------------------------------------

    def encode(self, prompt: Any, condition: Any) -> dict[str, Any]:
        """Tokens with their segments and statistics of the caption features for (prompt, condition)."""

        spec = parse_condition(condition)
        with self.lock:
            item, _ = self._item(prompt, 0, dataclasses.replace(spec, name=spec.name or "encode"))
            try:
                (encoded,) = self.module.encode([item.prompt], item.encoding)
            finally:
                self.module.embedding_cache.clear()  # outside a study's plan entries would stay for good
        return encoding_report(item, encoded)

    def hook_points(self) -> list[dict[str, Any]]:

        with self.lock:
            return [dataclasses.asdict(point) for point in surgery.hook_points(self.module.transformer)]

    def memory(self) -> dict[str, Any]:

        return memory_report(self.module)

    # ----- history, saved conditions -----------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """Every request in order (newest last), with its results row; requests of one compare share a group."""
        rows = all_rows(self.folder)
        entries = read_rows(self.folder / HISTORY)
        return [{**entry, "row": rows[entry["item_id"]]} for entry in entries if entry["item_id"] in rows]

    def save_condition(self, condition: Any, prompt: str | None = None, seed: int | None = None) -> Path:
        """Write `conditions/<name>.yaml` in the lab folder: a predict config whose study is the lab's
        baseline, its control and this condition, on `prompt` and `seed` (default: the lab's prompts and
        seeds). Run it with `predict --config`, or copy the condition into another study."""
        import yaml

        spec = parse_condition(condition)
        with self.lock:
            item, _ = self._item(prompt or "a photo", 42 if seed is None else seed, spec)
            named = self._named(spec)
        entry = {"name": named.name, **{k: v for k, v in (("encoding", named.encoding), ("sampler", named.sampler),
                                                            ("surgery", named.surgery)) if v}}
        if named.prompt_transform:
            entry["prompt_transform"] = named.prompt_transform
        weights = self.module.hparams.weights
        config = {
            "model": {"weights": weights if isinstance(weights, str) else str(weights), "dtype": self.module.hparams.dtype},
            "data": {"class_path": "llm_dit.data.StudyDataModule", "init_args": {"study": {
                "name": f"{self.study.name}_{named.name}", "kind": "custom",
                "prompts": [item.original_prompt] if prompt else [p.text for p in self.study.prompts] or [item.original_prompt],
                "seeds": [item.seed] if seed is not None else list(self.study.seeds) or [item.seed],
                "encoding": dict(self.study.encoding), "sampler": dict(self.study.sampler),
                "control": CONTROL, "conditions": [{"name": CONTROL}, entry],
            }}},
        }
        path = self.folder / CONDITIONS_FOLDER / f"{named.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# Saved from the llm-dit lab ({self.folder.name}). The condition alone, for any study's "
                  f"`conditions:` list:\n#   {json.dumps(entry)}\n# Run it: python -m llm_dit.cli predict --config "
                  f"{path.name}\n")
        path.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path
