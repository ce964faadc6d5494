"""Evaluation reports: ``results.json``, ``results.md`` (laid out like the paper's table for the suite, with
the paper's rows beside ours) and ``results.png``; and :func:`compare` to put several runs side by side.

Every figure printed beside the paper's is computed the way the paper's was (RMS calibration with the
reference code's last bin dropped, Outlier Exposure's FPR95, ImageNet-P normalised by AlexNet) and its
header says so (``[paper's way]``); the corrected figures stand beside them in their own table.
Measures a run lacks show as ``-`` with a note. Plots use matplotlib's object API on an Agg canvas (no
pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixmix.evaluate.paper import (
    COLUMN_INFO,
    COLUMNS,
    CORRECTED,
    KEYS,
    PAPER_ABLATIONS,
    PAPER_RESULTS,
    SUITE_TABLES,
    TABLE13_METHODS,
    TABLE13_PER_SET,
    TABLE13_SETS,
    TABLE14,
    TABLES,
)
from pixmix.utils.errors import PixmixError
from pixmix.utils.jsonfiles import json_safe, write_json

MISSING = "-"
PAPERS_WAY = "[paper's way]"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def suite_columns(suite: str) -> tuple[str, ...]:
    """The summary columns of ``suite``'s report: its main paper table's (Table 2's for other suites)."""
    names = SUITE_TABLES.get(suite)
    return TABLES[names[0]].columns if names else KEYS


def _header(columns: Sequence[str]) -> list[str]:
    out = []
    for key in columns:
        info = COLUMN_INFO[key]
        label = f" {PAPERS_WAY}" if key in CORRECTED and key not in ("mfr", "mt5d") else ""
        out.append(f"{info.header}{label} {'↓' if info.lower else '↑'}")
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = KEYS) -> str:
    """A Markdown table: one row per name, the summary numbers of ``columns`` (default: Table 2's six)."""
    return _table(["Method", *_header(columns)], [[name, *(_fmt(row.get(k)) for k in columns)]
                                                  for name, row in rows.items()])


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


def _our_name(results: Mapping[str, Any], name: str) -> str:
    limit = subset_limit(results)
    return name if limit is None else f"{name} † (subset: {limit} per set)"


def summary_rows(results: Mapping[str, Any], name: str = "This run") -> dict[str, Mapping[str, Any]]:
    """Our row (marked ``†`` when it is on a subset, see :func:`subset_note`), then the paper's main table's."""
    rows: dict[str, Mapping[str, Any]] = {_our_name(results, name): results["summary"]}
    for method, row in PAPER_RESULTS.get(results["suite"], {}).items():
        rows[f"Paper: {method}"] = row
    return rows


def missing_note(summary: Mapping[str, Any], columns: Sequence[str]) -> str | None:
    """The note under a table whose columns this run has no number for (shown as ``-``)."""
    absent = [COLUMN_INFO[k].short for k in columns if summary.get(k) is None]
    if not absent:
        return None
    return (f"`{MISSING}`: not measured in this run ({', '.join(absent)}): the suite has no such set, it was "
            "absent under --data, or (ImageNet-P's normalised mFR / mT5D) AlexNet's rates were not given; see Notes")


def corrected_table(summary: Mapping[str, Any]) -> str:
    """Each comparable figure (computed as the paper's, printed beside it) with its corrected twin beside."""
    rows = []
    for key, (twin, what) in CORRECTED.items():
        if summary.get(twin) is None and (summary.get(key) is None or key in ("mfr", "mt5d")):
            continue  # nothing to compare (CIFAR-P's mFR has no normalised twin: the paper's is the raw one)
        rows.append([COLUMN_INFO[key].header, _fmt(summary.get(key), 2), _fmt(summary.get(twin), 2), what])
    return _table(["Measure", "As the paper's (beside its rows)", "Corrected or raw", "The other figure uses"], rows)


