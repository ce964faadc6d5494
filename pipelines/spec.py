"""Pipeline files: a TOML declaration of the profiles, the stages and the variants of an ablation table.

```toml
name = "mixing-sets"
title = "Table 4: mixing sets (CIFAR-100)"
extends = "other.toml"                # optional: take its [profiles.*] (this file's keys win)
column = "Mixing set"                 # header of the first column of the table
stages = ["data", "build", "shard", "train", "eval", "report"]   # optional; the default is all

[profiles.smoke]                      # options of every variant under --profile smoke
data = "generate"
preset = "smoke"
epochs = 1
limit = 12

[[variants]]
name = "fractals"                     # folder names, --only, --set fractals.views=2
row = "Fractals"                      # the paper's row (pixmix.evaluate.report.PAPER_ABLATIONS / PAPER_RESULTS)
sources = ["fractals"]                # mixset build sources; "natural" = a folder of natural images
views = 2                             # any option overrides the profile's ...
smoke = { limit = 8 }                 # ... and a table named after a profile overrides it for that profile
profiles = ["paper"]                  # optional: the profiles the variant belongs to (default: every one)
```

Two optional top-level keys shape the report: ``paper_table`` (a table of :data:`pixmix.evaluate.paper.TABLES`,
or ``table14``) gives the paper's rows and columns (default: the dataset's: Table 4's columns for CIFAR, Table
9's for ImageNet), and ``layout = "grid"`` lays the results out as Table 14's k x beta grid.

A variant is either a mixing set (``sources``), a PixMix strategy without a mixing set
(``partners = "augmented"``) or the baseline (``baseline = true``: the ``*-baseline`` preset on plain
shards). Options resolve in this order, later winning: :data:`OPTIONS` defaults, the profile, the
variant, the variant's table for the profile, then ``--set`` overrides from the command line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixmix.utils.errors import PixmixError

BUNDLED = Path(__file__).resolve().parent
STAGE_KINDS = ("data", "build", "shard", "train", "eval", "report")
NATURAL = "natural"  # the source name of the "300K Random Images" role: a folder of natural images
PARTNERS = ("both", "augmented", "mixing")

# name -> (default, allowed types, help). None: unset (the library's default); 0 sets an int option back to None.
OPTIONS: dict[str, tuple[Any, tuple[type, ...], str]] = {
    # data
    "dataset": ("cifar100", (str,), "training set and evaluation suite (cifar100; cifar10; imagenet)"),
    "data": ("generate", (str,), "'generate' (tiny synthetic data), 'required' (--data DIR) or a folder"),
    "train_images": (200, (int,), "generate: training images"),
    "test_images": (100, (int,), "generate: test images"),
    "c_per_severity": (None, (int,), "generate: images per corruption and severity (default: all test images)"),
    "p_sequences": (8, (int,), "generate: sequences per -P perturbation (0: no -P set)"),
    "p_frames": (4, (int,), "generate: frames per -P sequence"),
    "ood_images": (16, (int,), "generate: images per folder OOD set (0: the synthetic OOD sets only)"),
    "natural": ("", (str,), "a folder of natural images for the 'natural' source ('generate': synthetic)"),
    "natural_images": (24, (int,), "generate: natural stand-in images"),
    "classes": (3, (int,), "generate, imagenet: classes (real wnids; train_images and test_images are split "
                           "among them)"),
    "generated_size": (48, (int,), "generate, imagenet: side of every generated picture (a multiple of 4)"),
    # build
    "manifests": ("default", (str,), "'default' (manifests/), 'offline' (without remote archives) or a folder"),
    "limit": (None, (int,), "mixing pictures per source (default: every one the manifests declare)"),
    "image_size": (256, (int,), "shorter side of the stored mixing pictures"),
    "shard_size": (1000, (int,), "mixing pictures per mixing-set shard"),
    "fvis_models": (None, (list,), "FVis models (default: mixset.sources.fvis.DEFAULT_LAYERS)"),
    "fvis_steps": (512, (int,), "FVis optimisation steps"),
    "fvis_size": (128, (int,), "FVis render size"),
    "fvis_batch": (64, (int,), "FVis units per batch"),
    "fvis_weights": ("default", (str,), "FVis weights: default (pretrained, random-init fallback) or random"),
    "fvis_checkpoint": ("", (str,), "FVis weights of the one FVis model from a file: '' (none), 'pretrained' (the "
                                    "file of option pretrained: the network being fine-tuned), 'generate' (a seeded "
                                    "random-init state dict, the smoke stand-in) or a path"),
    "allow_degraded": (True, (bool,), "accept a mixing set whose remote archive was unreachable or whose FVis fell "
                                      "back to random-init weights (false: such a build fails, and is not cached)"),
    # shard
    "mixing": ("pregenerated", (str,), "'pregenerated': PixMix views written by mixset shard --pixmix (V views); "
                                       "'online': plain shards, PixMix on the training device every epoch (the paper)"),
    "views": (1, (int,), "pre-generated PixMix views per training image (epoch e reads view e mod V)"),
    "partners": ("both", (str,), "PixMix partners: both, augmented (no mixing set), mixing"),
    "k": (None, (int,), "PixMix rounds (default: the recipe's)"),
    "beta": (None, (int, float), "PixMix beta (default: the recipe's)"),
    "severity": (None, (int, float), "op severity (default: the recipe's)"),
    "shard_samples": (None, (int,), "samples per training shard (default: from 256 MiB shards)"),
    "train_limit": (None, (int,), "shard only the first N training images"),
    # train
    "preset": ("cifar", (str,), "pixmix train preset of the PixMix variants"),
    "baseline_preset": ("cifar-baseline", (str,), "preset of the baseline variant"),
    "epochs": (None, (int,), "training epochs (default: the preset's)"),
    "batch_size": (None, (int,), "global batch (default: the preset's)"),
    "lr": (None, (int, float), "learning rate (default: the preset's)"),
    "arch": (None, (str,), "pixmix train --arch (default: the preset's network)"),
    "pretrained": ("", (str,), "pixmix train --pretrained FILE to fine-tune from ('required': the profile needs one, "
                               "mixset run --pretrained FILE)"),
    "cutmix": (None, (int, float), "pixmix train --cutmix P: CutMix probability per batch (the paper's Table 6: 0.5)"),
    "iterative_fvis_every": (None, (int,), "Iterative PixMix: render FVis of the network being trained every N steps "
                                           "(online mixing only)"),
    "iterative_fvis_pool": (None, (int,), "Iterative PixMix: pictures in the rolling pool"),
    "iterative_fvis_steps": (None, (int,), "Iterative PixMix: optimisation steps per render"),
    "iterative_fvis_units": (None, (int,), "Iterative PixMix: units rendered per refresh"),
    "iterative_fvis_start_epoch": (None, (int,), "Iterative PixMix: first epoch mixed with the pool"),
    "launcher": ("auto", (str,), "train in-process, or 'torchrun' (auto: torchrun when nodes x GPUs > 1)"),
    # eval
    "eval_limit": (None, (int,), "at most N images per evaluation set"),
    "pgd_samples": (None, (int,), "images attacked by PGD (default: every test image)"),
    "ood_samples": (2000, (int,), "images per OOD set"),
    "eval_batch_size": (256, (int,), "evaluation batch"),
    "p_baseline": ("", (str,), "ImageNet: AlexNet's results.json whose -P rates normalise mFR and mT5D (pixmix eval "
                               "--p-baseline; '': unnormalised figures only, the comparable columns show '-')"),
    "reference_calibration": (False, (bool,), "drop the last calibration bin as the reference code does"),
    # everywhere
    "seed": (0, (int,), "seed of every stage"),
    "workers": (1, (int,), "worker processes of build, shard and training loaders"),
    "device": ("auto", (str,), "auto, cpu or cuda"),
}
VARIANT_KEYS = ("name", "row", "paper_row", "sources", "baseline", "description", "profiles")
LAYOUTS = ("table", "grid")  # the report: one row per variant, or Table 14's k x beta grid (and the rows)


class PipelineError(PixmixError):
    """A problem with the pipeline file, its options or its data, explained in one line."""


@dataclass(frozen=True)
class Variant:
    """One row of the table: what it mixes (or that it is the baseline) and its resolved options."""

    name: str
    row: str  # the row label (the paper's name)
    paper_row: str  # key into the paper's numbers
    sources: tuple[str, ...]
    baseline: bool
    options: dict[str, Any]  # fully resolved
    description: str = ""

    @property
    def partners(self) -> str:
        """PixMix partners: both, augmented or mixing."""
        return str(self.options["partners"])

    @property
    def needs_mixset(self) -> bool:
        """Whether the variant mixes with a mixing set (not the baseline, not partners 'augmented')."""
        return not self.baseline and self.partners != "augmented"


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file resolved for one profile: its stages and variants."""

    name: str
    title: str
    column: str
    profile: str
    path: Path
    stages: tuple[str, ...]
    variants: tuple[Variant, ...]
    notes: tuple[str, ...] = field(default=())
    paper_table: str | None = None  # the paper's table the report compares with (None: the dataset's)
    layout: str = "table"  # "table" (a row per variant) or "grid" (Table 14's k x beta grid)

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for v in self.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.variants)
        raise PipelineError(f"{self.path}: no variant {name!r} (variants: {known})")


