"""``mixset run``: the declarative ablation pipelines (Table 4 mixing sets, Table 5 mixing strategies).

The smoke profile runs end to end once per module (tiny synthetic CIFAR-100, a tiny CNN, one epoch);
the other tests check what the runner promises around it: reruns do no work and touch no file, a
changed option reruns only what depends on it, the plan is printed without running, the paper
profile refuses to start without its data, and the torchrun command line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from mixset.cli.run import run as run_command
from pipelines.runner import make_plan, run_pipeline
from pipelines.spec import NATURAL, PipelineError, load
from pipelines.stages import (
    Launch,
    torchrun_command,
    train_arguments,
)
from pixmix.evaluate.report import KEYS, PAPER_ABLATIONS, PAPER_RESULTS


def known_sources() -> set[str]:
    from mixset.build.builder import SOURCES

    return set(SOURCES) | {NATURAL}


def runnable(pipeline: str) -> set[str]:
    """The variants of a bundled pipeline that this checkout can run (sources known)."""
    spec = load(pipeline, "smoke")
    return {v.name for v in spec.variants
            if set(v.sources) <= known_sources()}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Run:
    def __init__(self, work: Path, cache: Path | None = None) -> None:
        self.work, self.cache, self.lines = work, cache, []

    def __call__(self, pipeline: str = "mixing-sets", **kwargs):
        self.lines = []
        kwargs.setdefault("cache", self.cache)
        return run_pipeline(pipeline, "smoke", self.work, log=self.lines.append, **kwargs)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The whole mixing-sets pipeline under the smoke profile, once."""
    runner = Run(tmp_path_factory.mktemp("pipeline") / "sets")
    result = runner()
    return runner, result, list(runner.lines)


# --- the smoke run ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_evaluates_every_variant(smoke) -> None:
    runner, result, lines = smoke
    expected = runnable("mixing-sets")
    assert {"fractals", "fvis", "fractals-fvis", "natural", "baseline"} <= expected
    results = json.loads((runner.work / "results.json").read_text())
    assert results == result.results
    assert set(results["variants"]) == {v.name for v in load("mixing-sets", "smoke").variants}
    for name, v in results["variants"].items():
        if name not in expected:  # a source this checkout's mixset build does not know yet
            assert v["status"] == "not run" and "not known" in v["reason"], (name, v)
            continue
        assert v["status"] == "ok", (name, v)
        for key in KEYS:
            value = v["summary"][key]
            assert isinstance(value, float) and math.isfinite(value), (name, key, value)
        assert 0 <= v["summary"]["clean_error"] <= 100
        assert Path(v["stages"]["train"], "checkpoints", "last.pt").is_file()
        assert v["paper"] is not None and v["paper"]["mce"] > 0
    # One line per stage, each of them run, plus the summary table.
    stage_lines = [line for line in lines if line.startswith("[")]
    assert len(stage_lines) == len(result.plan.stages) == len(result.ran)
    assert all(" ran " in line for line in stage_lines)
    assert any(line.startswith("Mixing set") for line in lines)
    # Mixing sets are built once per distinct set of sources and shared by the variants that use them.
    builds = [s for s in result.plan.stages if s.kind == "build"]
    assert len(builds) == len({s.name for s in builds})
    datas = [s for s in result.plan.stages if s.kind == "data"]
    assert len(datas) == 1 and len(datas[0].variants) == len(expected)


@pytest.mark.slow
def test_smoke_results_table_and_plot(smoke) -> None:
    runner, _, _ = smoke
    table = (runner.work / "results.md").read_text()
    spec = load("mixing-sets", "smoke")
    for v in spec.variants:
        row = next(line for line in table.splitlines() if line.startswith(f"| {v.row} | `{v.name}`"))
        paper = PAPER_ABLATIONS.get(v.paper_row) or PAPER_RESULTS["cifar100"][v.paper_row]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3::2] == [f"{paper[k]:.1f}" for k in KEYS], row  # the paper's numbers beside ours
        if v.name in runnable("mixing-sets"):
            assert "-" not in cells[2::2], row  # '-': a measure this run lacks
    with Image.open(runner.work / "results.png") as im:
        assert im.format == "PNG" and im.width > 800


@pytest.mark.slow
def test_second_run_does_no_work_and_touches_nothing(smoke) -> None:
    runner, first, _ = smoke
    before = snapshot(runner.work)
    again = runner()
    assert again.ran == []
    assert len(again.up_to_date) == len(first.plan.stages)
    stage_lines = [line for line in runner.lines if line.startswith("[")]
    assert stage_lines and all("up to date" in line for line in stage_lines)
    assert snapshot(runner.work) == before
    assert again.results == first.results