def _paper_section(results: Mapping[str, Any], table: str) -> list[str]:
    """One of the paper's tables for this suite: our row in its layout, then its rows."""
    t = TABLES[table]
    rows: dict[str, Mapping[str, Any]] = {_our_name(results, "This run"): results["summary"]}
    rows.update({f"Paper: {m}": r for m, r in t.rows.items()})
    out = [f"## {t.name}: {t.title} (↓ lower is better, ↑ higher is better)", "", summary_table(rows, t.columns), ""]
    note = missing_note(results["summary"], t.columns)
    return out + ([note, ""] if note else []) + ([t.note, ""] if t.note else [])


def _heading(results: Mapping[str, Any]) -> list[str]:
    ckpt = results.get("checkpoint", {})
    model = ckpt.get("model") or {}
    return [f"# PixMix evaluation: {results['suite']}", "",
            (f"Checkpoint `{ckpt.get('path')}` ({model.get('arch', '?')}, {model.get('num_classes', '?')} classes, "
             f"recipe {ckpt.get('recipe', {}).get('name', '?')}); seed {results['settings']['seed']}, "
             f"device {results['settings']['device']}, {results.get('seconds', '?')} s."), ""]


def _summary_sections(results: Mapping[str, Any]) -> list[str]:
    """The suite's paper tables with our row, the subset note, and the corrected figures beside."""
    suite = results["suite"]
    out: list[str] = []
    tables = SUITE_TABLES.get(suite, ())
    if not tables:
        out += ["## Summary (the paper's Table 2 layout)", "", summary_table(summary_rows(results)), "",
                "The spec lists no paper numbers for this suite.", ""]
    for table in tables:
        out += _paper_section(results, table)
    note = subset_note(results)
    if note is not None:
        out += [f"**{note}.**", ""]
    out += [f"Columns marked {PAPERS_WAY} are computed as the paper's numbers were, so that they compare with its "
            "rows; the corrected figures:", "", corrected_table(results["summary"]), ""]
    if suite == "imagenet" and "corruptions" in results:
        c = results["corruptions"]
        out += [(f"ImageNet-C: mCE {_fmt(c['mce'])}% is normalised by AlexNet's errors; the unnormalised mean "
                 f"error is {_fmt(c['mean_error'])}%."), ""]
    return out


def markdown(results: Mapping[str, Any]) -> str:
    """The whole ``results.md``: the suite's paper tables with our row, the corrected figures, detail
    tables and notes."""
    out = _heading(results) + _summary_sections(results)
    clean = results["clean"]
    out += ["## Clean", "", _table(["Error (%)", f"RMS calibration (%) {PAPERS_WAY}", "RMS calibration corrected (%)",
                                    "Images"],
                                   [[_fmt(clean["error"], 2), _fmt(clean.get("rms_calibration"), 2),
                                     _fmt(clean.get("rms_calibration_corrected"), 2), str(clean["samples"])]]), ""]
    for key, title in (("corruptions", "Corruptions"), ("c_bar", "Corruptions (-C-Bar)")):
        if key in results:
            out += [f"## {title}", "", _corruption_table(results[key]), ""]
    if isinstance(results.get("r"), Mapping):
        out += _renditions(results["r"])
    if "perturbations" in results:
        out += _perturbation_section(results["perturbations"])
    if "adversarial" in results:
        a = results["adversarial"]
        out += ["## Adversaries", "", (f"PGD L-inf, epsilon {a['epsilon'] * 255:g}/255, {a['steps']} steps of "
                                       f"{a['step_size'] * 255:g}/255, random start: error {_fmt(a['pgd_error'], 2)}% "
                                       f"on {a['samples']} images."), ""]
    if "anomaly" in results:
        out += _anomaly_section(results["anomaly"], results["suite"])
    out += ["## Notes", ""] + [f"- {note}" for note in results.get("notes", [])] + (
        [] if results.get("notes") else ["- none"])
    return "\n".join(out) + "\n"


