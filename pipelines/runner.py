"""Plan and run a pipeline: a small DAG of content-addressed stages.

Stages (per variant; shared wherever two variants need the same thing)::

    data ─┬──────────────────────────── shard ── train ── eval ──┐
          │   natural ── build (mixing set) ─┘                    ├── report
          └───────────────────────────────────────────── eval ───┘

Every stage has a *hash*: sha256 of its kind, a version of its executor, its config (the options
that decide its output, never paths of other stages, workers or devices) and the hashes of its
inputs. So the whole DAG's hashes are known before anything runs, and a changed option changes the
hash of its stage and of everything downstream of it only. A stage writes into
``<cache>/<kind>/<name>-<hash12>/`` and, last, ``stage.json`` (hash, config, inputs, seconds,
outputs). A stage whose ``stage.json`` holds its hash is *up to date* and skipped; one without
(never run, failed, interrupted) runs again, and the library resumes what it can. Nothing is written
when everything is up to date; the report is copied to ``<work>/results.*`` only when it differs.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.graph import STAGE_VERSIONS, Stage, stage_hash
from pipelines.spec import (
    NATURAL,
    Pipeline,
    PipelineError,
    Variant,
    load,
    parse_overrides,
)
from pipelines.stages import NATURAL_PLACEHOLDER, TRAIN_EXTRAS, Context, Launch
from pixmix.utils.jsonfiles import write_json

HOW = ("workers", "device", "launcher")  # options that never change a stage's output: not hashed

# Not pixmix.data.images.IMAGE_SUFFIXES (an unordered set, with .gif): this ordered tuple is written into the
# natural-images manifest's include globs, which are part of the build stage's hash, so sharing it would re-key
# (and rebuild) every cached natural mixing set.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DATA_LAYOUT = {
    "cifar100": ("cifar-100-python", ("train", "test"), "CIFAR-100-C", ("CIFAR-100-C-Bar", "CIFAR-100-P", "ood")),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",), "CIFAR-10-C",
                ("CIFAR-10-C-Bar", "CIFAR-10-P", "ood")),
    # ImageNet's released folder layouts (folders, not files: see check_data).
    "imagenet": ("train", ("val",), "ImageNet-C", ("ImageNet-C-Bar", "imagenet-r", "ImageNet-P", "ImageNet-O")),
}
# A real ImageNet tree holds millions of files: its fingerprint stats the class folders only (train/<wnid>,
# ImageNet-C/<corruption>/<severity>/<wnid>, ...), whose times change whenever a file is added, removed or renamed.
FINGERPRINT_DEPTH = {"imagenet": {"train": 1, "val": 1, "ImageNet-C": 3, "ImageNet-C-Bar": 3, "imagenet-r": 1,
                                  "ImageNet-P": 2, "ImageNet-O": 1}}


@dataclass
class VariantPlan:
    """A variant's stages by kind, or why it cannot run here."""

    variant: Variant
    stages: dict[str, Stage] = field(default_factory=dict)
    skipped: str | None = None  # why the variant cannot run here


@dataclass
class Plan:
    """Every stage of a pipeline, ordered, with the variants and the report."""

    pipeline: Pipeline
    work: Path
    cache: Path
    stages: list[Stage]  # in an order that runs inputs first
    variants: dict[str, VariantPlan]
    report: Stage | None
    launch: Launch


# --- planning --------------------------------------------------------------------------------------------


def _entries(top: Path, max_depth: int | None) -> list[Path]:
    """The files under ``top`` (every one), or with ``max_depth`` its files and folders down to that depth."""
    if top.is_file():
        return [top]
    if max_depth is None:
        return sorted(p for p in top.rglob("*") if p.is_file())
    found, level = [], [top]
    for _ in range(max_depth):
        level = sorted(c for p in level if p.is_dir() for c in p.iterdir())
        found += level
    return sorted(found)


