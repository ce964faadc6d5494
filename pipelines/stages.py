"""What each stage kind does, in-process through the library (or torchrun for distributed training).

Every executor gets its :class:`~pipelines.graph.Stage` (config, input stages, output folder) and a
:class:`Context`; it writes into ``stage.folder`` and returns the ``outputs`` recorded in the stamp.
The runner writes the stamp afterwards, so an executor that fails or is interrupted leaves no stamp
and runs again next time (the library functions resume what they can: builds after their last shard,
shards per shard, training from ``last.pt``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.graph import Stage
from pipelines.spec import NATURAL, PipelineError

if TYPE_CHECKING:
    from pixmix.train.trainer import TrainConfig

# Training options named on pixmix train's command line only when set (the planner's TRAIN_EXTRAS).
TRAIN_EXTRAS = ("arch", "cutmix", "iterative_fvis_every", "iterative_fvis_pool", "iterative_fvis_steps",
                "iterative_fvis_units", "iterative_fvis_start_epoch")
FORWARD = ("WARNING", "warning:")  # library log lines that also go to the pipeline's own log


@dataclass
class Launch:
    """How training processes are started: in-process, or ``torchrun`` over nodes x GPUs."""

    nodes: int = 1
    nproc_per_node: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (several nodes)
    rdzv_id: str | None = None  # default: derived from the train stage's hash (the same on every node)
    node_rank: int = 0  # node 0 runs every other stage; the others wait for them and join training
    torchrun: list[str] | None = None  # the launcher command (default: torchrun beside this Python)
    pixmix: str | None = None  # the pixmix executable (default: beside this Python)

    @classmethod
    def from_env(cls, nodes: int | None = None, nproc_per_node: int | None = None, rdzv_endpoint: str | None = None,
                 rdzv_id: str | None = None, node_rank: int | None = None,
                 env: dict[str, str] | None = None) -> Launch:
        """Options, else the environment: ``PIXMIX_RDZV_ENDPOINT`` or ``MASTER_ADDR``:``MASTER_PORT``,
        ``PIXMIX_RDZV_ID`` or ``SLURM_JOB_ID``, ``NODE_RANK`` or ``SLURM_NODEID`` (nodes: only the option)."""
        env = dict(os.environ if env is None else env)
        if rdzv_endpoint is None:
            rdzv_endpoint = env.get("PIXMIX_RDZV_ENDPOINT") or (
                f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29500')}" if env.get("MASTER_ADDR") else None)
        rdzv_id = rdzv_id or env.get("PIXMIX_RDZV_ID") or env.get("SLURM_JOB_ID")
        if node_rank is None:
            node_rank = int(env.get("NODE_RANK") or env.get("SLURM_NODEID") or 0)
        nodes = nodes or 1
        if nodes == 1:
            node_rank = 0
        launch = cls(nodes=nodes, nproc_per_node=nproc_per_node or 1, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id,
                     node_rank=node_rank)
        if launch.nodes < 1 or launch.nproc_per_node < 1 or not 0 <= launch.node_rank < launch.nodes:
            raise PipelineError(f"--nodes {launch.nodes} and --nproc-per-node {launch.nproc_per_node} must be >= 1 "
                                f"and the node rank ({launch.node_rank}) in [0, nodes)")
        return launch

    @property
    def world(self) -> int:
        """Training processes in all: nodes x processes per node."""
        return self.nodes * self.nproc_per_node

    def uses_torchrun(self, launcher: str) -> bool:
        """Whether training starts under torchrun (the ``launcher`` option, checked against the world)."""
        if launcher not in ("auto", "inprocess", "torchrun"):
            raise PipelineError(f"option launcher must be auto, inprocess or torchrun, got {launcher!r}")
        if launcher == "inprocess" and self.world > 1:
            raise PipelineError(f"launcher 'inprocess' cannot train on {self.world} processes: use torchrun")
        return launcher == "torchrun" or (launcher == "auto" and self.world > 1)


@dataclass
class Context:
    """What every executor gets besides its stage: the log, progress bars, verbosity and the launch."""

    log: Callable[[str], None] = print
    progress: bool = False
    verbose: bool = False
    launch: Launch = field(default_factory=Launch)


class _StageLog:
    """The library's log lines of one stage: to ``run.log`` in its folder (warnings also to the pipeline log)."""

    def __init__(self, stage: Stage, ctx: Context) -> None:
        self.path, self.ctx, self.prefix = stage.folder / "run.log", ctx, f"  {stage.kind} {stage.name}: "

    def __call__(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
        if self.ctx.verbose or line.lstrip().startswith(FORWARD):
            self.ctx.log(self.prefix + line)


def _data_dir(stage: Stage) -> Path:
    return stage.inputs["data"].folder


# --- data ----------------------------------------------------------------------------------------------


def run_data(stage: Stage, ctx: Context) -> dict[str, Any]:
    """Tiny CIFAR-100-format train/test, -C and -P sets (the smoke profile's stand-in for the real ones)."""
    from pipelines.synthetic_data import write_cifar100_suite

    c = stage.config
    if c["dataset"] == "imagenet":
        return _imagenet_data(stage)
    if c["dataset"] != "cifar100":
        raise PipelineError(f"data = 'generate' makes CIFAR-100 and ImageNet only, not {c['dataset']}: pass --data DIR")
    for sub in ("cifar-100-python", "CIFAR-100-C", "CIFAR-100-P", "ood"):
        shutil.rmtree(stage.folder / sub, ignore_errors=True)  # a partial earlier attempt
    write_cifar100_suite(stage.folder, train=c["train_images"], test=c["test_images"],
                         c_per_severity=c["c_per_severity"], p_sequences=c["p_sequences"], p_frames=c["p_frames"],
                         ood_images=c["ood_images"], seed=c["seed"])
    return {"data": str(stage.folder), "train_images": c["train_images"], "test_images": c["test_images"]}


def _imagenet_data(stage: Stage) -> dict[str, Any]:
    """A tiny ImageNet tree in the released layouts (train/val, -C, -C-Bar, -R, -P mp4s, -O)."""
    from pipelines.synthetic_imagenet import write_imagenet_suite

    c = stage.config
    classes = c["classes"]
    if classes < 1 or c["train_images"] < classes or c["test_images"] < classes:
        raise PipelineError(f"generate imagenet: train_images ({c['train_images']}) and test_images "
                            f"({c['test_images']}) must be at least classes ({classes})", param="classes")
    for sub in ("train", "val", "ImageNet-C", "ImageNet-C-Bar", "imagenet-r", "ImageNet-P", "ImageNet-O"):
        shutil.rmtree(stage.folder / sub, ignore_errors=True)  # a partial earlier attempt
    try:
        write_imagenet_suite(stage.folder, classes=classes, per_class=c["train_images"] // classes,
                             val_per_class=c["test_images"] // classes, size=c["size"], p_frames=c["p_frames"],
                             ood_images=c["ood_images"], seed=c["seed"])
    except ValueError as exc:  # its own check of the picture size
        raise PipelineError(f"generate imagenet: {exc}", param="generated_size") from exc
    return {"data": str(stage.folder), "train_images": classes * (c["train_images"] // classes),
            "test_images": classes * (c["test_images"] // classes)}


def run_weights(stage: Stage, ctx: Context) -> dict[str, Any]:
    """A torchvision model's seeded random-init state dict: the smoke profile's stand-in for pretrained weights."""
    import torch

    from mixset.sources.fvis import load_model

    model, description = load_model(stage.config["model"], "random")
    path = stage.folder / f"{stage.config['model']}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return {"weights": str(path), "description": description}


def weights_file(stage: Stage) -> Path:
    """The weights file of a weights stage: the user's file, or the generated one."""
    return stage.folder if stage.external else stage.folder / f"{stage.config['model']}.pt"


def run_natural(stage: Stage, ctx: Context) -> dict[str, Any]:
    """Photo-like JPEGs standing in for the paper's 300K Random Images (any folder of natural images will do)."""
    from pipelines.synthetic_data import write_natural_images

    images = stage.folder / "images"
    shutil.rmtree(images, ignore_errors=True)
    write_natural_images(images, count=stage.config["count"], seed=stage.config["seed"])
    return {"images": str(images), "count": stage.config["count"]}


def natural_folder(stage: Stage) -> Path:
    """The natural images of a natural stage: the user's folder, or the generated stand-in's."""
    return stage.folder if stage.external else stage.folder / "images"


# --- build -----------------------------------------------------------------------------------------------


def run_build(stage: Stage, ctx: Context) -> dict[str, Any]:
    """``mixset build`` of the stage's sources from the manifests snapshotted in its config."""
    from mixset.build.builder import BuildConfig, build

    c = stage.config
    collections = stage.folder / "collections"
    shutil.rmtree(collections, ignore_errors=True)
    collections.mkdir(parents=True)
    for name, text in c["manifests"].items():
        if "natural" in stage.inputs:
            folder = str(natural_folder(stage.inputs["natural"]).resolve())
            text = text.replace(NATURAL_PLACEHOLDER, _toml_string(folder))
        (collections / name).write_text(text, encoding="utf-8")
    fvis = c.get("fvis") or {}
    weights = stage.inputs.get("weights")
    checkpoints = ((weights.config["model"], str(weights_file(weights))),) if weights is not None else ()
    config = BuildConfig(out=stage.folder, sources=tuple(c["library_sources"]), seed=c["seed"], limit=c["limit"],
                         image_size=c["image_size"], shard_size=c["shard_size"], manifests=collections,
                         workers=max(1, stage.options["workers"]), device=stage.options["device"],
                         fvis_models=tuple(fvis["models"]) if fvis.get("models") else None,
                         fvis_steps=fvis.get("steps", 512), fvis_size=fvis.get("size", 128),
                         fvis_batch=fvis.get("batch", 64), fvis_weights=fvis.get("weights", "default"),
                         fvis_checkpoints=checkpoints)
    log = _StageLog(stage, ctx)
    summary = build(config, log=log, progress=ctx.progress)
    collections_report = {name: {"source": r.source, "status": r.status, "samples": r.samples, "error": r.error}
                          for name, r in summary.reports.items()}
    degraded = []
    for name, r in summary.reports.items():
        if r.status != "ok":
            degraded.append(f"{name}: {r.status}")
            ctx.log(f"  build {stage.name}: collection {name}: {r.status}" + (f" ({r.error[:160]})" if r.error else ""))
    if degraded and not c.get("allow_degraded", True):
        raise PipelineError(f"build {stage.name} is degraded ({'; '.join(degraded)}): not what the paper used; make "
                            "the archive reachable / the pretrained weights available (mixset build "
                            "--fvis-checkpoint), or accept it with --set allow_degraded=true")
    return {"mixset": str(stage.folder), "samples": summary.samples, "shards": summary.shards,
            "manifest": str(summary.manifest), "contact_sheet": str(summary.contact_sheet),
            "collections": collections_report}


NATURAL_PLACEHOLDER = "@NATURAL_FOLDER@"


def _toml_string(text: str) -> str:
    return json.dumps(text)[1:-1]  # JSON string escapes are valid TOML basic-string escapes


# --- shard -----------------------------------------------------------------------------------------------


def run_shard(stage: Stage, ctx: Context) -> dict[str, Any]:
    """``mixset shard``: plain training shards (baseline) or pre-generated PixMix views."""
    from mixset.shard.sharder import ShardConfig, shard

    c = stage.config
    mixset = stage.inputs["mixset"].folder if "mixset" in stage.inputs else None
    config = ShardConfig(dataset=c["dataset"], data_dir=_data_dir(stage), out=stage.folder, split="train",
                         pixmix=c["pixmix"], mixset=mixset, views=c["views"], k=c["k"], beta=c["beta"],
                         severity=c["severity"], shard_samples=c["shard_samples"], seed=c["seed"], limit=c["limit"],
                         workers=max(1, stage.options["workers"]), device=stage.options["device"],
                         partners=c.get("partners") or "both")
    summary = shard(config, log=_StageLog(stage, ctx), progress=ctx.progress)
    if summary.manifest is None:
        raise PipelineError(f"{stage.folder}: shards are missing after `mixset shard` (see {stage.folder / 'run.log'})")
    manifest = json.loads(Path(summary.manifest).read_text())
    return {"shards": str(stage.folder), "samples": manifest["samples"], "items": manifest["items"],
            "views": manifest["views"], "failures": len(manifest["failures"])}


# --- train -----------------------------------------------------------------------------------------------


def train_config(stage_config: dict[str, Any], options: dict[str, Any]) -> TrainConfig:
    """The stage's training configuration: its preset with the stage's overrides and the run's options."""
    from pixmix.train.trainer import preset_config

    # The extras only when set: preset_config refuses fields this checkout's TrainConfig does not have.
    extras = {key: stage_config[key] for key in (*TRAIN_EXTRAS, "pretrained") if stage_config.get(key) is not None}
    return preset_config(stage_config["preset"], epochs=stage_config["epochs"], batch_size=stage_config["batch_size"],
                         lr=stage_config["lr"], seed=stage_config["seed"], workers=options["workers"],
                         device=options["device"], keep_every=0, partners=stage_config.get("partners"),
                         k=stage_config.get("k"), beta=stage_config.get("beta"), severity=stage_config.get("severity"),
                         **extras)


def _beside_python(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def train_arguments(stage_config: dict[str, Any], options: dict[str, Any], shards: Path, out: Path,
                    mixset: Path | None = None) -> list[str]:
    """``pixmix train`` options for the stage (the ones the command line has: preset and its overrides)."""
    args = ["train", "--preset", stage_config["preset"], "--shards", str(shards), "--out", str(out)]
    for key in ("epochs", "batch_size", "lr", "seed", "partners", "k", "beta", "severity", *TRAIN_EXTRAS,
                "pretrained"):
        if stage_config.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(stage_config[key])]
    if mixset is not None:
        args += ["--mixset", str(mixset)]
    args += ["--workers", str(options["workers"]), "--device", options["device"], "--keep-every", "0", "--quiet"]
    return args


def torchrun_command(train_args: list[str], launch: Launch, run_id: str) -> list[str]:
    """``torchrun --nnodes N --nproc_per_node G [rendezvous] --no-python pixmix train ...``.

    One node: ``--standalone`` (a local rendezvous on a free port). Several: a c10d rendezvous at
    ``launch.rdzv_endpoint`` with id ``run_id`` (prefixed by ``launch.rdzv_id`` when set), the same on every node.
    """
    command = list(launch.torchrun or [_beside_python("torchrun")])
    command += ["--nnodes", str(launch.nodes), "--nproc_per_node", str(launch.nproc_per_node)]
    if launch.nodes == 1:
        command += ["--standalone"]
    else:
        if not launch.rdzv_endpoint:
            raise PipelineError(f"training on {launch.nodes} nodes needs a rendezvous: pass --rdzv-endpoint HOST:PORT "
                                "(or set MASTER_ADDR and MASTER_PORT) on every node")
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", launch.rdzv_endpoint,
                    # One rendezvous per training stage: a job-wide id (SLURM's) would join every variant's
                    # torchrun to the same rendezvous.
                    "--rdzv_id", f"{launch.rdzv_id}-{run_id}" if launch.rdzv_id else run_id]
    return command + ["--no-python", launch.pixmix or _beside_python("pixmix"), *train_args]


def run_train(stage: Stage, ctx: Context) -> dict[str, Any]:
    """``pixmix train`` (resuming ``last.pt`` when an earlier attempt was interrupted)."""
    shards = stage.inputs["shard"].folder
    mixset = stage.inputs["mixset"].folder if "mixset" in stage.inputs else None  # online mixing
    checkpoint = stage.folder / "checkpoints" / "last.pt"
    config = dict(stage.config)
    if "pretrained" in stage.inputs:  # the user's file (its fingerprint is in the hash, not its path)
        config["pretrained"] = str(stage.inputs["pretrained"].folder)
    if ctx.launch.uses_torchrun(stage.options["launcher"]):
        command = torchrun_command(train_arguments(config, stage.options, shards, stage.folder, mixset),
                                   ctx.launch, run_id=f"pixmix-{stage.hash[:16]}")
        with open(stage.folder / "run.log", "a", encoding="utf-8") as fh:
            fh.write("$ " + " ".join(command) + "\n")
            fh.flush()
            done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = (stage.folder / "run.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise PipelineError(f"torchrun exited with {done.returncode} ({' '.join(tail)[:200]}); "
                                f"see {stage.folder / 'run.log'}")
        records = [json.loads(line) for line in (stage.folder / "log.jsonl").read_text().splitlines() if line.strip()]
        final = records[-1] if records else None
    else:
        from pixmix.train.trainer import train

        summary = train(train_config(config, stage.options), shards, stage.folder, mixset=mixset,
                        log=_StageLog(stage, ctx), progress=ctx.progress)
        final = summary.final
    if not checkpoint.is_file():
        raise PipelineError(f"{checkpoint} was not written (see {stage.folder / 'run.log'})")
    keep = ("epoch", "train_loss", "train_error", "seconds", "samples")
    return {"checkpoint": str(checkpoint), "final": {k: final[k] for k in keep if k in final} if final else None}


# --- eval ------------------------------------------------------------------------------------------------


def run_eval(stage: Stage, ctx: Context) -> dict[str, Any]:
    """``pixmix eval``: the six summary numbers and the per-set tables, ``results.{json,md,png}``."""
    from pixmix.evaluate.report import write_report
    from pixmix.evaluate.suites import evaluate

    c = stage.config
    checkpoint = stage.inputs["train"].folder / "checkpoints" / "last.pt"
    results = evaluate(checkpoint, c["suite"], _data_dir(stage), device=stage.options["device"],
                       batch_size=c["batch_size"], seed=c["seed"], pgd_samples=c["pgd_samples"],
                       ood_samples=c["ood_samples"], limit=c["limit"], drop_last_bin=c["drop_last_bin"],
                       workers=0 if stage.options["workers"] <= 1 else stage.options["workers"],
                       progress=ctx.progress, log=_StageLog(stage, ctx), p_baseline=c.get("p_baseline"))
    paths = write_report(results, stage.folder)
    return {"results": str(paths["json"]), "summary": results["summary"], "notes": results.get("notes", []),
            "seconds": results.get("seconds")}


EXECUTORS: dict[str, Callable[[Stage, Context], dict[str, Any]]] = {
    "data": run_data, "natural": run_natural, "weights": run_weights, "build": run_build, "shard": run_shard,
    "train": run_train, "eval": run_eval,
}

__all__ = [
    "EXECUTORS",
    "NATURAL",
    "Context",
    "Launch",
    "torchrun_command",
    "train_arguments",
    "train_config",
]
