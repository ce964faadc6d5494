"""The pipeline's comparison: ``results.json``, ``results.md`` (the paper's Table 4 / Table 5 layout, our
number beside the paper's in every column) and ``results.png`` (one panel per safety metric, our bar
beside the paper's for every row).

:func:`pixmix.evaluate.report.compare` puts whole rows side by side (ours, then every paper row); an ablation
table reads better with each of our rows next to its own paper row, so this module lays the table out
itself, with the paper's numbers from :data:`pixmix.evaluate.report.PAPER_ABLATIONS` (Tables 4 and 5) and
:data:`pixmix.evaluate.report.PAPER_RESULTS` (Baseline, PixMix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.graph import Stage
from pixmix.evaluate.report import COLUMNS, KEYS, PAPER_ABLATIONS, PAPER_RESULTS
from pixmix.utils.jsonfiles import json_safe, write_json

if TYPE_CHECKING:
    from matplotlib.container import BarContainer

SHORT = {"clean_error": "Clean err.", "mce": "C mCE", "mfr": "P mFR", "pgd_error": "PGD err.",
         "rms_calibration_c": "Calib. RMS", "auroc": "AUROC"}
LOWER_IS_BETTER = {key: lower for key, _, lower in COLUMNS}


def paper_numbers(paper_row: str, suite: str) -> dict[str, float] | None:
    """The paper's numbers for a row name (the ablations are CIFAR-100 only)."""
    if suite == "cifar100" and paper_row in PAPER_ABLATIONS:
        return dict(PAPER_ABLATIONS[paper_row])
    found = PAPER_RESULTS.get(suite, {}).get(paper_row)
    return dict(found) if found is not None else None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.1f}"


def collect(stage: Stage) -> dict[str, Any]:
    """``results.json`` of the report stage: its config plus every evaluated variant's summary."""
    c = stage.config
    variants = {}
    for v in c["variants"]:
        entry = dict(v)
        entry["paper"] = paper_numbers(v["paper_row"], c["suite"])
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
            "suite": c["suite"], "file": c["file"], "columns": list(KEYS), "variants": variants,
            "notes": c["notes"]}


def markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: the table (ours beside the paper's in every column), the variants and the notes."""
    header = [results["column"], "Variant"]
    for key in KEYS:
        arrow = "↓" if LOWER_IS_BETTER[key] else "↑"
        header += [f"{SHORT[key]} {arrow} ours", "paper"]
    rows = []
    for name, v in results["variants"].items():
        ours, paper = v.get("summary") or {}, v.get("paper") or {}
        cells = [v["row"], f"`{name}`" + ("" if v["status"] == "ok" else f" ({v['status']})")]
        for key in KEYS:
            cells += [_fmt(ours.get(key)), _fmt(paper.get(key))]
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (2 * len(KEYS))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    out = [f"# {results['title']}", "",
           (f"Pipeline `{results['pipeline']}` ({results['file']}), profile `{results['profile']}`, "
            f"suite {results['suite']}. Each metric: our number, then the paper's (WRN-40-4, spec section 8); "
            "↓ lower is better, ↑ higher is better. Clean error, corruption mCE, perturbation mFR, PGD error, "
            "RMS calibration error on -C and anomaly-detection AUROC, in percent."), "",
           "\n".join(lines), ""]
    if results["profile"] != "paper":
        out += [(f"Profile `{results['profile']}` is not the paper's setting (profile smoke: a tiny model on tiny "
                 "synthetic data): its numbers check the plumbing and are not comparable with the paper's."), ""]
    out += ["## Variants", ""]
    for name, v in results["variants"].items():
        mixing_set = f", mixing set {' + '.join(v['sources'])}" if v["sources"] else ""
        what = "baseline (no PixMix)" if v["baseline"] else f"PixMix, partners {v['partners']}{mixing_set}"
        line = f"- `{name}` ({v['row']}): {what}"
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


def plot(results: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per metric; per row our bar (solid) beside the paper's (hatched); n/a where missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = list(results["variants"].values())
    labels = [v["row"] for v in variants]
    fig = Figure(figsize=(max(12.0, 1.6 * len(variants) + 2), 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    width = 0.4
    handles: list[BarContainer] = []
    for ax, (key, header, lower) in zip(axes.ravel(), COLUMNS, strict=True):
        for offset, source, style in ((-width / 2, "summary", {"color": "C0"}),
                                      (width / 2, "paper", {"color": "C1", "hatch": "//", "alpha": 0.7})):
            values = [(v.get(source) or {}).get(key) for v in variants]
            values = [None if x is None or not math.isfinite(x) else x for x in values]
            bars = ax.bar([i + offset for i in range(len(variants))], [x or 0.0 for x in values], width, **style)
            for bar, x in zip(bars, values, strict=True):
                ax.annotate("n/a" if x is None else f"{x:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
            if len(handles) < 2:
                handles.append(bars)
        ax.set_title(f"{header} {'↓' if lower else '↑'}", fontsize=9)
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
    head = [results["column"], "variant", *(SHORT[k] for k in KEYS)]
    rows = []
    for name, v in results["variants"].items():
        ours, paper = v.get("summary") or {}, v.get("paper") or {}
        cells = [v["row"], name if v["status"] == "ok" else f"{name} (not run)"]
        cells += [f"{_fmt(ours.get(k))} ({_fmt(paper.get(k))})" for k in KEYS]
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


__all__ = ["collect", "markdown", "paper_numbers", "plot", "run_report", "summary_text", "write"]