def fingerprint(root: Path, subfolders: Sequence[str] | None = None,
                depths: Mapping[str, int] | None = None) -> str:
    """sha256 of (path relative to ``root``, size, mtime) of every file: cheap (a stat per file), changes
    whenever a file does, and stays the same when the folder is moved or copied with its times. ``depths``
    (subfolder -> depth): the entries of that subfolder down to that depth only (a folder's time changes when
    an entry is added, removed or renamed in it)."""
    h = hashlib.sha256()
    for sub in subfolders if subfolders is not None else [""]:
        top = root / sub
        if not top.exists():
            continue
        for p in _entries(top, (depths or {}).get(sub)):
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_data(path: Path, dataset: str) -> None:
    """The datasets ``--data`` must hold for training and evaluation; one line naming what is missing."""
    if dataset not in DATA_LAYOUT:
        raise PipelineError(f"option dataset must be one of {', '.join(DATA_LAYOUT)}, got {dataset!r}")
    folder, files, corrupted, optional = DATA_LAYOUT[dataset]
    from pixmix.evaluate.metrics import CORRUPTIONS

    if dataset == "imagenet":  # folders: train/<wnid>/, val/<wnid>/, ImageNet-C/<corruption>/<severity>/<wnid>/
        need = [path / folder, *(path / f for f in files), *(path / corrupted / c for c in CORRUPTIONS)]
        missing = [p for p in need if not p.is_dir()]
        what = f"{folder}/, {', '.join(f + '/' for f in files)}, {corrupted}/ (all 15 corruptions)"
    else:
        need = [path / folder / f for f in files] + [path / corrupted / "labels.npy"]
        need += [path / corrupted / f"{c}.npy" for c in CORRUPTIONS]
        missing = [p for p in need if not p.is_file()]
        what = f"{folder}/, {corrupted}/ (all 15 corruptions + labels.npy)"
    if missing:
        raise PipelineError(f"--data {path}: {missing[0]} not found (of {len(missing)} missing); --data must hold "
                            f"{what} and optionally {', '.join(o + '/' for o in optional)}")


def _manifest_files(spec: str) -> tuple[Path, bool]:
    from mixset.sources.catalog import DEFAULT_MANIFESTS

    if spec == "default":
        return DEFAULT_MANIFESTS, False
    if spec == "offline":
        return DEFAULT_MANIFESTS, True
    folder = Path(spec)
    if not folder.is_dir():
        raise PipelineError(f"option manifests: {folder} is not a folder of collection manifests")
    return folder, False


def _natural_manifest() -> str:
    return "\n".join([
        "# Written by the pipeline runner: the paper's \"300K Random Images\" role, any folder of natural images.",
        'name = "natural-images"', f'source = "{NATURAL}"', 'kind = "folder"',
        'licence = "as the images of the folder: see their origin"',
        'description = "A folder of natural images standing in for the 300K Random Images set."',
        f'path = "{NATURAL_PLACEHOLDER}"', "", "[filters]",
        "include = [" + ", ".join(f'"*{s}", "*{s.upper()}"' for s in IMAGE_SUFFIXES) + "]", ""])


def _manifests_of(folder: Path, source: str, offline: bool) -> tuple[dict[str, str], str | None]:
    """({file name: text} of the manifests of ``source`` in ``folder``, why not); ``offline`` leaves out archives."""
    from mixset.sources.catalog import KINDS

    found: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PipelineError(f"{path}: not a readable TOML manifest ({exc})") from exc
        if data.get("source") != source or (offline and data.get("kind") == "archive"):
            continue
        if data.get("kind") not in KINDS:
            return {}, f"manifest {path.name} is of kind {data.get('kind')!r}, unknown to this mixset build"
        found[path.name] = text
    return found, None


def select_manifests(sources: Sequence[str], manifests: str) -> tuple[list[str], dict[str, str], str | None]:
    """(library sources, {file name: manifest text}, why not) for a mixing set of ``sources``."""
    from mixset.build.builder import SOURCES

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        return [], {}, (f"source {', '.join(unknown)} is not known to this mixset build (mixset.build.builder.SOURCES: "
                        f"{', '.join(SOURCES)})")
    folder, offline = _manifest_files(manifests)
    texts: dict[str, str] = {}
    for s in sources:
        if s == NATURAL:
            continue
        found, why = _manifests_of(folder, s, offline)
        if why:
            return [], {}, why
        texts.update(found)
        # FVis are rendered when no manifest declares them (the paper's archive FVis come first when one does).
        if not found and s != "fvis":
            left_out = " (remote archives left out)" if offline else ""
            return [], {}, f"no manifest in {folder} declares source {s!r}{left_out}"
    if NATURAL in sources:
        texts["zz-natural-images.toml"] = _natural_manifest()
    return list(dict.fromkeys(sources)), texts, None


