"""Reports: ``report.md`` (markdown tables) and PNG plots from sweep and search results files.

Plots (matplotlib, Agg backend, imported only here; ``pip install 'promptlab[report]'``):
- ``heatmap-*.png``: STS-B dev score by template x layer, every cell annotated, each template's best
  layer boxed and the overall best starred;
- ``layers-*.png``: score by layer, one line per template, best layer of each marked;
- ``demo-search-*.png``: every candidate's score, sorted, against the no-demonstration line, coloured by
  where the candidate comes from, best and worst labelled.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from promptlab.errors import PromptlabError
from promptlab.experiments.results import read_rows
from promptlab.experiments.search import KIND as SEARCH_KIND
from promptlab.experiments.search import candidate_rows


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _rank(value) -> float:
    """For max/sort: a missing (None/NaN) score ranks below every real one."""
    value = _num(value)
    return float("-inf") if math.isnan(value) else value


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(p for p in parts if p)).strip("-").lower()


def _data_label(fixed: dict[str, Any]) -> str:
    tasks = ", ".join(fixed.get("tasks", []))
    if fixed.get("dev_pairs"):
        return f"STS-B dev, seeded subset of {fixed['dev_pairs']} pairs (seed {fixed.get('seed')})"
    return f"{tasks} ({fixed.get('split')})"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PromptlabError("reports need matplotlib: pip install 'promptlab[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- plots


def plot_heatmap(grid: dict[str, dict[int, float]], title: str, path: Path) -> None:
    """template x layer heatmap, annotated; grid = {template: {layer: score}}."""
    import numpy as np

    plt = _pyplot()
    templates = list(grid)
    layers = sorted({layer for row in grid.values() for layer in row})
    values = np.array([[_num(grid[t].get(layer)) for layer in layers] for t in templates])
    width = max(8.0, 0.5 * len(layers) + 2.5)
    fig, ax = plt.subplots(figsize=(width, 0.55 * len(templates) + 2.0), dpi=100)
    finite = values[np.isfinite(values)]
    low, high = (np.percentile(finite, 5), finite.max()) if finite.size else (0, 1)
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=high)
    ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
    ax.set_yticks(range(len(templates)), templates, fontsize=9)
    ax.set_xlabel("hidden-state layer (0 = embedding output)")
    ax.set_title(title, fontsize=11)
    best_overall = np.unravel_index(np.nanargmax(values), values.shape) if finite.size else None
    for i in range(len(templates)):
        row_best = int(np.nanargmax(values[i])) if np.isfinite(values[i]).any() else -1
        for j in range(len(layers)):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            dark = (v - low) / max(high - low, 1e-9) < 0.6
            star = "*" if best_overall is not None and (i, j) == tuple(best_overall) else ""
            ax.text(
                j,
                i,
                f"{v:.0f}{star}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
                fontweight="bold" if j == row_best else "normal",
            )
        if row_best >= 0:
            ax.add_patch(plt.Rectangle((row_best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("Spearman x 100")
    fig.text(
        0.01,
        0.01,
        "red box: best layer of the template;  *: best overall;  blank: no score (the vectors "
        "are the same for every sentence, e.g. layer 0 at the next-token position)",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_layers(grid: dict[str, dict[int, float]], title: str, path: Path) -> None:
    """Score by layer, one line per template, each template's best layer marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12.5, 5.5), dpi=100)
    cmap = plt.get_cmap("tab10" if len(grid) <= 10 else "tab20")
    order = sorted(grid, key=lambda t: -max((_rank(v) for v in grid[t].values()), default=-1))
    for k, template in enumerate(order):
        points = sorted((layer, _num(v)) for layer, v in grid[template].items() if v is not None)
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        best = max(points, key=lambda p: p[1])
        style = "-" if k < 10 else "--"
        ax.plot(
            xs,
            ys,
            style,
            marker=".",
            ms=4,
            lw=1.5,
            color=cmap(k % cmap.N),
            label=f"{template} (best {best[1]:.1f} @ {best[0]})",
        )
        ax.plot([best[0]], [best[1]], "o", ms=8, mfc="none", mec=cmap(k % cmap.N), mew=2)
    ax.set_xlabel("hidden-state layer (0 = embedding output)")
    ax.set_ylabel("Spearman x 100")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="best layer marked o"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _group_of(demo: dict[str, Any]) -> str:
    demo_id = demo.get("id", "")
    if demo_id.startswith("eol-"):
        return "PromptEOL paper"
    if demo_id.startswith("stsb-"):
        return "STS-B train, self-labelled"
    if demo_id.startswith("def-"):
        return "definitions (hand-written)"
    return "other"