def resolve_path(pipeline: str | Path) -> Path:
    """A pipeline file, or the name of a bundled one (``mixing-sets`` -> ``pipelines/mixing-sets.toml``)."""
    path = Path(pipeline)
    if path.is_file():
        return path
    for candidate in (BUNDLED / f"{pipeline}.toml", BUNDLED / str(pipeline)):
        if candidate.is_file():
            return candidate
    bundled = sorted(p.stem for p in BUNDLED.glob("*.toml"))
    raise PipelineError(f"pipeline {pipeline!r} is neither a file nor a bundled pipeline ({', '.join(bundled)})")


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML (``2``, ``1.5``, ``true``, ``["a", "b"]``, ``"x"``), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str | None, dict[str, Any]]:
    """``KEY=VALUE`` (every variant) or ``VARIANT.KEY=VALUE`` -> {variant or None: {key: value}}."""
    out: dict[str | None, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--set expects KEY=VALUE or VARIANT.KEY=VALUE, got {item!r}")
        variant, dot, name = key.strip().rpartition(".")
        out.setdefault(variant if dot else None, {})[name] = parse_value(value.strip())
    return out


def _check_options(where: str, table: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key not in OPTIONS:
            raise PipelineError(f"{where}: unknown option {key!r} (known: {', '.join(OPTIONS)})")
        _, types, _ = OPTIONS[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise PipelineError(f"{where}: option {key!r} must be {names}, got {value!r}")
        # 0 unsets an optional count (back to the library's default), as TOML has no null.
        out[key] = None if value == 0 and OPTIONS[key][0] is None and types == (int,) else value
    return out


def _profiles(path: Path, data: dict[str, Any], seen: tuple[Path, ...] = ()) -> dict[str, dict[str, Any]]:
    """The file's ``[profiles.*]``, on top of those of the file it ``extends`` (a path relative to it)."""
    own = data.get("profiles", {})
    if not isinstance(own, dict) or not all(isinstance(v, dict) for v in own.values()):
        raise PipelineError(f"{path}: profiles must be tables ([profiles.NAME])")
    parent = data.get("extends")
    if parent is None:
        return {k: dict(v) for k, v in own.items()}
    base_path = (path.parent / str(parent)).resolve()
    if base_path in seen or base_path == path.resolve():
        raise PipelineError(f"{path}: extends {parent!r} makes a cycle")
    try:
        base = tomllib.loads(base_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: extends {parent!r}, which is not a readable TOML pipeline ({exc})") from exc
    merged = _profiles(base_path, base, (*seen, path.resolve()))
    for name, table in own.items():
        merged.setdefault(name, {}).update(table)
    return merged


def _report_shape(path: Path, data: dict[str, Any]) -> tuple[str | None, str]:
    """The file's ``paper_table`` (checked against the paper's tables) and ``layout``."""
    from pixmix.evaluate.paper import TABLES

    table, layout = data.get("paper_table"), data.get("layout", "table")
    known = [*TABLES, "table14"]
    if table is not None and table not in known:
        raise PipelineError(f"{path}: paper_table must be one of {', '.join(known)}, got {table!r}")
    if layout not in LAYOUTS:
        raise PipelineError(f"{path}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return table, layout


def _in_profile(where: str, raw: dict[str, Any], profile: str, profiles: tuple[str, ...]) -> bool:
    """Whether a ``[[variants]]`` entry belongs to ``profile`` (its ``profiles`` list; default: every one)."""
    wanted = raw.get("profiles", list(profiles))
    if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
        raise PipelineError(f"{where}: profiles must be a list of profile names")
    unknown = [p for p in wanted if p not in profiles]
    if unknown:
        raise PipelineError(f"{where}: profiles names unknown profile(s) {', '.join(unknown)} "
                            f"(profiles: {', '.join(profiles)})")
    return profile in wanted


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable TOML pipeline ({exc})") from exc


def _stages(path: Path, data: dict[str, Any]) -> tuple[str, ...]:
    """The file's ``stages``: the first ones of :data:`STAGE_KINDS`, in order (each needs those before it)."""
    stages = tuple(data.get("stages", STAGE_KINDS))
    bad = [s for s in stages if s not in STAGE_KINDS]
    if bad:
        raise PipelineError(f"{path}: stages must be among {', '.join(STAGE_KINDS)}, got {bad}")
    if not stages or stages != STAGE_KINDS[:len(stages)]:
        raise PipelineError(f"{path}: stages must be the first stages of {list(STAGE_KINDS)} in order (each needs "
                            f"the ones before it), got {list(stages)}")
    return stages


@dataclass(frozen=True)
class _Layers:
    """The option layers around a variant's own: defaults + profile below, ``--set`` ones above."""

    base: dict[str, Any]  # OPTIONS defaults, then the profile's
    profile: str
    profiles: tuple[str, ...]  # a variant's table named after one of them holds its options for that profile
    everywhere: dict[str, Any]  # --set KEY=VALUE
    overrides: dict[str | None, dict[str, Any]]  # --set VARIANT.KEY=VALUE under the variant's name


def _variant_options(where: str, name: str, raw: dict[str, Any], layers: _Layers) -> dict[str, Any]:
    """The variant's resolved options (see the module docstring for the order)."""
    options = dict(layers.base)
    own = {k: v for k, v in raw.items() if k not in VARIANT_KEYS and k not in layers.profiles}
    options.update(_check_options(f"{where} ({name})", own))
    options.update(_check_options(f"{where} ({name}) [{layers.profile}]", raw.get(layers.profile, {})))
    options.update(layers.everywhere)
    options.update(_check_options(f"--set {name}.", layers.overrides.get(name, {})))
    return options


def _check_role(where: str, sources: object, baseline: object, partners: object) -> None:
    """A variant is a mixing set, a strategy without one (partners 'augmented') or the baseline: one of them."""
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise PipelineError(f"{where}: sources must be a list of source names")
    if not isinstance(baseline, bool):
        raise PipelineError(f"{where}: baseline must be true or false")
    if partners not in PARTNERS:
        raise PipelineError(f"{where}: partners must be one of {', '.join(PARTNERS)}")
    if baseline and sources:
        raise PipelineError(f"{where}: a baseline trains without PixMix: drop its sources")
    if not baseline and partners == "augmented" and sources:
        raise PipelineError(f"{where}: partners 'augmented' mixes without a mixing set: drop its sources")
    if not baseline and partners != "augmented" and not sources:
        raise PipelineError(f"{where}: a PixMix variant needs sources (or partners = 'augmented', or baseline = true)")


def _variant(where: str, raw: dict[str, Any], names: list[Any], layers: _Layers) -> Variant:
    """One ``[[variants]]`` entry, checked, with its options resolved."""
    name = raw.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/. \\"):
        raise PipelineError(f"{where}: name must be a non-empty string without '/', '.', '\\' or spaces")
    if names.count(name) > 1:
        raise PipelineError(f"{where}: variant name {name!r} is used twice")
    options = _variant_options(where, name, raw, layers)
    sources, baseline = raw.get("sources", []), raw.get("baseline", False)
    _check_role(f"{where} ({name})", sources, baseline, options["partners"])
    row = raw.get("row", name)
    return Variant(name=name, row=str(row), paper_row=str(raw.get("paper_row", row)),
                   sources=tuple(dict.fromkeys(sources)), baseline=baseline, options=options,
                   description=str(raw.get("description", "")))


def load(pipeline: str | Path, profile: str = "smoke",
         overrides: dict[str | None, dict[str, Any]] | None = None) -> Pipeline:
    """Parse and validate a pipeline file for ``profile``; every error is one line naming file and key."""
    path = resolve_path(pipeline)
    data = _read(path)
    profiles = _profiles(path, data)
    if not profiles:
        raise PipelineError(f"{path}: needs at least one [profiles.NAME] table")
    if profile not in profiles:
        raise PipelineError(f"{path}: no profile {profile!r} (profiles: {', '.join(profiles)})")
    base = {k: default for k, (default, _, _) in OPTIONS.items()}
    base.update(_check_options(f"{path} [profiles.{profile}]", profiles[profile]))
    overrides = dict(overrides or {})
    names = [v.get("name") for v in data.get("variants", [])]
    unknown = sorted(k for k in overrides if k is not None and k not in names)
    if unknown:
        raise PipelineError(f"--set: no variant {', '.join(unknown)} in {path} "
                            f"(variants: {', '.join(map(str, names))})")
    everywhere = _check_options("--set", overrides.get(None, {}))  # applied over each variant's own options
    stages = _stages(path, data)
    layers = _Layers(base, profile, tuple(profiles), everywhere, overrides)
    variants = [_variant(f"{path} variants[{i}]", raw, names, layers) for i, raw in enumerate(data.get("variants", []))
                if _in_profile(f"{path} variants[{i}]", raw, profile, tuple(profiles))]
    if not variants:
        raise PipelineError(f"{path}: declares no [[variants]] (for profile {profile})")
    paper_table, layout = _report_shape(path, data)
    return Pipeline(name=str(data.get("name", path.stem)), title=str(data.get("title", path.stem)),
                    column=str(data.get("column", "Variant")), profile=profile, path=path, stages=stages,
                    variants=tuple(variants), notes=tuple(str(n) for n in data.get("notes", [])),
                    paper_table=paper_table, layout=layout)


__all__ = ["BUNDLED", "LAYOUTS", "NATURAL", "OPTIONS", "STAGE_KINDS", "Pipeline", "PipelineError", "Variant", "load",
           "parse_overrides", "parse_value", "resolve_path"]