class _Planner:
    def __init__(self, pipeline: Pipeline, cache: Path, data: Path | None, natural: Path | None,
                 launch: Launch) -> None:
        self.pipeline, self.cache, self.data_arg, self.natural_arg = pipeline, cache, data, natural
        self.launch = launch
        self.stages: dict[tuple[str, str], Stage] = {}
        self.order: list[Stage] = []
        self._checked: set[tuple[Path, str]] = set()

    def add(self, kind: str, name: str, config: dict[str, Any], inputs: dict[str, Stage], options: dict[str, Any],
            variant: str, external: Path | None = None) -> Stage:
        """The stage of this kind and hash: a new one, or the one another variant already shares."""
        h = stage_hash(kind, config, inputs)
        stage = self.stages.get((kind, h))
        if stage is None:
            folder = external if external is not None else self.cache / kind / f"{name}-{h[:12]}"
            stage = Stage(kind, name, config, inputs, {k: options[k] for k in HOW}, h, folder, external is not None)
            self.stages[(kind, h)] = stage
            self.order.append(stage)
        if variant not in stage.variants:
            stage.variants.append(variant)
        return stage

    def data_source(self, v: Variant) -> Path | None:
        """The user's data folder (checked), or None when the data is generated."""
        o = v.options
        source = self.data_arg if self.data_arg is not None else (
            None if o["data"] in ("generate", "required") else Path(o["data"]))
        if source is None and o["data"] == "required":
            folder, files, corrupted, optional = DATA_LAYOUT[o["dataset"]]
            extra = "".join(f"{f}/ " for f in files) if o["dataset"] == "imagenet" else ""
            raise PipelineError(f"profile {self.pipeline.profile} needs --data DIR holding {folder}/, {extra}and "
                                f"{corrupted}/ (optionally {', '.join(x + '/' for x in optional)})")
        if source is None:
            return None
        source = source.resolve()
        if (source, o["dataset"]) not in self._checked:
            check_data(source, o["dataset"])
            self._checked.add((source, o["dataset"]))
        return source

    def data(self, v: Variant, source: Path | None) -> Stage:
        """The training and evaluation data: generated, or the user's folder (keyed by its fingerprint)."""
        o = v.options
        if source is None:
            config = {"dataset": o["dataset"], "train_images": o["train_images"], "test_images": o["test_images"],
                      "c_per_severity": o["c_per_severity"], "p_sequences": o["p_sequences"],
                      "p_frames": o["p_frames"], "ood_images": o["ood_images"], "seed": o["seed"]}
            if o["dataset"] == "imagenet":  # write_imagenet_suite's own knobs (no -C/-P counts of their own)
                config = {k: config[k] for k in ("dataset", "train_images", "test_images", "p_frames", "ood_images",
                                                 "seed")} | {"classes": o["classes"], "size": o["generated_size"]}
            return self.add("data", o["dataset"], config, {}, o, v.name)
        folder, files, corrupted, optional = DATA_LAYOUT[o["dataset"]]
        subfolders = [folder, *(files if o["dataset"] == "imagenet" else ()), corrupted, *optional]
        # Not the folder's path: a moved (or `cp -a` copied) data folder is the same data.
        config = {"dataset": o["dataset"],
                  "fingerprint": fingerprint(source, subfolders, FINGERPRINT_DEPTH.get(o["dataset"]))}
        return self.add("data", o["dataset"], config, {}, o, v.name, external=source)

    def natural_source(self, v: Variant, generated_data: bool) -> Path | str | None:
        """None: generate the stand-in; a folder (checked); or why the variant cannot run."""
        spec = str(self.natural_arg) if self.natural_arg is not None else v.options["natural"]
        if spec == "generate" or (not spec and generated_data):
            return None
        if not spec:
            return ("the 'natural' source needs a folder of natural images (the 300K Random Images role): "
                    "pass --natural DIR")
        folder = Path(spec).resolve()
        if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            raise PipelineError(f"--natural {folder}: not a folder holding images ({', '.join(IMAGE_SUFFIXES)})")
        return folder

    def natural(self, v: Variant, source: Path | None) -> Stage:
        """The natural images: the generated stand-in, or the user's folder (keyed by its fingerprint)."""
        o = v.options
        if source is None:
            return self.add("natural", "natural-images", {"count": o["natural_images"], "seed": o["seed"]}, {}, o,
                            v.name)
        return self.add("natural", "natural-images", {"fingerprint": fingerprint(source)}, {}, o, v.name,
                        external=source)

    def mixset_sources(self, v: Variant, build: bool, generated_data: bool) -> _Sources | str:
        """What the variant's mixing set is built from, or why it cannot be built here."""
        if not build:
            return _Sources([], {}, None)
        library, texts, reason = select_manifests(v.sources, v.options["manifests"])
        if reason is not None:
            return reason
        natural_source = None
        if NATURAL in v.sources:
            natural = self.natural_source(v, generated_data)
            if isinstance(natural, str):
                return natural
            natural_source = natural
        return _Sources(library, texts, natural_source)

    def preset(self, v: Variant) -> str:
        """The training preset: a ``*-baseline`` one for the baseline, a PixMix one for the others."""
        from pixmix.train.trainer import PRESETS

        preset = str(v.options["baseline_preset"] if v.baseline else v.options["preset"])
        if "train" in self.pipeline.stages and (preset not in PRESETS or PRESETS[preset].pixmix == v.baseline):
            want = "a *-baseline preset" if v.baseline else "a PixMix preset (not *-baseline)"
            raise PipelineError(f"{v.name}: needs {want}, got {preset!r} (presets: {', '.join(PRESETS)})")
        return preset

    def pretrained(self, v: Variant) -> Path | None:
        """The file the training fine-tunes from (option ``pretrained``), checked; None when there is none."""
        spec = v.options["pretrained"]
        if spec == "required":
            raise PipelineError(f"profile {self.pipeline.profile} fine-tunes pretrained weights: pass --pretrained "
                                "FILE (a state dict or pixmix checkpoint of the preset's network)")
        if not spec:
            return None
        path = Path(spec).resolve()
        if not path.is_file():
            raise PipelineError(f"--pretrained {path}: not a file")
        return path

    def weights(self, v: Variant) -> Stage | None:
        """The FVis model's weights file (option ``fvis_checkpoint``), or None when FVis use ``fvis_weights``."""
        o = v.options
        spec = o["fvis_checkpoint"]
        if not spec or "fvis" not in v.sources:
            return None
        models = o["fvis_models"] or []
        if len(models) != 1:
            raise PipelineError(f"{v.name}: option fvis_checkpoint names the weights of one FVis model: set "
                                f"fvis_models to one model, got {models or 'the default models'}")
        model = str(models[0])
        if spec == "generate":  # the smoke profile's stand-in for a pretrained file
            return self.add("weights", f"{model}-random", {"model": model}, {}, o, v.name)
        path = self.pretrained(v) if spec == "pretrained" else Path(spec).resolve()
        if path is None or not path.is_file():
            raise PipelineError(f"{v.name}: fvis_checkpoint {spec!r}: {path or 'option pretrained'} is not a file")
        return self.add("weights", f"{model}-{path.stem}", {"model": model, "fingerprint": fingerprint(path)}, {}, o,
                        v.name, external=path)

    def build(self, v: Variant, vp: VariantPlan, sources: _Sources) -> Stage:
        """The mixing set (and its natural images, and its FVis model's weights file, when it has them)."""
        o = v.options
        inputs: dict[str, Stage] = {}
        if NATURAL in v.sources:
            inputs["natural"] = vp.stages["natural"] = self.natural(v, sources.natural)
        weights = self.weights(v)
        if weights is not None:
            inputs["weights"] = vp.stages["weights"] = weights
        config: dict[str, Any] = {"sources": list(v.sources), "library_sources": sources.library, "limit": o["limit"],
                                  "image_size": o["image_size"], "shard_size": o["shard_size"], "seed": o["seed"],
                                  "manifests": sources.manifests, "allow_degraded": o["allow_degraded"]}
        if "fvis" in v.sources:
            config["fvis"] = {"models": o["fvis_models"], "steps": o["fvis_steps"], "size": o["fvis_size"],
                              "batch": o["fvis_batch"], "weights": o["fvis_weights"]}
        return self.add("build", "+".join(v.sources), config, inputs, o, v.name)

    def shard(self, v: Variant, data: Stage, mixset: Stage | None) -> Stage:
        """The training shards: pre-generated PixMix views, or plain ones (baseline, online mixing)."""
        o = v.options
        # Online mixing trains every PixMix variant on the same plain shards (one stage, shared with the
        # baseline's): the mixing set and partners go to the training stage instead.
        pixmix = not v.baseline and not _online(v)
        config = {"dataset": o["dataset"], "pixmix": pixmix, "views": o["views"] if pixmix else 1,
                  "partners": v.partners if pixmix else None, "k": o["k"] if pixmix else None,
                  "beta": o["beta"] if pixmix else None, "severity": o["severity"] if pixmix else None,
                  "shard_samples": o["shard_samples"], "limit": o["train_limit"], "seed": o["seed"]}
        inputs = {"data": data} | ({"mixset": mixset} if mixset is not None and pixmix else {})
        return self.add("shard", v.name if pixmix else "plain", config, inputs, o, v.name)

    def train(self, v: Variant, preset: str, shard: Stage, mixset: Stage | None) -> Stage:
        """The training run, keyed by its resolved configuration."""
        from pipelines.stages import train_config

        o = v.options
        self.launch.uses_torchrun(o["launcher"])  # an impossible launcher fails now, not after hours of stages
        config: dict[str, Any] = {"preset": preset, "epochs": o["epochs"], "batch_size": o["batch_size"],
                                  "lr": o["lr"], "seed": o["seed"]}
        inputs: dict[str, Stage] = {"shard": shard}
        if _online(v):
            config.update(mixing="online", partners=v.partners, k=o["k"], beta=o["beta"], severity=o["severity"])
            if mixset is not None:
                inputs["mixset"] = mixset
        # Set only when used, so that the stages (and hashes) of pipelines that do not use them stay as they were.
        config.update({key: o[key] for key in TRAIN_EXTRAS if o[key] is not None})
        if any(o[key] for key in TRAIN_EXTRAS if key.startswith("iterative_")) and not _online(v):
            raise PipelineError(f"{v.name}: Iterative PixMix renders its mixing pictures while training: set "
                                "mixing = 'online'")
        pretrained = self.pretrained(v)
        if pretrained is not None:  # the file's fingerprint keys the stage; its path is only where to read it
            config["pretrained"] = str(pretrained)
            inputs["pretrained"] = self.add("weights", pretrained.stem, {"fingerprint": fingerprint(pretrained)}, {},
                                            o, v.name, external=pretrained)
        resolved = train_config(config, o).to_json()
        # Loader workers each read their own range and shuffle it: their number decides the data order, so
        # it is part of a training stage's identity (unlike device, which changes rounding only).
        config["resolved"] = {k: val for k, val in resolved.items() if k not in ("device", "keep_every", "pretrained")}
        config.pop("pretrained", None)
        return self.add("train", v.name, config, inputs, o, v.name)

    def evaluation(self, v: Variant, train: Stage, data: Stage) -> Stage:
        """The evaluation of the trained network on the dataset's suite."""
        o = v.options
        config: dict[str, Any] = {"suite": o["dataset"], "limit": o["eval_limit"], "pgd_samples": o["pgd_samples"],
                  "ood_samples": o["ood_samples"], "batch_size": o["eval_batch_size"], "seed": o["seed"],
                  "drop_last_bin": o["reference_calibration"]}
        if o["p_baseline"]:  # set only when used, so that other pipelines' evaluations keep their hashes
            path = Path(o["p_baseline"]).resolve()
            if not path.is_file():
                raise PipelineError(f"{v.name}: option p_baseline: {path} is not a file (AlexNet's results.json)")
            config["p_baseline"] = str(path)
        return self.add("eval", v.name, config, {"train": train, "data": data}, o, v.name)

    def variant(self, v: Variant) -> VariantPlan:
        """The variant's stages, up to the pipeline's last kind; none when it cannot run here (``skipped``)."""
        o, vp, kinds = v.options, VariantPlan(v), self.pipeline.stages
        if o["dataset"] not in DATA_LAYOUT:
            raise PipelineError(f"{v.name}: option dataset must be one of {', '.join(DATA_LAYOUT)}, "
                                f"got {o['dataset']!r}")
        data_source = self.data_source(v)
        # First whether the variant can run here at all (nothing is added to the plan for one that cannot).
        build = v.needs_mixset and "build" in kinds
        sources = self.mixset_sources(v, build, data_source is None)
        if isinstance(sources, str):
            vp.skipped = sources
            return vp
        preset = self.preset(v)
        vp.stages["data"] = data = self.data(v, data_source)
        mixset = None
        if build:
            vp.stages["build"] = mixset = self.build(v, vp, sources)
        if "shard" not in kinds:
            return vp
        if o["mixing"] not in ("pregenerated", "online"):
            raise PipelineError(f"{v.name}: option mixing must be 'pregenerated' or 'online', got {o['mixing']!r}")
        vp.stages["shard"] = shard = self.shard(v, data, mixset)
        if "train" not in kinds:
            return vp
        vp.stages["train"] = train = self.train(v, preset, shard, mixset)
        if "eval" in kinds:
            vp.stages["eval"] = self.evaluation(v, train, data)
        return vp