@pytest.mark.slow
def test_changing_one_variant_reruns_only_its_stages(smoke) -> None:
    runner, first, _ = smoke
    changed = runner(overrides=["fractals.views=2"])
    kinds = sorted(stage_id.split("/")[0] for stage_id in changed.ran)
    assert kinds == ["eval", "report", "shard", "train"], changed.ran
    assert all(s.startswith(("shard/fractals-", "train/fractals-", "eval/fractals-", "report/")) for s in changed.ran)
    shards = json.loads(Path(changed.plan.variants["fractals"].stages["shard"].folder, "manifest.json").read_text())
    assert shards["views"] == 2
    log = Path(changed.plan.variants["fractals"].stages["train"].folder, "log.jsonl").read_text()
    assert json.loads(log.splitlines()[0])["view"] == 0
    assert changed.results["variants"]["fvis"] == first.results["variants"]["fvis"]
    # Back to the original options: every stage (the report too) is still there, only results.* is republished.
    back = runner()
    assert back.ran == []
    assert json.loads((runner.work / "results.json").read_text()) == first.results


@pytest.mark.slow
def test_mixing_strategies_share_stages_with_mixing_sets(smoke) -> None:
    runner, first, _ = smoke
    strategies = Run(runner.work.parent / "strategies", cache=first.plan.cache)
    result = strategies("mixing-strategies")
    expected = runnable("mixing-strategies")
    assert {"fractals-fvis", "baseline"} <= expected
    ran_variants = {stage_id.split("/")[1].rsplit("-", 1)[0] for stage_id in result.ran}
    # Data, the Fractals + FVis set, PixMix and the baseline come from the mixing-sets run.
    assert ran_variants <= {"input-only", "mixset-only", "iterative", "mixing-strategies"}, result.ran
    for name in expected:
        summary = result.results["variants"][name]["summary"]
        assert all(math.isfinite(summary[k]) for k in KEYS), (name, summary)
    shared = "fractals-fvis"
    assert result.results["variants"][shared]["summary"] == first.results["variants"][shared]["summary"]
    table = (strategies.work / "results.md").read_text()
    for row in ("Mix Input only", "Mix Aug only", "PixMix (both)", "Baseline"):
        assert f"| {row} |" in table
    assert f"{PAPER_ABLATIONS['Mix Input only']['mce']:.1f}" in table


@pytest.mark.slow
def test_a_failed_stage_leaves_no_stamp_and_the_rerun_resumes_there(tmp_path: Path, monkeypatch) -> None:
    from pipelines import stages

    runner = Run(tmp_path / "work")

    def broken(stage, ctx):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(stages.EXECUTORS, "eval", broken)
    with pytest.raises(PipelineError) as failed:
        runner(only=["fractals"])
    message = str(failed.value)
    assert "\n" not in message and message.startswith("stage eval/fractals-") and "disk on fire second line" in message
    ran = [line for line in runner.lines if " ran " in line]
    assert [line.split()[2] for line in ran] == ["data", "build", "shard", "train"]
    plan = make_plan(load("mixing-sets", "smoke"), runner.work, only=["fractals"])
    evaluation = plan.variants["fractals"].stages["eval"]
    assert not evaluation.stamp.exists() and "disk on fire" in (evaluation.folder / "failed.json").read_text()
    monkeypatch.undo()
    again = runner(only=["fractals"])
    assert not (evaluation.folder / "failed.json").exists()
    assert [s.split("/")[0] for s in again.ran] == ["eval", "report"]
    assert set(again.results["variants"]) == {"fractals"}
    table = (runner.work / "results.md").read_text()
    assert "| Fractals | `fractals` |" in table and "`fvis`" not in table


# --- planning, without running ---------------------------------------------------------------------------


