"""Figures readable at a glance, quiet third-party output and the random-weights note (issues 15.7, 16)."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from llm_dit.results import figures
from callbacks.embedding_analysis import FIGURE_FILE, write_analysis
from llm_dit import quiet
from llm_dit.provenance import RANDOM_WEIGHTS_NOTE, weights_are_random

# Detail scores as the refiner study made them: ~1870 with a spread of 0.3 %.
DETAIL = np.array([[1868.12, 1872.43, 1870.05], [1873.9, 1869.31, 1871.77]])
LONG = [f"condition_with_a_rather_long_name_{i}=hidden_layer_mix_normalized" for i in range(3)]


def cell_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_heatmap_cells_tell_close_values_apart_and_the_colours_span_the_data():
    fig = figures.metric_heatmap(["animal", "portrait"], ["a", "b", "c"], DETAIL, metric="detail_score")
    texts = cell_texts(fig)
    assert len(set(texts)) == DETAIL.size  # no two cells read the same (was: "1.87e+03" six times)
    assert all("e+" not in t for t in texts)
    assert [float(t) for t in texts] == pytest.approx(DETAIL.ravel(), abs=0.01)
    image = fig.axes[0].images[0]
    assert (image.norm.vmin, image.norm.vmax) == (DETAIL.min(), DETAIL.max())  # colour scale = data spread


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.971, 0.9734, 0.99], "{:.4f}"), ([1868.1, 1872.4], "{:.2f}"), ([12.0, 40.0], "{:.1f}"), ([5.0, 5.0], "{:.3f}"),
     ([2e7, 3e7], "{:.3e}")],
)
def test_cell_format_resolves_the_spread(values, expected):
    assert figures.cell_format(np.array(values)) == expected


def inside_canvas(fig) -> bool:
    """Everything drawn (tick and axis labels, titles, colour bar) lies within the canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = canvas.get_width_height()
    for ax in fig.axes:
        box = ax.get_tightbbox(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            return False
    return True


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # the label is too long on purpose
def test_the_check_catches_a_clipped_label():
    fig = figures.condition_bar_figure(["a"], [1], [0.5], [1.5], "clip")
    fig.axes[0].set_xticks([0], ["x" * 300])
    assert not inside_canvas(fig)


def test_long_labels_stay_inside_the_canvas():
    matrix = np.array([[1.0, 0.95, 0.9], [0.95, 1.0, 0.97], [0.9, 0.97, 1.0]])
    assert inside_canvas(figures.cosine_matrix_figure(LONG, matrix))
    assert inside_canvas(figures.metric_heatmap(LONG[:2], LONG, DETAIL, metric="detail_score"))
    assert inside_canvas(figures.condition_bar_figure(LONG, [1, 2, 3], [0.5, 1.5, 2.5], [1.5, 2.5, 3.5], "clip"))
    assert max(len(t.get_text()) for t in figures.cosine_matrix_figure(LONG, matrix).axes[0].get_xticklabels()) <= figures.MAX_LABEL


def test_cosine_matrix_scales_to_the_off_diagonal_and_a_constant_one_is_skipped(tmp_path):
    matrix = [[1.0, 0.97, 0.98], [0.97, 1.0, 0.99], [0.98, 0.99, 1.0]]
    image = figures.cosine_matrix_figure(["a", "b", "c"], matrix).axes[0].images[0]
    assert (image.norm.vmin, image.norm.vmax) == pytest.approx((0.97, 0.99))
    assert figures.varies(matrix) and not figures.varies([[1.0, 1.0], [1.0, 1.0]]) and not figures.varies([[None]])

    constant = {"cosine_matrix": {"names": ["default", "skip"], "matrix": [[1.0, 1.0], [1.0, 1.0]]}}
    (tmp_path / FIGURE_FILE).parent.mkdir(parents=True)
    (tmp_path / FIGURE_FILE).write_bytes(b"stale")
    _, figure = write_analysis(constant, tmp_path)
    assert figure is None and not (tmp_path / FIGURE_FILE).exists()


def test_quiet_drops_third_party_noise_and_keeps_useful_warnings(caplog):
    quiet.install()
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        lightning_log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        lightning_log.info("TPU available: False, using: 0 TPU cores")
        lightning_log.info("GPU available: False, used: False")
        logging.getLogger("diffusers.models.modeling_utils").warning(
            "There are modules in AutoencoderKL that should be kept in float32: []. Casting directly ..."
        )
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        quiet.install()  # warning filters are re-applied inside catch_warnings' fresh list
        warnings.warn("No seed found, seed set to 0")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
        warnings.warn("CLIP score skipped: set ClipScoreCallback(pretrained=...)")
    assert [str(w.message) for w in caught] == ["CLIP score skipped: set ClipScoreCallback(pretrained=...)"]


def test_random_weights_are_said_plainly(capsys):
    assert weights_are_random("random-z-image-turbo") and weights_are_random("tiny-random")
    assert not weights_are_random("tiny")  # the trained embedded world model
    assert not weights_are_random("/models/Z-Image-Turbo")
    assert RANDOM_WEIGHTS_NOTE == "random weights: images are noise; this run tests the pipeline, not the model"
    from callbacks.tensorboard_review import TensorBoardReview

    trainer = SimpleNamespace(is_global_zero=True)
    TensorBoardReview().on_predict_start(trainer, SimpleNamespace(hparams=SimpleNamespace(weights="tiny-random"), device="cpu"))
    assert RANDOM_WEIGHTS_NOTE in capsys.readouterr().err
    TensorBoardReview().on_predict_start(trainer, SimpleNamespace(hparams=SimpleNamespace(weights="/models/zit"), device="cpu"))
    assert capsys.readouterr().err == ""


def test_a_smaller_rerun_keeps_the_earlier_set_metric(tmp_path):
    """FID / LPIPS see only a run's images: a smoke run must not replace a larger run's value."""
    from callbacks.metrics import update_set_metrics

    full = {"fid": {"kind": "set", "conditions": {"a": {"value": 10.0, "n": 250}, "b": {"value": 12.0, "n": 250}}}}
    update_set_metrics(tmp_path, full)
    smoke = {"fid": {"kind": "set", "conditions": {"a": {"value": 99.0, "n": 1}}}}
    data = update_set_metrics(tmp_path, smoke).read_text()
    assert '"value": 10.0' in data and '"value": 12.0' in data and "99.0" not in data
    grown = {"fid": {"kind": "set", "conditions": {"a": {"value": 9.0, "n": 300}}}}
    assert '"value": 9.0' in update_set_metrics(tmp_path, grown).read_text()
    # item summaries come from the whole table: the newest entry is the truth
    update_set_metrics(tmp_path, {"detail_score": {"kind": "item_mean", "conditions": {"a": {"value": 5.0, "n": 250}}}})
    update_set_metrics(tmp_path, {"detail_score": {"kind": "item_mean", "conditions": {"a": {"value": 6.0, "n": 1}}}})
    assert '"value": 6.0' in (tmp_path / "set_metrics.json").read_text()