@dataclass(frozen=True)
class _Sources:
    """What a variant's mixing set is built from."""

    library: list[str]  # the sources, for mixset build
    manifests: dict[str, str]  # file name -> manifest text (snapshotted into the build stage's config)
    natural: Path | None  # a folder of natural images (None: generate the stand-in, or no such source)


def _online(v: Variant) -> bool:
    """Whether PixMix runs on the training device every epoch (plain shards) rather than pre-generated."""
    return v.options["mixing"] == "online" and not v.baseline


def _report_stage(planner: _Planner, pipeline: Pipeline, variants: dict[str, VariantPlan]) -> Stage:
    """The report: every variant's row (run or not) and the evaluations of those that ran."""
    rows = []
    for name, vp in variants.items():
        v = vp.variant
        rows.append({"name": name, "row": v.row, "paper_row": v.paper_row, "sources": list(v.sources),
                     "k": v.options["k"], "beta": v.options["beta"], "cutmix": v.options["cutmix"],
                     "iterative": bool(v.options["iterative_fvis_every"]),
                     "baseline": v.baseline, "partners": v.partners, "description": v.description,
                     "status": "ok" if vp.skipped is None else "not run", "reason": vp.skipped,
                     "stages": {k: str(s.folder) for k, s in vp.stages.items()} if vp.skipped is None else {}})
    suites = {vp.variant.options["dataset"] for vp in variants.values()}
    config = {"pipeline": pipeline.name, "title": pipeline.title, "column": pipeline.column,
              "profile": pipeline.profile, "file": str(pipeline.path), "suite": ", ".join(sorted(suites)),
              "variants": rows, "notes": list(pipeline.notes), "paper_table": pipeline.paper_table,
              "layout": pipeline.layout}
    inputs = {f"eval.{name}": vp.stages["eval"] for name, vp in variants.items() if vp.skipped is None}
    first = next(iter(variants.values())).variant.options
    return planner.add("report", pipeline.name, config, inputs, first, "*")


