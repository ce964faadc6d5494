"""Evaluation reports: ``results.json``, ``results.md`` (laid out like the paper's Table 2, with the paper's
numbers beside ours) and ``results.png``; and :func:`compare` to put several runs side by side.

Plots use matplotlib's object API on an Agg canvas (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixmix.evaluate.paper import COLUMNS, KEYS, PAPER_ABLATIONS, PAPER_RESULTS
from pixmix.utils.errors import PixmixError
from pixmix.utils.jsonfiles import json_safe, write_json


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _header() -> list[str]:
    return [f"{title} {'↓' if lower else '↑'}" for _, title, lower in COLUMNS]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table in the paper's Table 2 layout: one row per name, the six summary numbers."""
    return _table(["Method", *_header()], [[name, *(_fmt(row.get(k)) for k in KEYS)] for name, row in rows.items()])


def subset_limit(results: Mapping[str, Any]) -> int | None:
    """The ``--limit`` a run used (images per set), ``None`` for a full-set run."""
    subset = results.get("subset")
    limit = subset.get("limit") if isinstance(subset, Mapping) else results.get("settings", {}).get("limit")
    return int(limit) if limit is not None else None


def subset_note(results: Mapping[str, Any]) -> str | None:
    """What marks a ``--limit`` run's row (``†``): its numbers are not comparable to the paper's full sets."""
    limit = subset_limit(results)
    if limit is None:
        return None
    return (f"† subset: at most {limit} images per set (--limit {limit}); the paper's rows are on the full sets, "
            "so this run's numbers are not directly comparable to them")


def summary_rows(results: Mapping[str, Any], name: str = "This run") -> dict[str, Mapping[str, Any]]:
    """Our row (marked ``†`` when it is on a subset, see :func:`subset_note`), then the paper's."""
    limit = subset_limit(results)
    name = name if limit is None else f"{name} † (subset: {limit} per set)"
    rows: dict[str, Mapping[str, Any]] = {name: results["summary"]}
    for method, row in PAPER_RESULTS.get(results["suite"], {}).items():
        rows[f"Paper: {method}"] = row
    return rows


def markdown(results: Mapping[str, Any]) -> str:
    """The whole ``results.md``: the Table 2 layout with the paper's rows, then detail tables and notes."""
    ckpt = results.get("checkpoint", {})
    model = ckpt.get("model") or {}
    out = [f"# PixMix evaluation: {results['suite']}", "",
           (f"Checkpoint `{ckpt.get('path')}` ({model.get('arch', '?')}, {model.get('num_classes', '?')} classes, "
            f"recipe {ckpt.get('recipe', {}).get('name', '?')}); seed {results['settings']['seed']}, "
            f"device {results['settings']['device']}, {results.get('seconds', '?')} s."), "",
           "## Summary (the paper's Table 2 layout; ↓ lower is better, ↑ higher is better)", "",
           summary_table(summary_rows(results)), ""]
    note = subset_note(results)
    if note is not None:
        out += [f"**{note}.**", ""]
    if results["suite"] not in PAPER_RESULTS:
        out += ["The spec lists no paper numbers for this suite.", ""]
    if results["suite"] == "imagenet":
        c = results["corruptions"]
        out += [(f"ImageNet-C: mCE {_fmt(c['mce'])}% is normalised by AlexNet's errors; the unnormalised mean "
                 f"error is {_fmt(c['mean_error'])}%."), ""]
    out += ["## Clean", "", _table(["Error (%)", "RMS calibration (%)", "Images"],
                                   [[_fmt(results["clean"]["error"], 2), _fmt(results["clean"]["rms_calibration"], 2),
                                     str(results["clean"]["samples"])]]), ""]
    for key, title in (("corruptions", "Corruptions"), ("c_bar", "Corruptions (-C-Bar)")):
        if key in results:
            out += [f"## {title}", "", _corruption_table(results[key]), ""]
    if "perturbations" in results:
        p = results["perturbations"]
        rows = [[name, "noise" if v["noise"] else "temporal", _fmt(v["flip_rate"], 2), _fmt(v["t5d"], 3),
                 str(v["sequences"]), "yes" if v["in_mean"] else "no"] for name, v in p["per_perturbation"].items()]
        rows.append(["**mean**", "", _fmt(p["mfr"], 2), _fmt(p["mt5d"], 3), "", ""])
        out += ["## Consistency (-P)", "", _table(["Perturbation", "Kind", "Flip rate (%)", "T5D", "Sequences",
                                                   "In mean"], rows), ""]
    a = results["adversarial"]
    out += ["## Adversaries", "", (f"PGD L-inf, epsilon {a['epsilon'] * 255:g}/255, {a['steps']} steps of "
                                   f"{a['step_size'] * 255:g}/255, random start: error {_fmt(a['pgd_error'], 2)}% "
                                   f"on {a['samples']} images."), ""]
    an = results["anomaly"]
    rows = [[name, _fmt(v["auroc"], 2), _fmt(v["aupr"], 2), _fmt(v["fpr95"], 2), str(v["samples"])]
            for name, v in an["per_set"].items()]
    rows.append(["**mean**", _fmt(an["auroc"], 2), _fmt(an["aupr"], 2), _fmt(an["fpr95"], 2), ""])
    out += ["## Anomaly detection (score: negative max softmax probability)", "",
            _table(["OOD set", "AUROC (%) ↑", "AUPR (%) ↑", "FPR95 (%) ↓", "Images"], rows), ""]
    out += ["## Notes", ""] + [f"- {note}" for note in results.get("notes", [])] + (
        [] if results.get("notes") else ["- none"])
    return "\n".join(out) + "\n"


