"""``write_report(run_dir)``: report.md + figures/*.png for a finished predict run.

Sections: the run, its model and its conventions (a plain warning first when
the weights are random); per-metric tables (mean and 95% cluster-bootstrap CI
over prompts, seeds nested; paired difference to the control); set metrics
(FID, LPIPS diversity); time (machine-dependent, warm-up rows left out, never
starred) and memory; human preference (when a votes file is in the run dir);
the sub-questions of the study kind; the list of questions that need a human
A/B study; figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_dit.results import figures
from llm_dit.report.ab_page import WinRate, read_votes, vote_files
from llm_dit.report.questions import Answer, Context, answer_questions
from llm_dit.report.provenance import RANDOM_WEIGHTS_NOTICE, describe_source, weights_are_random
from llm_dit.report.questions.base import fmt
from llm_dit.results.run_data import TIMING_METRICS, RunData, direction, is_warmup, load_run
from llm_dit.results.stats import UNIT
from llm_dit.results.tables import condition_table, per_prompt_table, quality_metric, study_figures

CLIP_CONVENTION = (
    "CLIP score = 100·max(cos(image, text), 0) (torchmetrics' convention); Hessel et al.'s CLIPScore "
    "= 2.5·max(cos, 0) = our number / 40."
)
HESSEL_CONVENTION = (
    "CLIP score = 2.5·max(cos(image, text), 0) (Hessel et al.'s CLIPScore); torchmetrics' convention "
    "100·max(cos, 0) = our number x 40."
)


def write_report(
    run_dir: str | Path, n_boot: int = 2000, seed: int = 0, image_change: bool = True, figures_png: bool = True
) -> Path:
    """Write ``<run_dir>/report.md`` (and ``figures/``) and return its path.

    Args:
        run_dir: a predict run directory (results.jsonl, study.json, set_metrics.json ...).
        n_boot: bootstrap resamples per interval.
        seed: bootstrap seed: the same run and seed give the same report.
        image_change: also measure the mean pixel difference of paired images (reads PNGs).
        figures_png: draw the figures (figures/*.png); off only for quick text-only reports.
    """
    run = load_run(run_dir)
    files = vote_files(run.run_dir)
    votes = read_votes(run.run_dir) if files else {}
    ctx = Context(run, n_boot=n_boot, seed=seed, votes=votes, image_change=image_change)
    figure_links = _figures(run, ctx) if figures_png else {}
    answers = answer_questions(ctx)
    parts = [
        _header(run, n_boot, seed),
        _conditions(run),
        _item_metrics(run, ctx, figure_links),
        _set_metrics(run, ctx),
        _time(run, ctx),
        _preference(votes, files),
        _questions(run, answers),
        _figure_section(figure_links),
    ]
    path = run.run_dir / "report.md"
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return path


def _header(run: RunData, n_boot: int, seed: int) -> str:
    prompts = len({r["prompt_index"] for r in run.rows})
    seeds = sorted({r["seed"] for r in run.rows})
    lines = [f"# Report: {run.name} ({run.kind})", ""]
    if weights_are_random(run.environment.get("weights")):
        lines += [f"> **{RANDOM_WEIGHTS_NOTICE}**", ""]
    lines += [
        f"- {describe_source(run.environment)}",
        f"- run directory: `{run.run_dir}`",
        f"- {len(run.rows)} images: {len(run.conditions)} conditions x {prompts} prompts x {len(seeds)} seeds {seeds}",
        f"- control condition: **{run.control}**",
        f"- intervals: {UNIT} (prompts are resampled, then seeds within each drawn prompt; percentile "
        f"interval, {n_boot} resamples, seed {seed}). A difference vs the control is taken per (prompt, seed) "
        "pair before resampling, so the pairing is kept. The unit is the prompt: with few prompts the "
        "intervals are wide, and one prompt gives no finding.",
        f"- {_clip_convention(run)}",
        "- timing (seconds) is machine-dependent: warm-up rows (each process's first batch) are left out, "
        "and timing differences are never marked as findings",
    ]
    for name, entry in sorted(run.set_metrics.items()):
        info = (entry or {}).get("info") or {}
        if info:
            lines.append(f"- `{name}`: " + "; ".join(f"{k} = {v}" for k, v in info.items() if v is not None))
    if any("random_init" in m for m in run.item_metrics() + list(run.set_metrics)):
        lines.append("- **Metrics named `*_random_init` come from random-weight networks (tests): they mean nothing.**")
    return "\n".join(lines) + "\n"


def _conditions(run: RunData) -> str:
    lines = ["## Conditions", "", f"| condition | settings that differ from {run.control} | images |", "| --- | --- | --- |"]
    control = run.settings(run.control) if run.control else None
    for condition in run.conditions:
        mark = " (control)" if condition == run.control else ""
        differs = run.settings(condition).describe(control) if control and condition != run.control else ""
        lines.append(f"| {condition}{mark} | {differs or '(none)'} | {len(run.rows_of(condition))} |")
    return "\n".join(lines) + "\n"


def _table(rows: list, metric: str, control: str | None, star: bool = True) -> list[str]:
    lines = [
        f"| condition | images | prompts | mean [95% CI] | Δ vs {control} [95% CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        diff = "control" if row.difference is None else row.difference.format(signed=True)
        if star and row.difference is not None and row.difference.excludes_zero:
            diff += " *"
        prompts = row.estimate.clusters if row.estimate.clusters is not None else "-"
        lines.append(f"| {row.condition} | {row.estimate.n} | {prompts} | {row.estimate.format()} | {diff} |")
    sense = {1: "higher is better", -1: "lower is better", 0: "descriptive"}[direction(metric)]
    note = "* = CI of the paired difference excludes 0" if star else "machine-dependent: no difference is marked"
    lines.append(f"\n({sense}; {note})")
    return lines


def _item_metrics(run: RunData, ctx: Context, links: dict[str, str]) -> str:
    metrics = run.item_metrics()
    if not metrics:
        return "## Per-image metrics\n\nNo metric columns in results.jsonl: add metric callbacks to the predict run.\n"
    out = ["## Per-image metrics"]
    for metric in metrics:
        rows = condition_table(run, metric, ctx.n_boot, ctx.seed)
        out += ["", f"### {metric}", "", *_table(rows, metric, run.control, star=metric not in TIMING_METRICS)]
        if f"bars_{metric}" in links:
            out.append(f"\n![{metric}]({links[f'bars_{metric}']})")
    return "\n".join(out) + "\n"


def _set_metrics(run: RunData, ctx: Context) -> str:
    out = []
    for name in run.set_metric_names(("set",)):
        entries = run.set_metric(name)
        out += ["", f"### {name}", "", "| condition | value | images |", "| --- | --- | --- |"]
        out += [
            f"| {c} | {fmt(entries[c].get('value'))} | {entries[c].get('n')} |" for c in run.conditions if c in entries
        ]
        warning = (run.set_metrics[name].get("info") or {}).get("warning")
        out.append(f"\n(a set statistic: no per-image CI.{' ' + warning if warning else ''})")
    for name in run.set_metric_names(("per_prompt_mean",)):
        rows = per_prompt_table(run, name, ctx.n_boot, ctx.seed)
        out += ["", f"### {name} (unit = prompt)", "", *_table(rows, name, run.control)]
    return ("## Set metrics\n" + "\n".join(out) + "\n") if out else ""


def _time(run: RunData, ctx: Context) -> str:
    out = ["## Time and memory", ""]
    rows = condition_table(run, "seconds", ctx.n_boot, ctx.seed)
    warmup = sum(1 for r in run.rows if is_warmup(r))
    if rows:
        out += [
            "### seconds per image (machine-dependent)",
            "",
            f"Wall-clock time on the machine(s) of this run; {warmup} warm-up row(s) (each process's first batch: "
            "compilation, allocator) left out. It ranks conditions of this run only, and no timing difference "
            "is marked as a finding: machine load moves it.",
            "",
            *_table(rows, "seconds", run.control, star=False),
        ]
    elif warmup:
        out.append(f"Only warm-up rows ({warmup}) have a time: no timing comparison.")
    memory = run.set_metric("peak_memory_mb")
    if memory:
        out += ["", "| condition | peak memory (MiB) |", "| --- | --- |"]
        out += [f"| {c} | {fmt(memory[c]['value'], 6)} |" for c in run.conditions if c in memory]
    return "\n".join(out) + "\n" if len(out) > 2 else ""


def _preference(votes: dict[str, WinRate], files: list[Path]) -> str:
    if not votes:
        return (
            "## Human preference\n\nNo votes file (votes*.json) in the run directory. Make a blind A/B page with "
            "`llm_dit.report.export_ab_page(run_dir)`, open `ab_page.html`, vote, download the votes into the run "
            "directory and rerun the report.\n"
        )
    lines = ["## Human preference (blind A/B vs control)", "", f"{len(files)} votes file(s).", ""]
    lines += [
        "| condition | votes | wins | losses | ties | win rate [95% Wilson CI] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w in votes.values():
        low, high = w.interval
        lines.append(
            f"| {w.condition} | {w.n} | {w.wins} | {w.losses} | {w.ties} | {w.rate:.2f} [{low:.2f}, {high:.2f}] |"
        )
    lines.append("\n(ties count half; 0.5 = no preference)")
    return "\n".join(lines) + "\n"


def _questions(run: RunData, answers: list[Answer]) -> str:
    if not answers:
        return f"## Sub-questions\n\nStudy kind `{run.kind}` has no sub-questions in the seed doc.\n"
    out = ["## Sub-questions", ""] + [a.markdown() for a in answers]
    human = [f"{a.qid} ({a.needs_human})" for a in answers if a.needs_human]
    missing = [a.qid for a in answers if not a.answerable]
    out.append("## What this run cannot settle\n")
    out.append("- Needs a human A/B study: " + ("; ".join(human) if human else "none"))
    out.append("- Not answerable from this run's data: " + (", ".join(missing) if missing else "none"))
    return "\n".join(out) + "\n"


def _figures(run: RunData, ctx: Context) -> dict[str, str]:
    """Build and save the figures; returns name -> relative PNG path."""
    made: dict[str, Any] = {}
    for metric in run.item_metrics():
        rows = condition_table(run, metric, ctx.n_boot, ctx.seed)
        if rows:
            made[f"bars_{metric}"] = figures.condition_bar_figure(
                [r.condition for r in rows],
                [r.estimate.mean for r in rows],
                [r.estimate.low for r in rows],
                [r.estimate.high for r in rows],
                metric,
                control=run.control,
            )
    quality = quality_metric(run)
    heatmaps = [m for m in (quality, ctx.metric("detail_score")) if m]
    made.update(study_figures(run, quality, heatmaps, n_boot=ctx.n_boot, seed=ctx.seed))
    links = {}
    for name, fig in made.items():
        figures.save_figure(fig, run.run_dir / "figures" / f"{name}.png")
        links[name] = f"figures/{name}.png"
    return links


def _figure_section(links: dict[str, str]) -> str:
    """Figures not already shown next to their metric table."""
    rest = {name: link for name, link in links.items() if not name.startswith("bars_")}
    return "## Figures\n\n" + ("\n".join(f"![{name}]({link})" for name, link in rest.items()) or "(none)") + "\n"


def _clip_convention(run: RunData) -> str:
    """The CLIP-score convention the run's ClipScoreCallback used (torchmetrics' unless it says hessel)."""
    conventions = [str((e.get("info") or {}).get("convention", "")) for n, e in run.set_metrics.items() if "clip" in n]
    return HESSEL_CONVENTION if any(c.startswith("hessel") for c in conventions) else CLIP_CONVENTION