def make_plan(pipeline: Pipeline, work: str | Path, *, data: str | Path | None = None,
              natural: str | Path | None = None, only: Sequence[str] = (), cache: str | Path | None = None,
              strict: bool = False, launch: Launch | None = None) -> Plan:
    """Every stage of ``pipeline`` with its hash and folder (nothing is read from or written to them)."""
    work = Path(work)
    cache_dir = Path(cache) if cache is not None else work / "stages"
    for name in only:
        pipeline.variant(name)  # unknown names fail here
    chosen = [v for v in pipeline.variants if not only or v.name in only]
    launch = launch or Launch()
    planner = _Planner(pipeline, cache_dir.resolve(), Path(data) if data is not None else None,
                       Path(natural) if natural is not None else None, launch)
    variants = {}
    for v in chosen:
        vp = planner.variant(v)
        if vp.skipped is not None and strict:
            raise PipelineError(f"variant {v.name}: {vp.skipped}")
        variants[v.name] = vp
    report = _report_stage(planner, pipeline, variants) if "report" in pipeline.stages else None
    return Plan(pipeline, work, cache_dir, planner.order, variants, report, launch)


# --- running ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a run did: the stages it ran and found up to date, the results and their files."""

    plan: Plan
    ran: list[str]
    up_to_date: list[str]
    results: dict[str, Any] | None
    paths: dict[str, Path]