def _renditions(r: Mapping[str, Any]) -> list[str]:
    return ["## Renditions (ImageNet-R)", "",
            _table(["Error (%)", f"RMS calibration (%) {PAPERS_WAY}", "RMS calibration corrected (%)"],
                   [[_fmt(r.get("error"), 2), _fmt(r.get("rms_calibration"), 2),
                     _fmt(r.get("rms_calibration_corrected"), 2)]]), ""]


def _perturbation_section(p: Mapping[str, Any]) -> list[str]:
    rows = [[name, "noise" if v["noise"] else "temporal", _fmt(v["flip_rate"], 2), _fmt(v["t5d"], 3),
             str(v["sequences"]), "yes" if v["in_mean"] else "no"] for name, v in p["per_perturbation"].items()]
    rows.append(["**mean**", "", _fmt(p["mfr"], 2), _fmt(p["mt5d"], 3), "", ""])
    out = ["## Consistency (-P)", "", _table(["Perturbation", "Kind", "Flip rate (%)", "T5D", "Sequences",
                                              "In mean"], rows), ""]
    if p.get("mfr_raw") is not None:
        out += [f"Unnormalised: mFR {_fmt(p['mfr_raw'], 2)}%, mT5D {_fmt(p.get('mt5d_raw'), 3)}.", ""]
    return out


def _anomaly_section(an: Mapping[str, Any], suite: str) -> list[str]:
    rows = [[name, _fmt(v["auroc"], 2), _fmt(v["aupr"], 2), _fmt(v["fpr95"], 2), _fmt(v.get("fpr95_ours"), 2),
             str(v["samples"])] for name, v in an["per_set"].items()]
    rows.append(["**mean**", _fmt(an["auroc"], 2), _fmt(an["aupr"], 2), _fmt(an["fpr95"], 2),
                 _fmt(an.get("fpr95_ours"), 2), ""])
    out = ["## Anomaly detection (score: negative max softmax probability)", "",
           _table(["OOD set", "AUROC (%) ↑", "AUPR (%) ↑", f"FPR95 (%) {PAPERS_WAY} ↓", "FPR95 ours (%) ↓", "Images"],
                  rows), "",
           (f"FPR95 {PAPERS_WAY}: Outlier Exposure's threshold whose recall of the anomalies is closest to 95%; "
            "ours: the first threshold recalling at least 95%."), ""]
    if suite == "places365":
        out += _table13_per_set(an)
    return out


def _table13_per_set(an: Mapping[str, Any]) -> list[str]:
    """Table 13 per OOD set: our AUROC / AUPR beside the paper's Baseline, OE and PixMix."""
    per = an["per_set"]
    rows = []
    for name in (*TABLE13_SETS, "average"):
        ours = {"auroc": an["auroc"], "aupr": an["aupr"]} if name == "average" else per.get(name, {})
        cells = [name]
        for metric in ("auroc", "aupr"):
            cells += [_fmt(ours.get(metric)), *(_fmt(TABLE13_PER_SET[m][name][metric]) for m in TABLE13_METHODS)]
        rows.append(cells)
    header = ["OOD set"] + [f"{metric} {who}" for metric in ("AUROC", "AUPR") for who in ("ours", *TABLE13_METHODS)]
    return ["## Table 13 per OOD set (Places365; the paper's Baseline, OE, PixMix beside ours)", "",
            _table(header, rows), "", f"`{MISSING}`: OOD set not evaluated in this run (see Notes).", ""]


def table14_markdown(ours: Mapping[tuple[int, int], Mapping[str, Any]]) -> str:
    """Table 14's k x beta grid (rows beta 5, 4, 3; columns k 2, 3, 4, as the paper): each cell our clean error
    / C mCE, then the paper's in parentheses; ``-`` where ``ours`` (``(k, beta)`` -> summary) has no run."""
    rows = []
    for beta in (5, 4, 3):
        cells = [f"beta = {beta}"]
        for k in (2, 3, 4):
            run, paper = ours.get((k, beta)) or {}, TABLE14[(k, beta)]
            cells.append(f"{_fmt(run.get('clean_error'))} / {_fmt(run.get('mce'))} "
                         f"({_fmt(paper['clean_error'])} / {_fmt(paper['mce'])})")
        rows.append(cells)
    return _table(["Clean error / C mCE (%), ours (paper's)", "k = 2", "k = 3", "k = 4"], rows)