def _corruption_table(c: Mapping[str, Any]) -> str:
    rows = [[name, *(_fmt(e, 1) for e in errs), _fmt(c["per_corruption"][name], 2)]
            for name, errs in c["errors"].items()]
    rows.append(["**mean**", "", "", "", "", "", _fmt(c["mean_error"], 2)])
    extra = "" if c.get("mce_normalisation") != "alexnet" else f"\n\nmCE (AlexNet-normalised): {_fmt(c['mce'], 2)}%"
    return (_table(["Corruption", "s1", "s2", "s3", "s4", "s5", "Mean error (%)"], rows)
            + f"\n\nRMS calibration on these images: {_fmt(c['rms_calibration'], 2)}%" + extra)


def plot(rows: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """One bar panel per Table 2 column, a bar per row name; missing values are marked n/a."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rows)
    fig = Figure(figsize=(4 * 3, 3.2 * 2 + 0.25 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    colors = [f"C{i % 10}" for i in range(len(names))]
    for ax, (key, header, lower) in zip(axes.ravel(), COLUMNS, strict=True):
        values = [rows[n].get(key) for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(names)), heights, color=colors)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{header} {'↓' if lower else '↑'}", fontsize=9)
        ax.set_xticks(range(len(names)), [str(i + 1) for i in range(len(names))], fontsize=8)
        ax.margins(y=0.15)
    fig.legend(bars, [f"{i + 1}: {n}" for i, n in enumerate(names)], loc="outside lower center",
               ncol=min(3, len(names)), fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, format="png", dpi=110)
    return path


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    write_json(paths["json"], json_safe(results), sort_keys=False)
    paths["md"].write_text(markdown(results))
    limit = subset_limit(results)
    subtitle = "" if limit is None else f"\nsubset: {limit} per set (the paper's rows: full sets)"
    plot(summary_rows(results), paths["png"], title=f"{results['suite']}: this run vs the paper{subtitle}")
    return paths


def load_results(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` (or the folder holding one), with a one-line error if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PixmixError(f"{path} not found: pass a results.json written by `pixmix eval`") from exc
    except json.JSONDecodeError as exc:
        raise PixmixError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(results, dict) or "summary" not in results or "suite" not in results:
        raise PixmixError(f"{path}: not a pixmix results.json (no suite / summary)")
    return results


def compare(results: Mapping[str, Mapping[str, Any]], out_dir: str | Path, *, paper: bool = True,
            paper_ablations: bool = False) -> dict[str, Path]:
    """Several runs (name -> results dict) side by side: ``comparison.{json,md,png}`` in ``out_dir``.

    With ``paper`` the paper's rows for the runs' suite are added (when all runs share one suite), and
    with ``paper_ablations`` the paper's CIFAR-100 ablation rows (Tables 4 and 5).
    """
    if not results:
        raise PixmixError("compare needs at least one results dict", param="results")
    suites = {r["suite"] for r in results.values()}
    rows: dict[str, Mapping[str, Any]] = {name: r["summary"] for name, r in results.items()}
    if paper and len(suites) == 1:
        rows.update({f"Paper: {m}": row for m, row in PAPER_RESULTS.get(next(iter(suites)), {}).items()})
    if paper_ablations and suites == {"cifar100"}:
        rows.update({f"Paper: {m}": row for m, row in PAPER_ABLATIONS.items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "comparison.json", "md": out / "comparison.md", "png": out / "comparison.png"}
    write_json(paths["json"], json_safe({"suites": sorted(suites), "rows": rows}), sort_keys=False)
    notes = [f"- {name}: {note}" for name, r in results.items() for note in r.get("notes", [])]
    paths["md"].write_text(f"# Comparison ({', '.join(sorted(suites))})\n\n" + summary_table(rows) + "\n"
                           + ("\n## Notes\n\n" + "\n".join(notes) + "\n" if notes else ""))
    plot(rows, paths["png"], title=", ".join(sorted(suites)))
    return paths


# COLUMNS, KEYS and the paper's rows are defined in pixmix.evaluate.paper and stay importable from here.
__all__ = ["COLUMNS", "KEYS", "PAPER_ABLATIONS", "PAPER_RESULTS", "compare", "load_results", "markdown", "plot",
           "subset_limit", "subset_note", "summary_rows", "summary_table", "write_report"]