def plot_search(candidates: list[dict], baseline: dict | None, title: str, path: Path) -> None:
    """Every candidate's score (sorted) against the no-demonstration line; best and worst labelled."""
    plt = _pyplot()
    ordered = sorted(candidates, key=lambda r: _num(r["score"]))
    fig, (ax, hist) = plt.subplots(
        1, 2, figsize=(12, 5.5), dpi=110, gridspec_kw={"width_ratios": [3.2, 1]}, sharey=True
    )
    colours = {
        "PromptEOL paper": "tab:red",
        "STS-B train, self-labelled": "tab:blue",
        "definitions (hand-written)": "tab:green",
        "other": "tab:gray",
    }
    groups = defaultdict(list)
    for x, row in enumerate(ordered):
        groups[_group_of(row["demonstration"])].append((x, _num(row["score"])))
    for group, points in groups.items():
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, s=16, color=colours[group], label=f"{group} ({len(points)})", zorder=3)
    if baseline is not None:
        ax.axhline(
            _num(baseline["score"]),
            color="black",
            ls="--",
            lw=1.2,
            label=f"no demonstration ({_num(baseline['score']):.2f})",
        )
        hist.axhline(_num(baseline["score"]), color="black", ls="--", lw=1.2)
    for row, x, where in ((ordered[-1], len(ordered) - 1, "best"), (ordered[0], 0, "worst")):
        d = row["demonstration"]
        sentence = d["sentence"] if len(d["sentence"]) <= 40 else d["sentence"][:37] + "..."
        ax.annotate(
            f'{where}: {_num(row["score"]):.2f}\n"{sentence}" -> {d["word"]}',
            (x, _num(row["score"])),
            xytext=(0.5, 0.93 if where == "best" else 0.07),
            textcoords="axes fraction",
            ha="center",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "0.3"},
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.6"},
        )
    ax.set_xlabel("candidates, sorted by score")
    ax.set_ylabel("STS-B dev Spearman x 100")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    hist.hist([_num(r["score"]) for r in ordered], bins=20, orientation="horizontal", color="0.55")
    hist.set_xlabel("candidates")
    hist.grid(alpha=0.3)
    lo, hi = _num(ordered[0]["score"]), _num(ordered[-1]["score"])
    pad = max(hi - lo, 1.0) * 0.35
    base = _num(baseline["score"]) if baseline else lo
    ax.set_ylim(min(lo, base) - pad, max(hi, base) + pad)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- the report


