"""A run folder's files: ``checkpoints/last.pt`` (resumed), kept ``checkpoints/epoch-NNN.pt`` copies and
``log.jsonl`` (one JSON record per epoch).

After each epoch rank 0 saves ``last.pt`` atomically, then the kept copy, then the log line; a resume
trims the log to the checkpoint's epochs, so a run killed anywhere in between continues cleanly. With
``--checkpoint-every N``, ``last.pt`` is also replaced every N steps within an epoch: then its ``epoch`` counts the
completed epochs, its ``metrics`` are the last completed epoch's record and its ``mid_epoch`` holds the epoch in
progress (:class:`pixmix.train.loop.MidEpoch`); no log line is written until the epoch ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixmix.augment.recipes import Recipe
from pixmix.models import load_checkpoint, save_checkpoint
from pixmix.train.errors import TrainError
from pixmix.train.loop import Learner, MidEpoch, cosine_factor
from pixmix.utils.errors import PixmixError

# Fields that may differ when a run is resumed: more epochs extend it (the cosine is re-planned from
# there on); keep_every and checkpoint_every only change which checkpoints are written.
RESUMABLE_CHANGES = ("epochs", "keep_every", "checkpoint_every")
# What a resumed run's data must share with the checkpoint's (the shards' folder may move).
_DATA_KEYS = ("kind", "mode", "samples", "mixset")


@dataclass(frozen=True)
class RunFiles:
    """The paths of the run folder ``out``."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def log(self) -> Path:
        return self.out / "log.jsonl"

    def kept(self, epoch: int) -> Path:
        """The kept copy of the checkpoint after ``epoch`` (1-based)."""
        return self.checkpoints / f"epoch-{epoch:03d}.pt"


