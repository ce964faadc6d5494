"""The paper's remaining experiments as bundled pipelines (issue 13): Table 5's Iterative row, Table 6 (``cutmix``),
Table 10 (``imagenet-mixing-sets``) and Table 14 (``sensitivity``).

Fast tests check the pipeline files against the paper's tables (numbers typed here from the spec's text, section
8b), the planning (options reach ``pixmix train`` / ``mixset build``, stages are shared, the paper profiles refuse
to start without their inputs) and the report's layout on hand-made results. The slow ones run every new pipeline
end to end in its smoke profile, on data shrunk further by ``--set`` and one shared stage cache.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mixset.cli.run import run as run_command
from pipelines.ablation_report import columns_for, grid_cells, markdown, paper_numbers, plot
from pipelines.runner import check_data, fingerprint, make_plan, run_pipeline, select_manifests
from pipelines.spec import PipelineError, load
from pipelines.stages import train_arguments

# The spec's text (section 8b), typed here rather than read from pixmix.evaluate.paper.
TABLE9_COLUMNS = ("clean_error", "mce", "cbar_error", "r_error", "mfr", "mt5d", "rms_calibration_clean",
                  "rms_calibration_c", "rms_calibration_cbar", "rms_calibration_r", "auroc", "aupr")
TABLE7_COLUMNS = ("clean_error", "mce", "cbar_error", "mfr", "mt5d", "pgd_error", "rms_calibration_clean",
                  "rms_calibration_c", "rms_calibration_cbar", "auroc", "aupr")
TABLE4_COLUMNS = ("clean_error", "mce", "mfr", "pgd_error", "rms_calibration_c", "auroc")
ITERATIVE = (21.1, 31.4, 5.6, 90.6, 12.7, 86.7)
TABLE6 = {"CutMix": (20.3, 51.5, 49.6, 12.0, 3.0, 97.0, 12.2, 29.3, 26.5, 74.4, 32.3),
          "PixMix": (20.3, 30.5, 36.7, 5.7, 1.6, 92.9, 7.0, 8.1, 8.9, 89.3, 70.9),
          "PixMix + CutMix": (19.9, 30.9, 35.5, 5.8, 1.7, 93.1, 4.4, 6.0, 5.9, 89.5, 68.6),
          "Baseline": (21.3, 50.0, 52.0, 10.7, 2.7, 96.8, 14.6, 31.2, 30.9, 77.7, 35.4)}
TABLE10 = {"Baseline": (23.9, 78.2, 61.0, 63.8, 58.0, 78.4, 5.6, 12.0, 20.7, 19.7, 79.7, 48.6),
           "Fractals": (22.0, 68.2, 47.4, 60.6, 52.6, 71.1, 4.0, 7.2, 7.4, 11.7, 85.3, 62.6),
           "ResNet only FVis": (22.1, 64.3, 45.3, 60.1, 50.7, 69.1, 3.9, 7.1, 7.6, 12.2, 85.1, 63.3),
           "Fractals + FVis": (22.6, 65.8, 44.3, 60.1, 51.1, 69.1, 3.6, 6.3, 5.8, 11.0, 85.7, 64.1)}
TABLE14 = {(2, 5): (20.2, 31.6), (3, 5): (20.0, 31.1), (4, 5): (20.1, 30.8),
           (2, 4): (19.7, 31.3), (3, 4): (20.3, 30.9), (4, 4): (20.1, 30.7),
           (2, 3): (20.3, 31.2), (3, 3): (20.2, 30.7), (4, 3): (20.3, 30.5)}


# --- the pipeline files against the paper's tables -------------------------------------------------------


def test_iterative_row_of_mixing_strategies() -> None:
    for profile in ("smoke", "paper"):
        spec = load("mixing-strategies", profile)
        v = spec.variant("iterative")
        assert v.row == "Iterative" and v.options["mixing"] == "online" and v.options["iterative_fvis_every"] > 0
        assert set(v.sources) == {"fractals", "fvis"}  # the static set until the first render
        assert paper_numbers(v.paper_row, "cifar100") == dict(zip(TABLE4_COLUMNS, ITERATIVE, strict=True))
    smoke = load("mixing-strategies", "smoke").variant("iterative").options
    assert (smoke["iterative_fvis_every"], smoke["iterative_fvis_pool"], smoke["iterative_fvis_steps"],
            smoke["iterative_fvis_units"]) == (2, 8, 2, 4)


def test_fvis_sets_take_the_papers_archive_fvis_unless_offline() -> None:
    """The paper profile's FVis (manifests "default") declare the paper's archive FVis, which the build takes
    first; the smoke profile ("offline") renders them all; no FVis manifest is no error (units are rendered)."""
    sources, texts, why = select_manifests(["fractals", "fvis"], "default")
    assert why is None and sources == ["fractals", "fvis"]
    assert {"pixmix-paper-fractals.toml", "pixmix-paper-fvis.toml"} <= set(texts)
    sources, texts, why = select_manifests(["fvis"], "offline")
    assert why is None and sources == ["fvis"] and texts == {}


def test_cutmix_pipeline_rows_columns_and_numbers() -> None:
    for profile in ("smoke", "paper"):
        spec = load("cutmix", profile)
        assert [v.row for v in spec.variants] == ["CutMix", "PixMix", "PixMix + CutMix", "Baseline"]
        cutmix = {v.row: v.options["cutmix"] for v in spec.variants}
        assert cutmix == {"CutMix": 0.5, "PixMix": None, "PixMix + CutMix": 0.5, "Baseline": None}
        assert [v.baseline for v in spec.variants] == [True, False, False, True]
        assert columns_for("cifar100", spec.paper_table) == TABLE7_COLUMNS
        for v in spec.variants:
            assert paper_numbers(v.paper_row, "cifar100", spec.paper_table) == dict(
                zip(TABLE7_COLUMNS, TABLE6[v.row], strict=True)), v.row
    assert load("cutmix", "paper").variant("pixmix-cutmix").options["mixing"] == "online"


def test_sensitivity_pipeline_is_the_full_grid_in_the_paper_profile() -> None:
    paper = load("sensitivity", "paper")
    cells = {(v.options["k"], v.options["beta"]): v for v in paper.variants}
    assert set(cells) == set(TABLE14) and len(paper.variants) == 9
    assert paper.layout == "grid" and paper.paper_table == "table14"
    for (k, beta), v in cells.items():
        assert v.row == f"k={k}, beta={beta}" and set(v.sources) == {"fractals", "fvis"}
        assert paper_numbers(v.paper_row, "cifar100", "table14") == {"clean_error": TABLE14[(k, beta)][0],
                                                                     "mce": TABLE14[(k, beta)][1]}
        assert v.options["limit"] == 14230 and v.options["mixing"] == "online"
    smoke = load("sensitivity", "smoke")
    assert {(v.options["k"], v.options["beta"]) for v in smoke.variants} == {(2, 3), (2, 5), (4, 3), (4, 5)}


def test_imagenet_pipeline_rows_columns_and_numbers() -> None:
    for profile in ("smoke", "paper"):
        spec = load("imagenet-mixing-sets", profile)
        assert [v.row for v in spec.variants] == list(TABLE10)
        assert all(v.options["dataset"] == "imagenet" for v in spec.variants)
        assert columns_for("imagenet", spec.paper_table) == TABLE9_COLUMNS == columns_for("imagenet")
        for v in spec.variants:
            assert paper_numbers(v.paper_row, "imagenet", spec.paper_table) == dict(
                zip(TABLE9_COLUMNS, TABLE10[v.row], strict=True)), v.row
        resnet = spec.variant("resnet-fvis")
        assert resnet.sources == ("fvis",) and resnet.options["fvis_models"] == ["resnet50"]
        assert resnet.options["fvis_checkpoint"] == ("generate" if profile == "smoke" else "pretrained")
    paper = load("imagenet-mixing-sets", "paper").variants[0].options
    assert (paper["preset"], paper["pretrained"], paper["mixing"], paper["epochs"]) == ("imagenet", "required",
                                                                                       "online", None)
    from pixmix.train.trainer import PRESETS

    assert PRESETS["imagenet"].epochs == 90 and PRESETS["imagenet"].arch == "resnet50"  # the paper's fine-tuning


def test_variant_profiles_and_report_keys_are_checked(tmp_path: Path) -> None:
    base = '[profiles.smoke]\n[profiles.paper]\n[[variants]]\nname = "a"\nbaseline = true\n'
    cases = {'profiles = ["huge"]\n': "unknown profile(s) huge", 'profiles = "paper"\n': "must be a list",
             'profiles = ["paper"]\n': "declares no [[variants]] (for profile smoke)"}
    for extra, message in cases.items():
        path = tmp_path / "p.toml"
        path.write_text(base + extra)
        with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load(path, "smoke")
    for top, message in (('paper_table = "table99"\n', "paper_table must be one of"),
                         ('layout = "pie"\n', "layout must be one of")):
        path = tmp_path / "q.toml"
        path.write_text(top + base)
        with pytest.raises(PipelineError, match=message):
            load(path, "smoke")


# --- planning: the options reach the stages --------------------------------------------------------------


def test_cutmix_and_iterative_options_reach_pixmix_train(tmp_path: Path) -> None:
    plan = make_plan(load("cutmix", "smoke"), tmp_path)
    trains = {name: vp.stages["train"] for name, vp in plan.variants.items()}
    for name, expected in (("cutmix", 0.5), ("pixmix-cutmix", 0.5), ("fractals-fvis", None), ("baseline", None)):
        t = trains[name]
        assert t.config.get("cutmix") == expected and t.config["resolved"]["cutmix"] == (expected or 0.0), name
        args = train_arguments(t.config, t.options, Path("s"), Path("o"))
        assert (args[args.index("--cutmix") + 1] if "--cutmix" in args else None) == (
            None if expected is None else str(expected)), name
    assert trains["cutmix"].config["preset"] == "smoke-baseline"
    # PixMix and the baseline are the very stages of mixing-sets (shared through --cache).
    sets = make_plan(load("mixing-sets", "smoke"), tmp_path)
    for name in ("fractals-fvis", "baseline"):
        assert sets.variants[name].stages["train"].hash == trains[name].hash
    # The shards of PixMix + CutMix are PixMix's: CutMix happens while training.
    assert plan.variants["pixmix-cutmix"].stages["shard"] is plan.variants["fractals-fvis"].stages["shard"]

    strategies = make_plan(load("mixing-strategies", "smoke"), tmp_path)
    it = strategies.variants["iterative"].stages["train"]
    args = train_arguments(it.config, it.options, Path("s"), Path("o"), Path("m"))
    for flag, value in (("--iterative-fvis-every", "2"), ("--iterative-fvis-pool", "8"),
                        ("--iterative-fvis-steps", "2"), ("--iterative-fvis-units", "4"), ("--mixset", "m")):
        assert args[args.index(flag) + 1] == value, flag
    assert "--iterative-fvis-start-epoch" not in args  # 0: the library's default
    assert it.inputs["shard"] is strategies.variants["baseline"].stages["shard"]  # online: plain shards
    with pytest.raises(PipelineError, match="iterative: Iterative PixMix renders .* mixing = 'online'"):
        make_plan(load("mixing-strategies", "smoke", {"iterative": {"mixing": "pregenerated"}}), tmp_path)


def test_sensitivity_cells_share_data_build_and_shards(tmp_path: Path) -> None:
    plan = make_plan(load("sensitivity", "smoke"), tmp_path)
    kinds = [s.kind for s in plan.stages]
    assert kinds.count("data") == kinds.count("build") == kinds.count("shard") == 1
    assert kinds.count("train") == kinds.count("eval") == 4
    for name, vp in plan.variants.items():
        k, beta = (int(x) for x in name.removeprefix("k").split("-beta"))
        train = vp.stages["train"]
        assert (train.config["k"], train.config["beta"]) == (k, beta)
        assert (train.config["resolved"]["k"], train.config["resolved"]["beta"]) == (k, beta)
        args = train_arguments(train.config, train.options, Path("s"), Path("o"))
        assert args[args.index("--k") + 1] == str(k) and args[args.index("--beta") + 1] == str(beta)
    rows = {r["name"]: (r["k"], r["beta"]) for r in plan.report.config["variants"]}
    assert rows == {"k2-beta3": (2, 3), "k2-beta5": (2, 5), "k4-beta3": (4, 3), "k4-beta5": (4, 5)}


def _write_weights(path: Path) -> Path:
    from mixset.sources.fvis import load_model

    torch.save(load_model("resnet50", "random")[0].state_dict(), path)
    return path


def test_imagenet_paper_profile_needs_data_and_pretrained_and_keys_the_weights(tmp_path: Path) -> None:
    from pipelines.synthetic_imagenet import write_imagenet_suite

    result = CliRunner().invoke(run_command, ["imagenet-mixing-sets", "--profile", "paper", "--dry-run"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "needs --data DIR holding train/, val/" in lines[0], lines
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError, match=r"empty/train not found \(of 17 missing\)"):
        check_data(empty, "imagenet")
    data = write_imagenet_suite(tmp_path / "imagenet", classes=2, per_class=1, val_per_class=1, size=16,
                                p_frames=2, ood_images=1)
    check_data(data, "imagenet")
    result = CliRunner().invoke(run_command, ["imagenet-mixing-sets", "--profile", "paper", "--data", str(data),
                                              "--work", str(tmp_path / "w"), "--dry-run"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "pass --pretrained FILE" in lines[0], lines

    weights = _write_weights(tmp_path / "resnet50.pth")
    spec = load("imagenet-mixing-sets", "paper", {None: {"pretrained": str(weights)}})
    plan = make_plan(spec, tmp_path / "w", data=data)
    resnet = plan.variants["resnet-fvis"].stages
    build_weights = resnet["build"].inputs["weights"]
    assert build_weights.external and build_weights.folder == weights.resolve()
    assert build_weights.config["model"] == "resnet50"
    assert "weights" not in plan.variants["fractals-fvis"].stages["build"].inputs  # the default FVis models
    for name, vp in plan.variants.items():
        train = vp.stages["train"]
        assert train.inputs["pretrained"].folder == weights.resolve() and "pretrained" not in train.config, name
        assert train.config["preset"] == ("imagenet-baseline" if name == "baseline" else "imagenet")
        assert train.config.get("mixing") == (None if name == "baseline" else "online"), name
    # The stage hashes follow the weights file, not its path.
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    touched = make_plan(spec, tmp_path / "w", data=data)
    changed = {s.kind + "/" + s.name for s, t in zip(plan.stages, touched.stages, strict=True) if s.hash != t.hash}
    assert {"build/fvis", "train/baseline", "train/resnet-fvis"} <= changed and "data/imagenet" not in changed
    assert "build/fractals" not in changed
    # The command line's --pretrained is the option of every variant; the training command gets it.
    result = CliRunner().invoke(run_command, ["imagenet-mixing-sets", "--profile", "paper", "--data", str(data),
                                              "--pretrained", str(weights), "--work", str(tmp_path / "w"),
                                              "--dry-run"])
    assert result.exit_code == 0 and "weights resnet50-resnet50" in result.output, result.output


def test_imagenet_fingerprint_follows_class_folders(tmp_path: Path) -> None:
    from pipelines.runner import FINGERPRINT_DEPTH
    from pipelines.synthetic_imagenet import write_imagenet_suite

    data = write_imagenet_suite(tmp_path / "in", classes=2, per_class=1, val_per_class=1, size=16, p_frames=2,
                                ood_images=1)
    subs, depths = list(FINGERPRINT_DEPTH["imagenet"]), FINGERPRINT_DEPTH["imagenet"]
    before = fingerprint(data, subs, depths)
    assert fingerprint(data, subs, depths) == before
    wnid = next((data / "train").iterdir())
    extra = wnid / "extra.JPEG"
    Image.new("RGB", (16, 16)).save(extra)
    os.utime(wnid, ns=(wnid.stat().st_atime_ns, wnid.stat().st_mtime_ns + 10**9))  # coarse file-system clocks
    assert fingerprint(data, subs, depths) != before


# --- the report, on hand-made results --------------------------------------------------------------------


def _results(suite: str, variants: dict[str, dict], paper_table: str | None = None, layout: str = "table") -> dict:
    entries = {}
    for name, v in variants.items():
        entries[name] = {"row": v["row"], "paper_row": v["row"], "sources": [], "baseline": False, "partners": "both",
                         "k": v.get("k"), "beta": v.get("beta"), "cutmix": None, "iterative": False,
                         "status": "ok", "reason": None, "summary": v.get("summary"),
                         "paper": paper_numbers(v["row"], suite, paper_table)}
    return {"pipeline": "p", "title": "T", "column": "Row", "profile": "smoke", "suite": suite, "file": "p.toml",
            "paper_table": paper_table, "layout": layout, "columns": list(columns_for(suite, paper_table)),
            "variants": entries, "notes": []}


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_imagenet_report_has_table_9_columns_and_dashes_for_missing_measures(tmp_path: Path) -> None:
    summary = {"clean_error": 12.34, "mce": 56.78, "r_error": 40.0, "mfr": None, "auroc": float("nan")}
    results = _results("imagenet", {"fractals": {"row": "Fractals", "summary": summary}}, "table10")
    table = markdown(results)
    cells = _row(table, "Fractals")
    ours, paper = cells[2::2], cells[3::2]
    assert len(ours) == len(TABLE9_COLUMNS) == 12
    assert ours == ["12.3", "56.8", "-", "40.0", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert paper == [f"{x:.1f}" for x in TABLE10["Fractals"]]
    header = next(line for line in table.splitlines() if line.startswith("| Row |"))
    assert "R err." in header and "RMS R [paper's way]" in header and "PGD" not in header
    path = plot(results, tmp_path / "r.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 1600  # four panels a row: twelve columns


def test_sensitivity_report_is_the_papers_grid(tmp_path: Path) -> None:
    variants = {"a": {"row": "k=2, beta=3", "k": 2, "beta": 3, "summary": {"clean_error": 11.11, "mce": 22.22}},
                "b": {"row": "k=4, beta=5", "k": 4, "beta": 5, "summary": {"clean_error": 33.3, "mce": 44.4}},
                "c": {"row": "recipe", "summary": {"clean_error": 55.5, "mce": 66.6}},  # k, beta: the recipe's
                "d": {"row": "k=3, beta=4", "k": 3, "beta": 4}}  # not evaluated
    results = _results("cifar100", variants, "table14", "grid")
    assert grid_cells(results) == {(2, 3): variants["a"]["summary"], (4, 5): variants["b"]["summary"],
                                   (4, 3): variants["c"]["summary"]}
    table = markdown(results)
    grid = table.split("## Every run")[0]
    assert _row(grid, "beta = 5") == ["beta = 5", "- / - (20.2 / 31.6)", "- / - (20.0 / 31.1)",
                                      "33.3 / 44.4 (20.1 / 30.8)"]
    assert _row(grid, "beta = 4") == ["beta = 4", "- / - (19.7 / 31.3)", "- / - (20.3 / 30.9)", "- / - (20.1 / 30.7)"]
    assert _row(grid, "beta = 3") == ["beta = 3", "11.1 / 22.2 (20.3 / 31.2)", "- / - (20.2 / 30.7)",
                                      "55.5 / 66.6 (20.3 / 30.5)"]
    # The list below the grid: Table 4's columns, the paper's clean error and mCE only.
    assert _row(table, "k=2, beta=3")[2:6] == ["11.1", "20.3", "22.2", "31.2"]
    assert _row(table, "k=2, beta=3")[6:] == ["-"] * 8


# --- end to end, smoke profiles --------------------------------------------------------------------------

# Smaller than the profiles' own data: the plumbing is what these runs check.
SHRINK = ["train_images=64", "test_images=20", "c_per_severity=4", "p_sequences=2", "p_frames=3", "ood_images=4",
          "ood_samples=4", "limit=6", "pgd_samples=4"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages")


def _run(pipeline: str, work: Path, cache: Path, extra: list[str] | None = None, **kwargs):
    lines: list[str] = []
    result = run_pipeline(pipeline, "smoke", work, cache=cache, overrides=SHRINK + (extra or []), log=lines.append,
                          **kwargs)
    return result, lines


def _checkpoint_config(result, name: str) -> dict:
    path = result.plan.variants[name].stages["train"].folder / "checkpoints" / "last.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def _finite(summary: dict, keys) -> bool:
    return all(isinstance(summary.get(k), float) and math.isfinite(summary[k]) for k in keys)


@pytest.mark.slow
def test_cutmix_smoke_end_to_end(tmp_path: Path, cache: Path) -> None:
    result, _ = _run("cutmix", tmp_path / "cutmix", cache)
    assert {name: _checkpoint_config(result, name)["cutmix"] for name in result.plan.variants} == {
        "cutmix": 0.5, "fractals-fvis": 0.0, "pixmix-cutmix": 0.5, "baseline": 0.0}
    table = (tmp_path / "cutmix" / "results.md").read_text()
    for row, numbers in TABLE6.items():
        cells = _row(table, row)
        assert cells[3::2] == [f"{x:.1f}" for x in numbers], row  # the paper's Table 6 (Baseline: Table 7) beside
        assert cells[6] == "-", row  # no -C-Bar set in the generated data: C-Bar error not measured
    for v in result.results["variants"].values():
        assert _finite(v["summary"], TABLE4_COLUMNS), v
    with Image.open(tmp_path / "cutmix" / "results.png") as im:
        assert im.format == "PNG"


@pytest.mark.slow
def test_sensitivity_smoke_end_to_end(tmp_path: Path, cache: Path) -> None:
    result, _ = _run("sensitivity", tmp_path / "sens", cache)
    for name in result.plan.variants:
        config = _checkpoint_config(result, name)
        assert f"k{config['k']}-beta{config['beta']:g}" == name
    table = (tmp_path / "sens" / "results.md").read_text()
    summaries = {(v["k"], v["beta"]): v["summary"] for v in result.results["variants"].values()}
    s = summaries[(2, 3)]
    assert f"| beta = 3 | {s['clean_error']:.1f} / {s['mce']:.1f} (20.3 / 31.2) | - / - (20.2 / 30.7) |" in table
    assert all(_finite(s, TABLE4_COLUMNS) for s in summaries.values())


@pytest.mark.slow
def test_iterative_smoke_end_to_end(tmp_path: Path, cache: Path) -> None:
    every = 1
    result, _ = _run("mixing-strategies", tmp_path / "strategies", cache, [f"iterative.iterative_fvis_every={every}"],
                     only=["iterative"])
    assert _checkpoint_config(result, "iterative")["iterative_fvis_every"] == every
    log = [json.loads(line) for line in
           (result.plan.variants["iterative"].stages["train"].folder / "log.jsonl").read_text().splitlines()]
    steps = log[-1]["step"]
    assert steps == 64 // 32  # train_images / the smoke preset's batch (drop_last)
    # With a static set, refreshes come before steps every, 2 * every, ... (pixmix.train.iterative's schedule).
    assert log[-1]["fvis_refreshes"] == (steps - 1) // every >= 1
    assert _finite(result.results["variants"]["iterative"]["summary"], TABLE4_COLUMNS)
    cells = _row((tmp_path / "strategies" / "results.md").read_text(), "Iterative")
    assert cells[3::2] == [f"{x:.1f}" for x in ITERATIVE]


@pytest.mark.slow
def test_imagenet_mixing_sets_smoke_end_to_end(tmp_path: Path, cache: Path) -> None:
    result, _ = _run("imagenet-mixing-sets", tmp_path / "imagenet", cache, ["train_images=6", "test_images=3"])
    build = result.plan.variants["resnet-fvis"].stages["build"]
    manifest = json.loads((build.folder / "manifest.json").read_text())
    generated = result.plan.variants["resnet-fvis"].stages["weights"].folder / "resnet50.pt"
    assert str(generated) in json.dumps(manifest)  # rendered from the weights file (--fvis-checkpoint)
    assert _checkpoint_config(result, "fractals")["arch"] == "smoke"
    assert _checkpoint_config(result, "fractals")["preset"] == "imagenet"
    table = (tmp_path / "imagenet" / "results.md").read_text()
    measured = ("clean_error", "mce", "cbar_error", "r_error", "rms_calibration_clean", "rms_calibration_c",
                "rms_calibration_cbar", "rms_calibration_r", "auroc", "aupr")
    for row, numbers in TABLE10.items():
        cells = _row(table, row)
        assert cells[3::2] == [f"{x:.1f}" for x in numbers], row
        ours = dict(zip(TABLE9_COLUMNS, cells[2::2], strict=True))
        assert ours["mfr"] == ours["mt5d"] == "-"  # no AlexNet rates to normalise ImageNet-P by (p_baseline)
        assert all(ours[k] != "-" for k in measured), (row, ours)
    for v in result.results["variants"].values():
        assert _finite(v["summary"], measured), v