def test_dry_run_lists_stages_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = CliRunner().invoke(run_command, ["mixing-sets", "--work", str(work), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    for kind in ("data", "build", "shard", "train", "eval", "report"):
        assert any(line.split()[2:3] == [kind] and "would run" in line for line in out.splitlines()), (kind, out)
    assert "skipped variant" in out or runnable("mixing-sets") == {v.name for v in load("mixing-sets").variants}
    assert not work.exists()


def test_paper_profile_without_data_fails_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(run_command, ["mixing-sets", "--profile", "paper", "--work", str(tmp_path / "w")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "needs --data DIR" in lines[0] and "cifar-100-python/" in lines[0], result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(run_command, ["mixing-sets", "--profile", "paper", "--data", str(empty), "--dry-run"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cifar-100-python/train not found" in lines[0], result.output
    assert not (tmp_path / "w").exists()


def test_bad_options_fail_in_one_line(tmp_path: Path) -> None:
    for args, message in ((["--set", "no_such_option=1"], "unknown option 'no_such_option'"),
                          (["--set", "nobody.views=2"], "no variant nobody"),
                          (["--only", "nobody"], "no variant 'nobody'"),
                          (["--profile", "huge"], "no profile 'huge'"),
                          (["--set", "views=two"], "option 'views' must be int")):
        result = CliRunner().invoke(run_command, ["mixing-sets", "--work", str(tmp_path), "--dry-run", *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(run_command, ["no-such-pipeline", "--dry-run"])
    assert result.exit_code == 1 and "mixing-sets" in result.output


def test_cli_shows_user_errors_in_one_line_and_bugs_with_their_traceback(tmp_path: Path, monkeypatch) -> None:
    import pipelines.runner
    from pixmix.utils.errors import PixmixError

    args = ["mixing-sets", "--work", str(tmp_path / "w"), "--dry-run"]
    result = CliRunner().invoke(run_command, [*args, "--set", "views"])  # no '='
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.strip().splitlines() == ["Error: --set expects KEY=VALUE or VARIANT.KEY=VALUE, got 'views'"]
    assert issubclass(PipelineError, PixmixError)

    def failing(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(pipelines.runner, "run_pipeline", failing)
    # A user error with the parameter at fault: one line, the pipeline option shown as the way to set it.
    failure = PixmixError("lr must be > 0, got -1", param="lr")
    result = CliRunner().invoke(run_command, args)
    assert result.exit_code == 1 and result.output.strip().splitlines() == ["Error: --set lr must be > 0, got -1"]
    # Anything else (a ValueError too) is a bug of the library: it propagates, with its traceback.
    for failure in (RuntimeError("a library bug"), ValueError("not a user error")):
        result = CliRunner().invoke(run_command, args)
        assert result.exception is failure and result.exc_info is not None, result.output
        assert "Error:" not in result.output


def test_a_changed_option_changes_only_downstream_hashes(tmp_path: Path) -> None:
    base = make_plan(load("mixing-sets", "smoke"), tmp_path)
    changed = make_plan(load("mixing-sets", "smoke", {"fractals": {"views": 3}}), tmp_path)
    differ = {s.kind + "/" + s.name for s, t in zip(base.stages, changed.stages, strict=True) if s.hash != t.hash}
    assert differ == {"shard/fractals", "train/fractals", "eval/fractals", "report/mixing-sets"}
    fvis = make_plan(load("mixing-sets", "smoke", {None: {"fvis_steps": 3}}), tmp_path)
    differ = {s.kind + "/" + s.name for s, t in zip(base.stages, fvis.stages, strict=True) if s.hash != t.hash}
    touched = {v for v in ("fvis", "fractals-fvis") if v in runnable("mixing-sets")}
    assert differ == ({"build/fvis", "build/fractals+fvis", "report/mixing-sets"}
                      | {f"{k}/{v}" for k in ("shard", "train", "eval") for v in touched})
    # Devices do not change what a stage computes: same hashes. Loader workers decide the training data
    # order (each reads its own range), so they change the training stages and what follows them only.
    how = make_plan(load("mixing-sets", "smoke", {None: {"device": "auto"}}), tmp_path)
    assert [s.hash for s in how.stages] == [s.hash for s in base.stages]
    workers = make_plan(load("mixing-sets", "smoke", {None: {"workers": 2}}), tmp_path)
    differ = {s.kind for s, t in zip(base.stages, workers.stages, strict=True) if s.hash != t.hash}
    assert differ == {"train", "eval", "report"}
    # A global --set wins over a variant's own (per-profile) option.
    limits = {v.name: v.options["limit"] for v in load("mixing-sets", "paper", {None: {"limit": 50}}).variants}
    assert set(limits.values()) == {50}, limits


def test_unavailable_variants_are_skipped_or_refused_with_strict(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('name = "p"\n[profiles.smoke]\ndata = "generate"\n'
                        '[[variants]]\nname = "nope"\nsources = ["no-such-source"]\n'
                        '[[variants]]\nname = "fractals"\nrow = "Fractals"\nsources = ["fractals"]\n')
    plan = make_plan(load(pipeline, "smoke"), tmp_path / "w")
    assert "not known" in plan.variants["nope"].skipped and plan.variants["fractals"].skipped is None
    with pytest.raises(PipelineError, match="variant nope: source no-such-source"):
        make_plan(load(pipeline, "smoke"), tmp_path / "w", strict=True)


# --- distributed training: the torchrun command ----------------------------------------------------------


def test_torchrun_command_construction(tmp_path: Path) -> None:
    from pipelines.synthetic_data import write_cifar100_suite

    data = write_cifar100_suite(tmp_path / "data", train=4, test=4, c_per_severity=2, p_sequences=0)
    plan = make_plan(load("mixing-sets", "paper"), tmp_path / "w", data=data, only=["fractals"])
    train = plan.variants["fractals"].stages["train"]
    shards = plan.variants["fractals"].stages["shard"].folder
    args = train_arguments(train.config, train.options, shards, train.folder)
    assert args[:7] == ["train", "--preset", "cifar", "--shards", str(shards), "--out", str(train.folder)]
    assert "--quiet" in args and args[args.index("--workers") + 1] == "8"

    multi = Launch(nodes=2, nproc_per_node=8, rdzv_endpoint="node0:29400", torchrun=["torchrun"], pixmix="pixmix")
    assert torchrun_command(args, multi, run_id="pixmix-abc") == [
        "torchrun", "--nnodes", "2", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "node0:29400", "--rdzv_id", "pixmix-abc", "--no-python", "pixmix", *args]
    # A job-wide id (SLURM's) still gives each training stage its own rendezvous.
    slurm = Launch(nodes=2, nproc_per_node=8, rdzv_endpoint="node0:29400", rdzv_id="77", torchrun=["t"], pixmix="p")
    commands = [torchrun_command(args, slurm, run_id=r) for r in ("pixmix-a", "pixmix-b")]
    ids = {c[c.index("--rdzv_id") + 1] for c in commands}
    assert ids == {"77-pixmix-a", "77-pixmix-b"}
    single = Launch(nproc_per_node=4, torchrun=["torchrun"], pixmix="pixmix")
    assert torchrun_command(["train"], single, run_id="x") == [
        "torchrun", "--nnodes", "1", "--nproc_per_node", "4", "--standalone", "--no-python", "pixmix", "train"]
    with pytest.raises(PipelineError, match="rendezvous"):
        torchrun_command(args, Launch(nodes=2), run_id="x")
    # The executables default to the ones beside this Python.
    default = torchrun_command(["train"], Launch(), run_id="x")
    assert Path(default[0]).name == "torchrun" and Path(default[-2]).name == "pixmix"

    # From the environment (SLURM or torchrun-style variables), options winning.
    env = {"MASTER_ADDR": "head", "MASTER_PORT": "1234", "SLURM_JOB_ID": "77", "SLURM_NODEID": "1"}
    launch = Launch.from_env(nodes=2, nproc_per_node=4, env=env)
    assert (launch.nodes, launch.node_rank, launch.rdzv_endpoint, launch.rdzv_id) == (2, 1, "head:1234", "77")
    assert Launch.from_env(env=env).node_rank == 0 and Launch.from_env(env=env).nodes == 1
    with pytest.raises(PipelineError):
        Launch.from_env(nodes=2, node_rank=2, env={})
    # Which launcher: the profile's, torchrun whenever there is more than one process.
    assert Launch(nproc_per_node=2).uses_torchrun("auto") and not Launch().uses_torchrun("auto")
    assert Launch().uses_torchrun("torchrun") and train.options["launcher"] == "torchrun"
    with pytest.raises(PipelineError):
        Launch(nodes=2, nproc_per_node=1).uses_torchrun("inprocess")


def test_other_nodes_join_training_and_leave_the_rest_to_node_0(tmp_path: Path, monkeypatch) -> None:
    from pipelines import runner, stages

    calls = []

    def fake(stage, ctx):
        calls.append((stage.kind, ctx.launch.node_rank))
        return {}

    for kind in list(stages.EXECUTORS):
        monkeypatch.setitem(stages.EXECUTORS, kind, fake)
    spec = load("mixing-sets", "smoke")
    node0 = make_plan(spec, tmp_path, only=["fractals"])
    for stage in node0.stages:  # node 0 got as far as the shards
        if stage.kind in ("data", "build", "shard"):
            stage.folder.mkdir(parents=True)
            runner._write_stamp(stage, 0.0, {})
    launch = Launch(nodes=2, nproc_per_node=2, node_rank=1, rdzv_endpoint="node0:29400")
    lines: list[str] = []
    result = runner.execute(make_plan(spec, tmp_path, only=["fractals"], launch=launch),
                            stages.Context(log=lines.append))
    assert calls == [("train", 1)] and result.ran == []
    assert not node0.variants["fractals"].stages["train"].stamp.exists()  # node 0 stamps it
    assert sum("left to node 0" in line for line in lines) == 2  # eval and report
    with pytest.raises(PipelineError, match="inprocess"):
        make_plan(load("mixing-sets", "smoke", {None: {"launcher": "inprocess"}}), tmp_path, launch=launch)
    # A stage node 0 failed stops the other nodes' wait for it, with node 0's reason.
    build = next(s for s in node0.stages if s.kind == "build")
    build.stamp.unlink()
    (build.folder / runner.FAILED).write_text('{"error": "archive unreachable"}')
    with pytest.raises(PipelineError, match="node 0 failed stage .*archive unreachable"):
        runner.execute(make_plan(spec, tmp_path, only=["fractals"], launch=launch), stages.Context(log=lines.append))


def test_cli_help_does_not_import_torch() -> None:
    code = ("import sys, mixset.cli.run; print(sorted(m for m in ('torch', 'pipelines.runner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_online_mixing_trains_every_variant_on_one_set_of_plain_shards(smoke) -> None:
    runner, first, _ = smoke
    online = Run(runner.work.parent / "online", cache=first.plan.cache)
    result = online("mixing-strategies", overrides=["mixing=online"])
    shards = {vp.stages["shard"].folder for vp in result.plan.variants.values() if "shard" in vp.stages}
    assert len(shards) == 1 and next(iter(shards)).name.startswith("plain-")  # shared with the baseline
    trains = {name: vp.stages["train"] for name, vp in result.plan.variants.items() if "train" in vp.stages}
    assert trains["input-only"].config["partners"] == "augmented" and "mixset" not in trains["input-only"].inputs
    assert trains["mixset-only"].config["partners"] == "mixing" and "mixset" in trains["mixset-only"].inputs
    assert "partners" not in trains["baseline"].config
    for name in runnable("mixing-strategies"):
        summary = result.results["variants"][name]["summary"]
        assert all(math.isfinite(summary[k]) for k in KEYS), (name, summary)
    args = train_arguments(trains["mixset-only"].config, trains["mixset-only"].options, Path("s"), Path("o"),
                           trains["mixset-only"].inputs["mixset"].folder)
    assert args[args.index("--partners") + 1] == "mixing" and "--mixset" in args


def test_a_degraded_build_fails_when_the_profile_wants_the_real_thing(tmp_path: Path, monkeypatch) -> None:
    # FVis without pretrained weights fall back to random-init ones ("ok, fallback weights"): with
    # allow_degraded=false the build fails (no stamp, so it is retried later) instead of being cached as the
    # paper's set. The download is made to fail here whatever the network or the torch cache hold.
    import urllib.error

    import torchvision.models

    real = torchvision.models.get_model

    def offline(name, weights=None, **kwargs):
        if weights is not None:
            raise urllib.error.URLError("offline (test)")
        return real(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    overrides = {None: {"allow_degraded": False, "fvis_weights": "default"}}
    runner = Run(tmp_path / "work")
    degraded = r"build fvis is degraded \(fvis-.*fallback weights.*--set allow_degraded=true"
    with pytest.raises(PipelineError, match=degraded):
        runner(only=["fvis"], overrides=overrides)
    plan = make_plan(load("mixing-sets", "smoke", overrides), runner.work, only=["fvis"])
    assert not plan.variants["fvis"].stages["build"].stamp.exists()
    assert load("mixing-sets", "paper").variants[0].options["allow_degraded"] is False


def test_a_moved_data_folder_keeps_the_computing_stages(tmp_path: Path) -> None:
    import os
    import shutil

    from pipelines.synthetic_data import write_cifar100_suite

    data = write_cifar100_suite(tmp_path / "data", train=4, test=4, c_per_severity=2, p_sequences=0)
    before = make_plan(load("mixing-sets", "paper"), tmp_path / "w", data=data, only=["fractals"])
    moved = shutil.copytree(data, tmp_path / "elsewhere" / "data", copy_function=shutil.copy2)  # times kept
    after = make_plan(load("mixing-sets", "paper"), tmp_path / "w", data=moved, only=["fractals"])
    # Every computing stage keeps its hash; only the report (it lists where things are) is rewritten.
    assert [(s.kind, s.hash) for s in after.stages if s.kind != "report"] == \
        [(s.kind, s.hash) for s in before.stages if s.kind != "report"]
    label = next(moved.rglob("labels.npy"))
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))  # a changed file
    changed = make_plan(load("mixing-sets", "paper"), tmp_path / "w", data=moved, only=["fractals"])
    assert changed.stages[0].hash != before.stages[0].hash and changed.stages[0].kind == "data"