def config_differences(stored: dict[str, Any], requested: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """``"name: stored -> requested"`` for every field that differs, except :data:`RESUMABLE_CHANGES`.

    A field the stored config lacks (a checkpoint written before the field existed) counts as equal when
    the requested value is that field's default (``defaults``): such a run is the one the old code ran."""
    defaults = defaults or {}
    names = sorted(set(stored) | set(requested))
    return [f"{n}: {stored.get(n)!r} -> {requested.get(n)!r}" for n in names
            if n not in RESUMABLE_CHANGES and stored.get(n) != requested.get(n)
            and not (n not in stored and n in defaults and requested.get(n) == defaults[n])]


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    """The recipe fields a checkpoint stores (evaluation normalises with them)."""
    return {"name": recipe.name, "mean": list(recipe.mean), "std": list(recipe.std), "image_size": recipe.image_size}


# --- resume --------------------------------------------------------------------------------------


def load_resumable(
    files: RunFiles, config: dict[str, Any], data: dict[str, Any], say: Callable[[str], None],
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The checkpoint to resume (``None``: a new run); :class:`TrainError` if it holds a run with other
    options or data than ``config`` and ``data`` (the records :class:`CheckpointSaver` stores). ``defaults``:
    the config fields' defaults, which a checkpoint written before a field existed is taken to have used."""
    if not files.last.exists():
        return None
    try:
        state = load_checkpoint(files.last)
    except PixmixError as exc:  # truncated or damaged (a killed copy, a full disk): say how to recover
        raise TrainError(f"{exc}; delete it to start over, or restore it from a kept "
                         f"{files.checkpoints}/epoch-NNN.pt (copy one to last.pt) to resume") from exc
    diffs = config_differences(state["config"], config, defaults)
    stored = state.get("data", {})
    data_diffs = [f"{k}: {stored.get(k)!r} -> {data[k]!r}" for k in _DATA_KEYS if stored.get(k) != data[k]]
    if diffs or data_diffs:
        raise TrainError(f"{files.last} holds a run with other options ({'; '.join(diffs + data_diffs)}): "
                         "use a new --out (or the same options to resume)")
    if state["data"]["shards"] != data["shards"]:
        say(f"note: resuming with shards {data['shards']} (the run started on {state['data']['shards']})")
    return state


def resume(
    state: dict[str, Any], learner: Learner, files: RunFiles, *, epochs: int, total_steps: int,
    say: Callable[[str], None],
) -> int:
    """Put the checkpoint's optimiser, schedule and scaler state into ``learner``; the epochs it completed.

    The learning rate is re-planned over ``total_steps`` (a resume may ask for more epochs).
    """
    learner.optimizer.load_state_dict(state["optimizer_state"])
    learner.scheduler.load_state_dict(state["scheduler_state"])
    if learner.scaler is not None and state.get("scaler_state") is not None:
        learner.scaler.load_state_dict(state["scaler_state"])
    completed, learner.step = int(state["epoch"]), int(state["step"])
    mid = state.get("mid_epoch")
    if state["config"]["epochs"] != epochs:
        say(f"note: {state['config']['epochs']} -> {epochs} epochs: the cosine schedule is re-planned "
            f"over {total_steps} steps from step {learner.step}")
    # The lr of the next step under this run's schedule (the same value LambdaLR would compute).
    for group, base in zip(learner.optimizer.param_groups, learner.scheduler.base_lrs, strict=True):
        group["lr"] = base * cosine_factor(learner.step, total_steps)
    within = f", {mid['position']['step']} steps into epoch {completed + 1}" if mid is not None else ""
    say(f"resumed {files.last} at epoch {completed}/{epochs} (step {learner.step}{within})")
    return completed


# --- saving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointSaver:
    """Rank 0's writer after each epoch: ``last.pt`` (atomic), the kept ``epoch-NNN.pt`` (every
    ``keep_every`` epochs and the last; 0: none) and the epoch's ``log.jsonl`` line.

    ``model``, ``config``, ``recipe``, ``classes`` and ``data`` are the run's fixed checkpoint fields.
    """

    files: RunFiles
    epochs: int
    keep_every: int
    model: dict[str, Any]
    config: dict[str, Any]
    recipe: dict[str, Any]
    classes: list[str]
    data: dict[str, Any]

    def save(self, learner: Learner, record: dict[str, Any]) -> None:
        """Save the state after the epoch ``record`` describes (its ``epoch`` is 1-based)."""
        epoch = int(record["epoch"])
        save_checkpoint(self.files.last, self.payload(learner, record))
        if self.keep_every and (epoch == self.epochs or epoch % self.keep_every == 0):
            keep_copy(self.files.last, self.files.kept(epoch))
        append_log(self.files.log, record)  # after the checkpoint: a resume trims records it does not hold

    def save_mid_epoch(
        self, learner: Learner, completed: int, last_record: dict[str, Any] | None, mid: MidEpoch
    ) -> None:
        """Save ``last.pt`` (atomically) partway through epoch ``completed + 1``; ``last_record``: the log record
        of epoch ``completed`` (``None`` in the first epoch)."""
        state = self.payload(learner, {"epoch": completed})
        state.update(metrics=last_record, mid_epoch=mid.to_state())
        save_checkpoint(self.files.last, state)

    def payload(self, learner: Learner, record: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's fields (plain values only: it loads with ``weights_only=True``)."""
        scaler = learner.scaler
        return {
            "model": self.model, "model_state": learner.model.state_dict(),
            "optimizer_state": learner.optimizer.state_dict(), "scheduler_state": learner.scheduler.state_dict(),
            "scaler_state": scaler.state_dict() if scaler is not None else None,
            "epoch": int(record["epoch"]), "step": learner.step, "config": self.config, "recipe": self.recipe,
            "classes": self.classes, "metrics": record, "data": self.data,
        }


def keep_copy(last: Path, kept: Path) -> None:
    """``kept`` as a hard link to ``last`` (no second write; ``last`` is replaced, not rewritten, later)."""
    tmp = kept.with_name(kept.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        import shutil

        shutil.copyfile(last, tmp)
    tmp.replace(kept)


# --- log.jsonl -----------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl``; a line a killed run left half-written is dropped (the checkpoint's
    own record is put back by :func:`reconcile_log`), not fatal: it would stop rank 0 only and hang the rest."""
    if not path.exists():
        return []
    records = []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise TrainError(f"{path}: unreadable ({exc.strerror or exc}): delete it for a fresh log (the "
                         "checkpoint's last epoch is logged again) or restore it") from exc
    for line in text.splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def reconcile_log(path: Path, completed: int, last_metrics: dict[str, Any] | None) -> None:
    """Make ``log.jsonl`` hold exactly the records of the checkpoint's epochs.

    Records of epochs the checkpoint does not hold (a run killed between logging and saving) go;
    the checkpoint's own record comes back if it was lost.
    """
    records = [r for r in read_log(path) if int(r.get("epoch", 0)) <= completed]
    if last_metrics is not None and not any(r.get("epoch") == completed for r in records):
        records.append(last_metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, on disk before this returns."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


__all__ = ["RESUMABLE_CHANGES", "CheckpointSaver", "RunFiles", "append_log", "config_differences", "keep_copy",
           "load_resumable", "read_log", "recipe_record", "reconcile_log", "resume"]
