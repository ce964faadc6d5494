"""The pipeline's comparison: ``results.json``, ``results.md`` (the paper's table layout, our number beside
the paper's in every column) and ``results.png`` (one panel per column, our bar beside the paper's for every row).

:func:`pixmix.evaluate.report.compare` puts whole rows side by side (ours, then every paper row); an ablation
table reads better with each of our rows next to its own paper row, so this module lays the table out
itself. The columns follow the pipeline's ``paper_table`` when it names one (Table 6: Table 7's eleven
columns), else the dataset (CIFAR: Table 4's six; ImageNet: Table 9's twelve); a measure a run lacks (or the
paper does not report) shows as ``-``. The paper's numbers come from :mod:`pixmix.evaluate.paper`: the
pipeline's table first, then the CIFAR-100 ablations (Tables 4 and 5), then the suite's main table. A
``layout = "grid"`` pipeline (Table 14) also gets the paper's k x beta grid with ours beside each cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.graph import Stage
from pixmix.evaluate.paper import COLUMN_INFO, CORRECTED, TABLES, table14_rows
from pixmix.evaluate.report import KEYS, MISSING, PAPER_ABLATIONS, PAPER_RESULTS, PAPERS_WAY, table14_markdown
from pixmix.utils.jsonfiles import json_safe, write_json

if TYPE_CHECKING:
    from matplotlib.container import BarContainer

SHORT = {key: info.short for key, info in COLUMN_INFO.items()}
LOWER_IS_BETTER = {key: info.lower for key, info in COLUMN_INFO.items()}
SUITE_TABLE = {"imagenet": "table10"}  # the paper's ablation table of a suite without a pipeline's paper_table
GRID_K = (2, 3, 4)  # Table 14's columns
GRID_BETA = (5, 4, 3)  # and rows, as the paper lists them


def columns_for(suite: str, paper_table: str | None = None) -> tuple[str, ...]:
    """The report's columns: the pipeline's paper table's, else the dataset's (ImageNet: Table 9's, CIFAR:
    Table 4's)."""
    if paper_table in TABLES:
        return TABLES[paper_table].columns
    if suite == "imagenet":
        return TABLES["table9"].columns
    return KEYS


def paper_numbers(paper_row: str, suite: str, paper_table: str | None = None) -> dict[str, float] | None:
    """The paper's numbers for a row name: from ``paper_table`` (``table14``: rows ``k=K, beta=B``), the
    suite's ablation table (ImageNet: Table 10), the CIFAR-100 ablations (Tables 4, 5), the suite's main table."""
    table = paper_table or SUITE_TABLE.get(suite)
    found = None
    if table == "table14":
        found = table14_rows().get(paper_row)
    elif table in TABLES:
        found = TABLES[table].rows.get(paper_row)
    if found is None and suite == "cifar100":
        found = PAPER_ABLATIONS.get(paper_row)
    if found is None:
        found = PAPER_RESULTS.get(suite, {}).get(paper_row)
    return dict(found) if found is not None else None


def _fmt(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return MISSING
    return f"{value:.1f}"


def collect(stage: Stage) -> dict[str, Any]:
    """``results.json`` of the report stage: its config plus every evaluated variant's summary."""
    c = stage.config
    variants = {}
    for v in c["variants"]:
        entry = dict(v)
        entry["paper"] = paper_numbers(v["paper_row"], c["suite"], c.get("paper_table"))
        ev = stage.inputs.get(f"eval.{v['name']}")
        if ev is not None:
            stamp = ev.read_stamp() or {}
            outputs = stamp.get("outputs", {})
            entry["summary"] = outputs.get("summary")
            entry["eval_notes"] = outputs.get("notes", [])
            entry["results"] = outputs.get("results")
        else:
            entry["summary"] = None
        variants[v["name"]] = entry
    return {"pipeline": c["pipeline"], "title": c["title"], "column": c["column"], "profile": c["profile"],
            "suite": c["suite"], "file": c["file"], "paper_table": c.get("paper_table"),
            "layout": c.get("layout", "table"), "columns": list(columns_for(c["suite"], c.get("paper_table"))),
            "variants": variants, "notes": c["notes"]}


def _header(key: str) -> str:
    label = f" {PAPERS_WAY}" if key in CORRECTED and key not in ("mfr", "mt5d") else ""
    return f"{SHORT[key]}{label} {'↓' if LOWER_IS_BETTER[key] else '↑'}"


def _table(results: Mapping[str, Any]) -> str:
    """The main table: a row per variant, ours then the paper's for every column."""
    columns = results["columns"]
    header = [results["column"], "Variant"]
    for key in columns:
        header += [f"{_header(key)} ours", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (2 * len(columns))) + "|"]
    for name, v in results["variants"].items():
        ours, paper = v.get("summary") or {}, v.get("paper") or {}
        cells = [v["row"], f"`{name}`" + ("" if v["status"] == "ok" else f" ({v['status']})")]
        for key in columns:
            cells += [_fmt(ours.get(key)), _fmt(paper.get(key))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_cells(results: Mapping[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """Every evaluated variant's summary by its ``(k, beta)`` (the recipe's when the variant leaves them unset)."""
    from pixmix.augment.recipes import get_recipe

    recipe = get_recipe("imagenet" if results["suite"] == "imagenet" else "cifar")
    cells = {}
    for v in results["variants"].values():
        if v.get("summary"):
            k = v.get("k") if v.get("k") is not None else recipe.k
            beta = v.get("beta") if v.get("beta") is not None else recipe.beta
            if float(beta).is_integer():  # the paper's grid has integer betas only
                cells[(int(k), int(beta))] = v["summary"]
    return cells


def _caption(results: Mapping[str, Any]) -> str:
    table = results.get("paper_table") or SUITE_TABLE.get(results["suite"])
    source = TABLES[table] if table in TABLES else None
    what = f"{source.name}: {source.title}" if source else (
        "Table 14: CIFAR-100, WRN-40-4" if table == "table14" else "WRN-40-4, spec section 8")
    return (f"Pipeline `{results['pipeline']}` ({results['file']}), profile `{results['profile']}`, suite "
            f"{results['suite']}. Each column: our number, then the paper's ({what}); ↓ lower is better, ↑ higher is "
            f"better; in percent (mT5D: a distance). `{MISSING}`: not measured by this run, or not reported by the "
            f"paper. Columns marked {PAPERS_WAY} are computed as the paper's numbers were (the corrected figures are "
            "in each variant's own results.md).")


def markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the grid (layout grid), the table (ours beside the paper's in every column), the variants
    and the notes."""
    out = [f"# {results['title']}", "", _caption(results), ""]
    if results.get("layout") == "grid":
        out += ["## The k x beta grid (the paper's Table 14)", "", table14_markdown(grid_cells(results)), "",
                "## Every run", ""]
    out += [_table(results), ""]
    if results["profile"] != "paper":
        out += [(f"Profile `{results['profile']}` is not the paper's setting (a tiny model on tiny synthetic data): "
                 "its numbers check the plumbing and are not comparable with the paper's."), ""]
    out += ["## Variants", ""]
    for name, v in results["variants"].items():
        mixing_set = f", mixing set {' + '.join(v['sources'])}" if v["sources"] else ""
        what = "baseline (no PixMix)" if v["baseline"] else f"PixMix, partners {v['partners']}{mixing_set}"
        extras = [f"{key} {v[key]}" for key in ("k", "beta", "cutmix") if v.get(key) is not None]
        extras += ["Iterative FVis of the network being trained"] if v.get("iterative") else []
        line = f"- `{name}` ({v['row']}): {what}" + (f" ({', '.join(extras)})" if extras else "")
        if v["status"] != "ok":
            line += f". **Not run**: {v['reason']}"
        elif v.get("results"):
            line += f". Details: `{v['results']}`"
        out.append(line)
    notes = list(results.get("notes", []))
    by_note: dict[str, list[str]] = {}
    evaluated = [name for name, v in results["variants"].items() if v.get("summary")]
    for name in evaluated:
        for n in results["variants"][name].get("eval_notes") or []:
            by_note.setdefault(n, []).append(name)
    for n, names in by_note.items():
        notes.append(f"{n} ({'every variant' if names == evaluated else ', '.join(names)})")
    out += ["", "## Notes", ""] + ([f"- {n}" for n in notes] or ["- none"])
    return "\n".join(out) + "\n"


def _value(entry: Mapping[str, Any] | None, key: str) -> float | None:
    x = (entry or {}).get(key)
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def plot(results: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per column; per row our bar (solid) beside the paper's (hatched); n/a where missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = list(results["variants"].values())
    columns = list(results["columns"])
    labels = [v["row"] for v in variants]
    ncols = 3 if len(columns) <= 6 else 4
    nrows = math.ceil(len(columns) / ncols)
    fig = Figure(figsize=(max(4.0 * ncols, 1.6 * len(variants) + 2), 4.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    width = 0.4
    handles: list[BarContainer] = []
    for ax, key in zip(axes, columns, strict=False):
        for offset, source, style in ((-width / 2, "summary", {"color": "C0"}),
                                      (width / 2, "paper", {"color": "C1", "hatch": "//", "alpha": 0.7})):
            values = [_value(v.get(source), key) for v in variants]
            bars = ax.bar([i + offset for i in range(len(variants))], [x or 0.0 for x in values], width, **style)
            for bar, x in zip(bars, values, strict=True):
                ax.annotate("n/a" if x is None else f"{x:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
            if len(handles) < 2:
                handles.append(bars)
        ax.set_title(_header(key), fontsize=9)
        ax.set_xticks(range(len(variants)), labels, rotation=35, ha="right", fontsize=7)
        ax.margins(y=0.15)
    # matplotlib's stubs type handles as Artists; legend() takes the BarContainers too (and draws their patches).
    fig.legend(handles, ["this run", "paper"], loc="outside upper right", fontsize=8)  # type: ignore[call-overload]
    fig.suptitle(f"{results['title']} (profile {results['profile']})")
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


def write(results: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``results.png`` in ``folder``: their paths by suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "md": folder / "results.md", "png": folder / "results.png"}
    write_json(paths["json"], json_safe(results), sort_keys=False)
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths


def run_report(stage: Stage, ctx: Any) -> dict[str, Any]:
    """The report stage's executor: the results of its evaluations, written into its folder."""
    paths = write(collect(stage), stage.folder)
    return {k: str(v) for k, v in paths.items()}


def summary_text(results: Mapping[str, Any]) -> str:
    """A plain-text table for the terminal: every variant's numbers, the paper's in parentheses."""
    columns = results.get("columns") or KEYS
    head = [results["column"], "variant", *(SHORT[k] for k in columns)]
    rows = []
    for name, v in results["variants"].items():
        ours, paper = v.get("summary") or {}, v.get("paper") or {}
        cells = [v["row"], name if v["status"] == "ok" else f"{name} (not run)"]
        cells += [f"{_fmt(ours.get(k))} ({_fmt(paper.get(k))})" for k in columns]
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


__all__ = ["collect", "columns_for", "grid_cells", "markdown", "paper_numbers", "plot", "run_report", "summary_text",
           "write"]