def _corruption_table(c: Mapping[str, Any]) -> str:
    rows = [[name, *(_fmt(e, 1) for e in errs), _fmt(c["per_corruption"][name], 2)]
            for name, errs in c["errors"].items()]
    rows.append(["**mean**", "", "", "", "", "", _fmt(c["mean_error"], 2)])
    extra = "" if c.get("mce_normalisation") != "alexnet" else f"\n\nmCE (AlexNet-normalised): {_fmt(c['mce'], 2)}%"
    return (_table(["Corruption", "s1", "s2", "s3", "s4", "s5", "Mean error (%)"], rows)
            + f"\n\nRMS calibration on these images: {_fmt(c['rms_calibration'], 2)}% {PAPERS_WAY}, "
            + f"{_fmt(c.get('rms_calibration_corrected'), 2)}% corrected (every bin)" + extra)


def plot(rows: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "",
         columns: Sequence[str] = KEYS) -> Path:
    """One bar panel per column (default: Table 2's six), a bar per row name; missing values are marked n/a."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rows)
    ncols = 3 if len(columns) <= 6 else 4
    nrows = max(1, math.ceil(len(columns) / ncols))
    fig = Figure(figsize=(4 * ncols, 3.2 * nrows + 0.25 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(names))]
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    for ax, key in zip(axes, columns, strict=False):
        info = COLUMN_INFO[key]
        values = [rows[n].get(key) for n in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(names)), heights, color=colors)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        label = f" {PAPERS_WAY}" if key in CORRECTED and key not in ("mfr", "mt5d") else ""
        ax.set_title(f"{info.short}{label} {'↓' if info.lower else '↑'}", fontsize=9)
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
    plot(summary_rows(results), paths["png"], title=f"{results['suite']}: this run vs the paper{subtitle}",
         columns=suite_columns(results["suite"]))
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
    columns = suite_columns(next(iter(suites))) if len(suites) == 1 else KEYS
    if paper and len(suites) == 1:
        rows.update({f"Paper: {m}": row for m, row in PAPER_RESULTS.get(next(iter(suites)), {}).items()})
    if paper_ablations and suites == {"cifar100"}:
        rows.update({f"Paper: {m}": row for m, row in PAPER_ABLATIONS.items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "comparison.json", "md": out / "comparison.md", "png": out / "comparison.png"}
    write_json(paths["json"], json_safe({"suites": sorted(suites), "rows": rows}), sort_keys=False)
    notes = [f"- {name}: {note}" for name, r in results.items() for note in r.get("notes", [])]
    missing = [m for r in results.values() if (m := missing_note(r["summary"], columns))]
    paths["md"].write_text(f"# Comparison ({', '.join(sorted(suites))})\n\n" + summary_table(rows, columns) + "\n"
                           + "".join(f"\n{m}\n" for m in dict.fromkeys(missing))
                           + ("\n## Notes\n\n" + "\n".join(notes) + "\n" if notes else ""))
    plot(rows, paths["png"], title=", ".join(sorted(suites)), columns=columns)
    return paths


# COLUMNS, KEYS and the paper's rows are defined in pixmix.evaluate.paper and stay importable from here.
__all__ = ["COLUMNS", "KEYS", "MISSING", "PAPER_ABLATIONS", "PAPER_RESULTS", "compare", "corrected_table",
           "load_results", "markdown", "missing_note", "plot", "subset_limit", "subset_note", "suite_columns",
           "summary_rows", "summary_table", "table14_markdown", "write_report"]