def write_report(paths: list[str | Path], output_dir: str | Path, *, plots: bool = True) -> Path:
    """Read results files, write ``report.md`` and the PNGs into ``output_dir``; returns report.md's path."""
    from promptlab.evaluation import format_table

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        rows += [{**r, "_file": str(path)} for r in read_rows(path)]
    if not rows:
        raise PromptlabError(f"no rows in {', '.join(map(str, paths))}; run a sweep or search first.")
    md = ["# promptlab report", "", "Results files: " + ", ".join(f"`{p}`" for p in paths), ""]

    sweeps = [r for r in rows if r.get("kind") == "sweep"]
    layer_groups: dict[tuple, list] = defaultdict(list)
    for r in sweeps:
        if (
            len(r.get("scores", {})) == 1
        ):  # one task (STS-B dev): by layer; several (test suite): a table below
            k = r["key"]
            layer_groups[(r.get("fixed", {}).get("data_fingerprint"), k["model"], k["dtype"])].append(r)
    for number, ((_, model, dtype), group) in enumerate(layer_groups.items(), start=1):
        data = _data_label(group[0].get("fixed", {}))
        grid: dict[str, dict[int, float]] = defaultdict(
            dict
        )  # "template[ + demonstration]" -> layer -> score
        seconds: dict[str, float] = defaultdict(float)
        seen_forward = set()
        for r in group:
            k = r["key"]
            name = k["template"] + ("" if k["demonstration"] == "none" else f" + {k['demonstration']}")
            grid[name][k["layer"]] = r.get("score")
            forward = (name, r.get("forward_seconds"))
            if forward not in seen_forward:
                seen_forward.add(forward)
                seconds[name] += r.get("forward_seconds") or 0.0
        multi_layer = any(len(v) > 1 for v in grid.values())
        title = f"{model} ({dtype}) — {data}"
        md += [f"## Sweep: {title}", ""]
        best_t, best_l, best_s = max(
            ((t, layer, s) for t, row in grid.items() for layer, s in row.items() if s is not None),
            key=lambda x: x[2],
        )
        md += [f"**Best: `{best_t}` at layer {best_l}: {best_s:.2f}**", ""]
        md += [
            "| template (+ demonstration) | best layer | best score | last layer | score at last layer "
            "| forward time (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in sorted(grid, key=lambda t: -max(_rank(s) for s in grid[t].values())):
            bl = max(grid[t], key=lambda layer: _rank(grid[t][layer]))
            last = max(grid[t])
            md.append(
                f"| {t} | {bl} | {_fmt(grid[t][bl])} | {last} | {_fmt(grid[t][last])} | {seconds[t]:.0f} |"
            )
        md.append("")
        if plots and multi_layer:
            stem = _slug(model, dtype, f"sweep{number}")
            plot_heatmap(grid, f"{model} ({dtype}): {data}", out / f"heatmap-{stem}.png")
            plot_layers(grid, f"{model} ({dtype}): {data}", out / f"layers-{stem}.png")
            md += [f"![heatmap](heatmap-{stem}.png)", "", f"![score by layer](layers-{stem}.png)", ""]
        layers = sorted({layer for row in grid.values() for layer in row})
        templates = list(grid)
        if not multi_layer:
            continue
        md += [
            "<details><summary>every layer</summary>",
            "",
            "| layer | " + " | ".join(templates) + " |",
            "|---:|" + "---:|" * len(templates),
        ]
        for layer in layers:
            md.append(f"| {layer} | " + " | ".join(_fmt(grid[t].get(layer)) for t in templates) + " |")
        md += ["", "</details>", ""]

    # Rows scored on several tasks (the test suite), or single layers: one table per data setting.
    table_groups: dict[str, list] = defaultdict(list)
    for r in sweeps:
        table_groups[_data_label(r.get("fixed", {}))].append(r)
    for data, group in table_groups.items():
        group = [r for r in group if len(r.get("scores", {})) > 1]
        if not group:
            continue
        md += [f"## Scores: {data}", ""]
        entries = []
        for r in sorted(group, key=lambda r: -_rank(r.get("score"))):
            k = r["key"]
            demo = "" if k["demonstration"] == "none" else f" + {k['demonstration']}"
            label = f"{k['model']} {k['template']}{demo}, layer {k['layer']}"
            entries.append(
                (
                    label,
                    {
                        "scores": r["scores"],
                        "average": r["score"],
                        "partial": r.get("data", {}).get("partial", False),
                    },
                    {"forward s": r.get("forward_seconds")},
                )
            )
        md += [format_table(entries, label="configuration"), ""]

    searches = [r for r in rows if r.get("kind") == SEARCH_KIND]
    by_setting: dict[tuple, list] = defaultdict(list)
    for r in searches:
        f = r.get("fixed", {})
        by_setting[
            (f.get("model"), f.get("dtype"), f.get("template"), f.get("layer"), _data_label(f))
        ].append(r)
    for (model, dtype, template, layer, data), group in by_setting.items():
        candidates, baseline = candidate_rows(group)
        if not candidates:
            continue
        scores = [_num(r["score"]) for r in candidates]
        base = _num(baseline["score"]) if baseline else None
        title = f"{model} ({dtype}), {template}, layer {layer}"
        md += [
            f"## Demonstration search: {title}",
            "",
            f"Scored on {data}; {len(candidates)} candidates.",
            "",
        ]
        md += [
            "| statistic | value |",
            "|---|---:|",
            f"| no demonstration | {_fmt(base)} |",
            f"| best | {scores[0]:.2f} (`{candidates[0]['demonstration']['id']}`) |",
            f"| worst | {scores[-1]:.2f} (`{candidates[-1]['demonstration']['id']}`) |",
            f"| spread (best - worst) | {scores[0] - scores[-1]:.2f} |",
            f"| median | {statistics.median(scores):.2f} |",
            f"| standard deviation | {statistics.pstdev(scores):.2f} |",
        ]
        if base is not None:
            md.append(
                f"| candidates above no demonstration | {sum(s > base for s in scores)} of {len(scores)} |"
            )
        total = sum(r.get("seconds") or 0 for r in group)
        md += [f"| compute time, all rows (s) | {total:.0f} |", ""]
        if plots:
            stem = _slug("search", model, dtype, template, str(layer))
            plot_search(candidates, baseline, f"Demonstration search: {title}\n{data}", out / f"{stem}.png")
            md += [f"![demonstration search]({stem}.png)", ""]
        by_group: dict[str, list[float]] = defaultdict(list)
        for r in candidates:
            by_group[_group_of(r["demonstration"])].append(_num(r["score"]))
        md += ["| source | candidates | best | median | worst |", "|---|---:|---:|---:|---:|"]
        for name, values in sorted(by_group.items()):
            md.append(
                f"| {name} | {len(values)} | {max(values):.2f} | {statistics.median(values):.2f} | "
                f"{min(values):.2f} |"
            )
        md += [
            "",
            "Top 10:",
            "",
            _search_table(candidates[:10], base),
            "",
            "Bottom 5:",
            "",
            _search_table(candidates[-5:], base),
            "",
        ]
    report = out / "report.md"
    report.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return report


def _search_table(rows: list[dict], base: float | None) -> str:
    lines = ["| score | vs none | id | word | sentence |", "|---:|---:|---|---|---|"]
    for r in rows:
        d = r["demonstration"]
        delta = "" if base is None else f"{_num(r['score']) - base:+.2f}"
        sentence = d["sentence"].replace("|", "\\|")
        lines.append(f"| {_num(r['score']):.2f} | {delta} | {d['id']} | {d['word']} | {sentence} |")
    return "\n".join(lines)
