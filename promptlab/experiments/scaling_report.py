"""The scaling report: a markdown table of every model x method of a plan, a plot of the 7-task STS average
against parameter count next to the published OPT curves, and a summary drawn only from measured cells.

Cells without a record are marked "not run yet" (or "dropped", with the plan's reason); nothing is filled
in. Parameter counts come from the plan's ``params`` or else the packaged-model catalog. The published
curves (``paper_curves.toml``) carry their citation, which the report repeats.
"""

from __future__ import annotations

import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError
from promptlab.experiments.scaling import TASKS, Plan, read_cell, resolve

_SHORT = {"STSBenchmark": "STSB", "SICKRelatedness": "SICK-R"}
CSE_NOTE = (
    "CSE here trains on SICK train and STS-B train (pairs scored >= 4; the NLI sets the papers use are not "
    "reachable), with every STS dev/test pair held out."
)


def parse_params(text: str | float | int) -> float:
    """``"135M"``, ``"1.5B"``, ``494e6`` -> a number of parameters."""
    if isinstance(text, int | float):
        return float(text)
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMB]?)\s*", str(text), re.IGNORECASE)
    if not match:
        raise PromptlabError(f"cannot read a parameter count from {text!r}; write e.g. 135M or 1.5B.")
    return float(match.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[match.group(2).upper()]


def model_params(model) -> tuple[float | None, str]:
    """(parameters, where the number comes from)."""
    if model.params is not None:
        return parse_params(model.params), "plan"
    from promptlab.models.catalog import get_model, is_catalog_name

    if is_catalog_name(model.name):
        return parse_params(get_model(model.name).params), "catalog"
    return None, "unknown"


def paper_curves() -> list[dict[str, Any]]:
    text = resources.files("promptlab.experiments").joinpath("paper_curves.toml").read_text(encoding="utf-8")
    curves = tomllib.loads(text)["curve"]
    for curve in curves:
        curve["points"] = [dict(zip(curve["columns"], row, strict=True)) for row in curve["rows"]]
    return curves


def collect(plan: Plan) -> list[dict[str, Any]]:
    """Every test cell: model, method, status and (when measured) its scores."""
    out = []
    for cell in plan.cells():
        if cell.method.kind != "test":
            continue
        measured = read_cell(plan, cell)
        status = "measured" if measured else ("dropped" if cell.dropped else "not run yet")
        params, params_source = model_params(cell.model)
        out.append(
            {
                "cell": cell,
                "model": cell.model,
                "method": cell.method,
                "status": status,
                "measured": measured,
                "params": params,
                "params_source": params_source,
            }
        )
    return out


def _fmt(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def summary_lines(entries: list[dict[str, Any]], methods) -> list[str]:
    """What grows with size and what does not, from measured cells only."""
    lines = []
    measured_models = {e["model"].name for e in entries if e["measured"]}
    if len(measured_models) < 2:
        lines.append(
            f"Only {len(measured_models)} model(s) measured so far: no statement about size can be made yet."
        )
    for method in methods:
        points = sorted(
            (e["params"], e["model"].label or e["model"].name, e["measured"]["average"])
            for e in entries
            if e["method"].name == method.name and e["measured"] and e["params"] is not None
        )
        if not points:
            continue
        if len(points) == 1:
            lines.append(
                f"- **{method.label}**: one model measured ({points[0][1]}: {points[0][2]:.2f}); no trend yet."
            )
            continue
        first, last = points[0], points[-1]
        delta = last[2] - first[2]
        steps = [b[2] - a[2] for a, b in zip(points, points[1:], strict=False)]
        monotonic = all(s > 0 for s in steps) or all(s < 0 for s in steps)
        # Two points have no shape: say the direction only.
        shape = "" if len(points) == 2 else ", steadily" if monotonic else ", not monotonically"
        trend = "grows" if delta > 0.5 else "falls" if delta < -0.5 else "stays flat (within 0.5)"
        caveat = " (only two sizes: a direction, not a curve)" if len(points) == 2 else ""
        lines.append(
            f"- **{method.label}** {trend} with size{shape}: {first[2]:.2f} ({first[1]}) to "
            f"{last[2]:.2f} ({last[1]}), {delta:+.2f} over {len(points)} sizes{caveat}."
        )
    return lines


# matplotlib's default cycle has ten colours, so a plan's eleventh method would look like its first.
# Each further round of ten colours changes the marker and the line style as well: distinct for 40 methods.
_COLOURS = tuple("#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf".split())
_MARKERS_AND_LINES = (("o", "-"), ("D", ":"), ("v", "-."), ("X", (0, (6, 2, 1, 2, 1, 2))))


def method_style(position: int) -> tuple[str, str, str | tuple]:
    """(colour, marker, line style) of the plan's ``position``-th method; stable by plan order."""
    marker, line = _MARKERS_AND_LINES[(position // len(_COLOURS)) % len(_MARKERS_AND_LINES)]
    return _COLOURS[position % len(_COLOURS)], marker, line


def plot_scaling(entries, methods, curves, path: Path, title: str) -> None:
    from promptlab.experiments.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    drawn = 0
    for k, method in enumerate(methods):
        points = sorted(
            (e["params"], e["measured"]["average"])
            for e in entries
            if e["method"].name == method.name and e["measured"] and e["params"] is not None
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        colour, marker, line = method_style(k)
        ax.plot(
            xs, ys, ls=line, marker=marker, color=colour, lw=1.8, ms=6, label=f"{method.label} (promptlab)"
        )
        drawn += 1
    for k, curve in enumerate(curves):
        xs = [p["params"] for p in curve["points"]]
        ys = [p["average"] for p in curve["points"]]
        ax.plot(
            xs,
            ys,
            "--s" if k else "--^",
            color=("0.35", "0.6")[k % 2],
            lw=1.3,
            ms=5,
            label=f"{curve['name']} [paper]",
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("7-task STS average (Spearman x 100, test)")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if not drawn:
        ax.text(0.5, 0.05, "no promptlab cell measured yet", transform=ax.transAxes, ha="center", fontsize=9)
    fig.text(
        0.01,
        0.01,
        "dashed: Jiang et al. 2023 (arXiv 2307.16645), OPT; their CSE trains on NLI, promptlab's on SICK + STS-B train",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_scaling_report(plan: Plan, output_dir: str | Path, *, plots: bool = True) -> Path:
    """``report.md`` and ``scaling.png`` for ``plan`` in ``output_dir``; returns report.md's path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = collect(plan)
    methods = [m for m in plan.methods if m.kind == "test"]
    curves = paper_curves()
    header = (
        "| model | params | method | " + " | ".join(_SHORT.get(t, t) for t in TASKS) + " | Avg | source |"
    )
    md = [
        f"# Scaling report: {plan.name or plan.path}",
        "",
        f"Plan: `{plan.path}`. Scores: Spearman x 100 of cosine similarity on the test sets; every "
        "configuration chosen on STS-B dev only. Cells without a record are marked, never filled in.",
        "",
        "## 7-task average",
        "",
        "| method | " + " | ".join(m.label or m.name for m in plan.models) + " |",
        "|---|" + "---:|" * len(plan.models),
    ]
    by_key = {(e["model"].name, e["method"].name): e for e in entries}
    for method in methods:
        cells = []
        for model in plan.models:
            e = by_key[(model.name, method.name)]
            cells.append(_fmt(e["measured"]["average"]) if e["measured"] else f"_{e['status']}_")
        md.append(f"| {method.label} | " + " | ".join(cells) + " |")
    md += [
        "",
        "Parameters: "
        + ", ".join(
            f"{m.label or m.name} {_params_text(model_params(m)[0])} ({model_params(m)[1]})"
            for m in plan.models
        )
        + ".",
        "",
    ]
    if any(m.train for m in methods):
        md += [f"CSE cells (marked †): {CSE_NOTE}", ""]
    md += ["## Every cell", "", header, "|---|---:|---|" + "---:|" * (len(TASKS) + 1) + "---|"]
    for e in entries:
        mark = " †" if e["method"].train else ""
        label = f"{e['method'].label}{mark}"
        params = _params_text(e["params"])
        if e["measured"]:
            scores = e["measured"]["scores"]
            row = [_fmt(scores.get(t)) for t in TASKS] + [_fmt(e["measured"]["average"])]
            commit = e["measured"].get("commit")
            source = f"`{e['measured']['source']}`, {e['measured']['created'][:10]}" + (
                f", commit {commit[:10]}" if commit else ", no commit recorded"
            )
        else:
            why = f": {e['cell'].dropped}" if e["status"] == "dropped" else ""
            why = f" (in progress: {e['cell'].held})" if e["cell"].held else why
            row = [""] * len(TASKS) + [f"_{e['status']}_"]
            source = f"_{e['status']}{why}_"
        md.append(
            f"| {e['model'].label or e['model'].name} | {params} | {label} | "
            + " | ".join(row)
            + f" | {source} |"
        )
    md += ["", "## What grows with size", ""]
    md += summary_lines(entries, methods)
    md += ["", "## Published curves drawn beside them", ""]
    for curve in curves:
        sizes = ", ".join(f"{_params_text(p['params'])} {p['average']:.2f}" for p in curve["points"])
        md += [f"- {curve['name']}: {sizes}. Source: {curve['source']}."]
    md += [
        "",
        "The papers' CSE is trained on SNLI + MNLI; promptlab's on SICK train + STS-B train: the CSE curves "
        "are not the same experiment.",
        "",
    ]
    if plots:
        plot_scaling(entries, methods, curves, out / "scaling.png", "7-task STS average against model size")
        md += ["![7-task average against parameters](scaling.png)", ""]
    md += ["## Commands", ""]
    for e in entries:
        if e["measured"] and e["measured"].get("command"):
            md.append(f"- {e['cell'].name}: `{e['measured']['command']}`")
        elif e["cell"].held:
            md.append(
                f"- {e['cell'].name}: in progress, by hand: "
                + "; ".join(f"`{c}`" for c in resolve(plan, e["cell"], strict=False))
            )
        elif not e["measured"] and e["status"] != "dropped":
            todo = [n for n in e["method"].needs if not plan.find(e["model"], n).done()] + [e["method"].name]
            md.append(
                f"- {e['cell'].name}: not run yet: `promptlab scaling run {plan.path} --models {e['model'].name} "
                f"--methods {','.join(todo)}`"
            )
    report = out / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return report


def _params_text(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1e9:g}B" if value >= 1e9 else f"{value / 1e6:g}M"