def _write_stamp(stage: Stage, seconds: float, outputs: dict[str, Any]) -> None:
    stamp = {"kind": stage.kind, "name": stage.name, "hash": stage.hash, "version": STAGE_VERSIONS[stage.kind],
             "config": stage.config, "options": stage.options,
             "inputs": {role: {"hash": s.hash, "folder": str(s.folder)} for role, s in stage.inputs.items()},
             "variants": stage.variants, "seconds": round(seconds, 3), "outputs": outputs,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(stage.stamp, stamp, default=str)


def _where(plan: Plan, stage: Stage) -> str:
    try:
        return str(stage.folder.relative_to(plan.work.resolve()))
    except ValueError:
        return str(stage.folder)


def describe(plan: Plan) -> list[str]:
    """The plan, one line per stage: what would run and what is up to date (reads the stamps only)."""
    p = plan.pipeline
    lines = [(f"pipeline {p.name} ({p.path}), profile {p.profile}: {len(plan.variants)} variant(s), "
              f"{len(plan.stages)} stage(s); work {plan.work}")]
    for i, stage in enumerate(plan.stages, 1):
        state = "external" if stage.external else "up to date" if stage.up_to_date() else "would run"
        lines.append(f"[{i:>3}/{len(plan.stages)}] {stage.kind:<7} {stage.name:<22} {state:<10}  {_where(plan, stage)}")
    for name, vp in plan.variants.items():
        if vp.skipped:
            lines.append(f"skipped variant {name}: {vp.skipped}")
    return lines


FAILED = "failed.json"  # written by node 0 when a stage fails, so other nodes stop waiting for it


def _wait_for(stage: Stage, log: Callable[[str], None], poll: float = 10.0) -> None:
    log(f"  waiting for node 0 to finish {stage.id}")
    since = time.time()
    marker = stage.folder / FAILED
    while not stage.up_to_date():
        if marker.is_file() and marker.stat().st_mtime >= since - poll:
            reason = json.loads(marker.read_text()).get("error", "")
            raise PipelineError(f"node 0 failed stage {stage.id} ({reason[:200]}); fix it and restart every node")
        time.sleep(poll)


def _publish(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` unless it already holds the same bytes (nothing is touched then)."""
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        return False
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return True


def _run_stage(stage: Stage, ctx: Context) -> float:
    """Run one stage (node 0) and stamp it: its seconds. A failure is marked for the other nodes and becomes a
    one-line :class:`PipelineError` naming the stage and its run.log."""
    from pipelines.ablation_report import run_report
    from pipelines.stages import EXECUTORS

    stage.folder.mkdir(parents=True, exist_ok=True)
    (stage.folder / FAILED).unlink(missing_ok=True)
    tick = time.perf_counter()
    try:
        outputs = run_report(stage, ctx) if stage.kind == "report" else EXECUTORS[stage.kind](stage, ctx)
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        (stage.folder / FAILED).write_text(json.dumps({"error": message[:1000]}) + "\n")
        if isinstance(exc, PipelineError):
            raise
        raise PipelineError(f"stage {stage.id} failed: {message[:300]} (log: {stage.folder / 'run.log'})") from exc
    seconds = time.perf_counter() - tick
    _write_stamp(stage, seconds, outputs)
    return seconds


def _follow(stage: Stage, ctx: Context, head: str) -> None:
    """A node other than 0: join training; leave evaluations and the report to node 0; wait for the rest."""
    from pipelines.stages import EXECUTORS

    if stage.kind == "train":
        stage.folder.mkdir(parents=True, exist_ok=True)
        EXECUTORS["train"](stage, ctx)
        ctx.log(f"{head} trained (node {ctx.launch.node_rank})")
    elif stage.kind in ("eval", "report"):
        ctx.log(f"{head} left to node 0")
    else:
        _wait_for(stage, ctx.log)


def _publish_results(plan: Plan) -> tuple[dict[str, Any] | None, dict[str, Path]]:
    """The report's ``results.*`` copied to the work folder (when it is up to date), and the results."""
    if plan.report is None or not plan.report.up_to_date():
        return None, {}
    plan.work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in ("json", "md", "png"):
        target = plan.work / f"results.{key}"
        _publish(plan.report.folder / f"results.{key}", target)
        paths[key] = target
    return json.loads(paths["json"].read_text()), paths


def execute(plan: Plan, ctx: Context) -> RunResult:
    """Run every stage that is not up to date, in order; stop at the first failure (one line, its run.log)."""
    from pipelines.ablation_report import summary_text

    log, launch = ctx.log, plan.launch
    ctx.launch = launch
    total = len(plan.stages)
    todo = sum(1 for s in plan.stages if not s.up_to_date())
    p = plan.pipeline
    log(f"pipeline {p.name}, profile {p.profile}: {len(plan.variants)} variant(s), {total} stage(s), {todo} to run; "
        f"work {plan.work}" + (f" (node {launch.node_rank} of {launch.nodes})" if launch.nodes > 1 else ""))
    for name, vp in plan.variants.items():
        if vp.skipped:
            log(f"skipped variant {name}: {vp.skipped}")
    ran: list[str] = []
    fresh: list[str] = []
    started = time.perf_counter()
    for i, stage in enumerate(plan.stages, 1):
        head = f"[{i:>3}/{total}] {stage.kind:<7} {stage.name:<22}"
        if stage.up_to_date():
            fresh.append(stage.id)
            log(f"{head} {'external' if stage.external else 'up to date':<10}  {_where(plan, stage)}")
        elif launch.node_rank > 0:  # only training is shared; node 0 runs and stamps everything
            _follow(stage, ctx, head)
        else:
            seconds = _run_stage(stage, ctx)
            ran.append(stage.id)
            log(f"{head} {'ran':<10}  {_where(plan, stage)} ({seconds:.1f}s)")
    results, paths = _publish_results(plan)
    if results is not None:
        log(summary_text(results))
        log(f"{len(ran)} stage(s) ran, {len(fresh)} up to date, in {time.perf_counter() - started:.1f}s; "
            f"results: {paths['md']}, {paths['json']}, {paths['png']}")
    return RunResult(plan, ran, fresh, results, paths)


def default_work(pipeline: Pipeline) -> Path:
    """``pipeline-work/<name>-<profile>``."""
    return Path("pipeline-work") / f"{pipeline.name}-{pipeline.profile}"


def run_pipeline(pipeline: str | Path, profile: str = "smoke", work: str | Path | None = None, *,
                 data: str | Path | None = None, natural: str | Path | None = None, only: Sequence[str] = (),
                 overrides: Sequence[str] | dict[str | None, dict[str, Any]] = (), cache: str | Path | None = None,
                 strict: bool = False, launch: Launch | None = None, dry_run: bool = False,
                 log: Callable[[str], None] = print, progress: bool = False, verbose: bool = False) -> RunResult:
    """Load, plan and run a pipeline (``dry_run``: print the plan only). Errors: :class:`PipelineError`."""
    if not isinstance(overrides, dict):
        overrides = parse_overrides(list(overrides))
    spec = load(pipeline, profile, overrides)
    plan = make_plan(spec, work if work is not None else default_work(spec), data=data, natural=natural, only=only,
                     cache=cache, strict=strict, launch=launch)
    if dry_run:
        for line in describe(plan):
            log(line)
        return RunResult(plan, [], [s.id for s in plan.stages if s.up_to_date()], None, {})
    return execute(plan, Context(log=log, progress=progress, verbose=verbose, launch=plan.launch))


__all__ = [
    "STAGE_VERSIONS",
    "Launch",
    "Plan",
    "RunResult",
    "Stage",
    "VariantPlan",
    "check_data",
    "default_work",
    "describe",
    "execute",
    "fingerprint",
    "make_plan",
    "run_pipeline",
    "select_manifests",
    "stage_hash",
]
