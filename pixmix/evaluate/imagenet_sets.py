"""ImageNet's robustness sets in their released layouts, and the measures the paper reports on them.

=================  ======================================================  ====================================
set                layout under ``--data``                                  measure
=================  ======================================================  ====================================
ImageNet-R         ``imagenet-r/<wnid>/*.jpg`` (200 of the 1,000 wnids)     error and RMS calibration, with the
                                                                            predictions restricted to the 200
                                                                            classes (the reference's wnid mask)
ImageNet-C-Bar     ``ImageNet-C-Bar/<corruption>/<severity>/<wnid>/*``      error and RMS calibration
                   (10 corruptions; severity folders ``"{:.2f}"`` of the
                   generator's parameter, e.g. ``2.35``)
ImageNet-P         ``ImageNet-P/<perturbation>/<wnid>/*.mp4`` (read with   flip rate and top-5 distance,
                   PyAV), or the ``.npy`` form ``ImageNet-P/<p>.npy``       normalised by AlexNet's when known
ImageNet-O         ``ImageNet-O/<wnid>/*`` (or ``imagenet-o/``, or any      AUROC / AUPR of the negative maximum
                   folder of out-of-class images)                          softmax probability
=================  ======================================================  ====================================

Every folder image goes through Resize(256) + CenterCrop(224) (scaled to the model's input size), as the
reference evaluates ImageNet-C, -C-Bar and -R (PixMix's ``imagenet.py``, ImageNet-R's ``eval.py``);
ImageNet-P frames are fed as they are (224 px, the reference's ``test.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixmix.data.benchmarks import IMAGENET_C_BAR_CORRUPTIONS
from pixmix.data.readers import ClassFolders
from pixmix.evaluate import metrics
from pixmix.evaluate.inputs import Feeder, fit, one_thread, subset
from pixmix.evaluate.net import Net, Outputs
from pixmix.evaluate.ood import ImageFiles
from pixmix.utils.errors import PixmixError

# ImageNet-R's 200 classes (hendrycks/imagenet-r eval.py, PixMix imagenet.py), sorted: its class folders.
IMAGENET_R_WNIDS = (
    "n01443537", "n01484850", "n01494475", "n01498041", "n01514859", "n01518878", "n01531178", "n01534433",
    "n01614925", "n01616318", "n01630670", "n01632777", "n01644373", "n01677366", "n01694178", "n01748264",
    "n01770393", "n01774750", "n01784675", "n01806143", "n01820546", "n01833805", "n01843383", "n01847000",
    "n01855672", "n01860187", "n01882714", "n01910747", "n01944390", "n01983481", "n01986214", "n02007558",
    "n02009912", "n02051845", "n02056570", "n02066245", "n02071294", "n02077923", "n02085620", "n02086240",
    "n02088094", "n02088238", "n02088364", "n02088466", "n02091032", "n02091134", "n02092339", "n02094433",
    "n02096585", "n02097298", "n02098286", "n02099601", "n02099712", "n02102318", "n02106030", "n02106166",
    "n02106550", "n02106662", "n02108089", "n02108915", "n02109525", "n02110185", "n02110341", "n02110958",
    "n02112018", "n02112137", "n02113023", "n02113624", "n02113799", "n02114367", "n02117135", "n02119022",
    "n02123045", "n02128385", "n02128757", "n02129165", "n02129604", "n02130308", "n02134084", "n02138441",
    "n02165456", "n02190166", "n02206856", "n02219486", "n02226429", "n02233338", "n02236044", "n02268443",
    "n02279972", "n02317335", "n02325366", "n02346627", "n02356798", "n02363005", "n02364673", "n02391049",
    "n02395406", "n02398521", "n02410509", "n02423022", "n02437616", "n02445715", "n02447366", "n02480495",
    "n02480855", "n02481823", "n02483362", "n02486410", "n02510455", "n02526121", "n02607072", "n02655020",
    "n02672831", "n02701002", "n02749479", "n02769748", "n02793495", "n02797295", "n02802426", "n02808440",
    "n02814860", "n02823750", "n02841315", "n02843684", "n02883205", "n02906734", "n02909870", "n02939185",
    "n02948072", "n02950826", "n02951358", "n02966193", "n02980441", "n02992529", "n03124170", "n03272010",
    "n03345487", "n03372029", "n03424325", "n03452741", "n03467068", "n03481172", "n03494278", "n03495258",
    "n03498962", "n03594945", "n03602883", "n03630383", "n03649909", "n03676483", "n03710193", "n03773504",
    "n03775071", "n03888257", "n03930630", "n03947888", "n04086273", "n04118538", "n04133789", "n04141076",
    "n04146614", "n04147183", "n04192698", "n04254680", "n04266014", "n04275548", "n04310018", "n04325704",
    "n04347754", "n04389033", "n04409515", "n04465501", "n04487394", "n04522168", "n04536866", "n04552348",
    "n04591713", "n07614500", "n07693725", "n07695742", "n07697313", "n07697537", "n07714571", "n07714990",
    "n07718472", "n07720875", "n07734744", "n07742313", "n07745940", "n07749582", "n07753275", "n07753592",
    "n07768694", "n07873807", "n07880968", "n07920052", "n09472597", "n09835506", "n10565667", "n12267677",
)


# ImageNet-C-Bar's severity of each corruption: the generator's parameters (facebookresearch/
# augmentation-corruption, imagenet_c_bar/imagenet_c_bar.csv); make_imagenet_c_bar.py names each
# severity folder "{:.2f}".format(parameter).
IMAGENET_C_BAR_SEVERITIES: dict[str, tuple[float, ...]] = {
    "caustic_refraction": (2.35, 3.2, 4.9, 6.6, 9.15),
    "inverse_sparkles": (1.0, 2.0, 4.0, 9.0, 10.0),
    "sparkles": (1.0, 2.0, 3.0, 5.0, 6.0),
    "perlin_noise": (4.6, 5.2, 5.8, 7.6, 8.8),
    "blue_noise_sample": (0.8, 1.6, 2.4, 4.0, 5.6),
    "plasma_noise": (4.75, 7.0, 8.5, 9.25, 10.0),
    "checkerboard_cutout": (2.0, 3.0, 4.0, 5.0, 6.0),
    "cocentric_sine_waves": (3.0, 5.0, 8.0, 9.0, 10.0),
    "single_frequency_greyscale": (1.0, 1.5, 2.0, 4.5, 5.0),
    "brownish_noise": (1.0, 2.0, 3.0, 4.0, 5.0),
}
if tuple(IMAGENET_C_BAR_SEVERITIES) != IMAGENET_C_BAR_CORRUPTIONS:  # one list of names, in the csv's order
    raise ImportError("IMAGENET_C_BAR_SEVERITIES and IMAGENET_C_BAR_CORRUPTIONS disagree")

IMAGENET_R_FOLDER = "imagenet-r"
IMAGENET_C_BAR_FOLDER = "ImageNet-C-Bar"
IMAGENET_O_FOLDERS = ("ImageNet-O", "imagenet-o")  # ImageNet-C/-P style, then the release tar's own folder


def c_bar_severity_folders(corruption: str) -> tuple[str, ...]:
    """The five severity folder names of an ImageNet-C-Bar corruption, mildest first (``"2.35"``, ...)."""
    return tuple(f"{value:.2f}" for value in IMAGENET_C_BAR_SEVERITIES[corruption])


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of a video file (ImageNet-P's mp4s) as ``uint8 [T, H, W, 3]`` RGB, decoded by PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as exc:  # IndexError: a container without a video stream
        raise ValueError(f"{path}: not a readable video ({exc})") from exc
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames)


# --- the model's outputs restricted to a class subset (ImageNet-R's wnid mask) --------------------------


def class_columns(wnids: Mapping[str, int], keep: Collection[str]) -> np.ndarray:
    """The model's output columns (val's class index of each wnid) whose wnid is in ``keep``, ascending."""
    return np.array(sorted(index for wnid, index in wnids.items() if wnid in keep), dtype=np.int64)


class MaskedNet(Net):
    """``net`` with its logits restricted to ``columns``: predictions are positions in ``columns`` and the
    softmax (the confidence) runs over those classes only, as ImageNet-R's reference does
    (``net(x)[:, imagenet_r_mask]``)."""

    def __init__(self, net: Net, columns: np.ndarray) -> None:  # noqa: D107 - the class says it
        self.__dict__.update(net.__dict__)
        self.columns = torch.as_tensor(columns, dtype=torch.int64, device=net.device)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return super().logits(batch)[:, self.columns]


def renditions(net: Net, data: Path, feed: Feeder, limit: int | None, wnids: Mapping[str, int],
               notes: list[str]) -> tuple[Outputs, np.ndarray] | None:
    """ImageNet-R (optional): the outputs of the masked network on ``imagenet-r/<wnid>/*`` (at most ``limit``
    images, evenly spaced) and their labels (positions among the model's ImageNet-R classes); None with a
    note when the folder is absent."""
    folder = data / IMAGENET_R_FOLDER
    if not folder.is_dir():
        notes.append(f"skipped: {folder} not found (ImageNet-R)")
        return None
    images = ClassFolders(folder)
    foreign = [w for w in images.classes if w not in IMAGENET_R_WNIDS or w not in wnids]
    if foreign:
        raise PixmixError(f"{folder}: class folders {foreign[:3]} are not among ImageNet-R's 200 classes and the "
                          "model's", param="data_dir")
    columns = class_columns(wnids, IMAGENET_R_WNIDS)
    position = {int(column): i for i, column in enumerate(columns)}
    to_label = np.array([position[wnids[w]] for w in images.classes], dtype=np.int64)
    labels = to_label[np.array([item.label for item in images.items], dtype=np.int64)]
    idx = subset(len(labels), limit)
    out = MaskedNet(net, columns).run(feed.batches(images, idx), len(idx), "imagenet-r")
    return out, labels[idx]


# --- ImageNet-C and ImageNet-C-Bar folders ---------------------------------------------------------------


def severity_folders(corrupted: Path, name: str) -> list[Path]:
    """The five severity folders of corruption ``name`` under ``corrupted`` (ImageNet-C or -C-Bar), mildest
    first; [] when the corruption is absent. ImageNet-C's are ``1``..``5``; ImageNet-C-Bar's the release's
    ``"{:.2f}"`` parameters, or ``1``..``5`` as in PixMix's own copy of it."""
    if not (corrupted / name).is_dir():
        return []
    candidates = [[str(s) for s in range(1, 6)]]
    if name in IMAGENET_C_BAR_SEVERITIES:
        candidates.insert(0, list(c_bar_severity_folders(name)))
    for names in candidates:
        if (corrupted / name / names[0]).is_dir():
            folders = [corrupted / name / n for n in names]
            missing = [f for f in folders if not f.is_dir()]
            if missing:
                raise PixmixError(f"{missing[0]} not found: {corrupted.name}/{name} lacks a severity",
                                  param="data_dir")
            return folders
    raise PixmixError(f"{corrupted / name} holds none of the severity folders {', '.join(candidates[0])}",
                      param="data_dir")


def renditions_result(net: Net, data: Path, feed: Feeder, limit: int | None, wnids: Mapping[str, int],
                      notes: list[str], calibration: Callable[..., dict[str, Any]]) -> dict[str, Any] | None:
    """``results["r"]``: ImageNet-R's error and RMS calibration over the model's ImageNet-R classes; the
    calibration figures (the reference's and the corrected one) are ``calibration``'s, the shared
    :func:`pixmix.evaluate.measures.calibration` (passed in: measures imports this module)."""
    found = renditions(net, data, feed, limit, wnids, notes)
    if found is None:
        return None
    out, labels = found
    correct = out.pred == labels
    figures = calibration({"imagenet-r": ([out.conf], [correct])})
    return {"error": float(np.mean(~correct) * 100), "samples": len(labels), "classes": len(IMAGENET_R_WNIDS),
            "model_classes": int(len(class_columns(wnids, IMAGENET_R_WNIDS))),
            **{k: v for k, v in figures.items() if "per_corruption" not in k and "pooled" not in k}}


# --- ImageNet-P: the released mp4 videos, and AlexNet's normalisation -----------------------------------

# AlexNet's ImageNet-P flip probability (percent) and top-5 distance per perturbation: the normalisers of
# ImageNet-P's mFR and mT5D (Hendrycks & Dietterich 2019: FR = FP / FP_AlexNet, T5D likewise, averaged
# over the 10 perturbations). The paper prints only normalised figures; AlexNet's raw rates are published
# in the authors' spreadsheet (hendrycks/robustness issue 49), which this offline build could not read, so
# none are bundled: pass them as ``p_baseline`` (a results.json of AlexNet evaluated by this code, or a
# {perturbation: {"flip_rate", "t5d"}} mapping) to get the normalised figures.
ALEXNET_P_RATES: dict[str, dict[str, float]] = {}


def p_baseline_rates(source: str | Path | Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """AlexNet's rates per perturbation from ``source``: None (the bundled :data:`ALEXNET_P_RATES`), a
    ``{perturbation: {"flip_rate", "t5d"}}`` mapping, or a ``results.json`` of an evaluation (of AlexNet)
    whose ``perturbations.per_perturbation`` holds them. A source without any is a one-line error."""
    import json

    if source is None:
        return dict(ALEXNET_P_RATES)
    table: Any = source
    if not isinstance(source, Mapping):
        try:
            table = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise PixmixError(f"{source}: not a readable results.json ({exc})", param="p_baseline") from exc
    if isinstance(table, Mapping) and isinstance(table.get("perturbations"), Mapping):
        table = table["perturbations"].get("per_perturbation")
    rates = {}
    for name, v in (table.items() if isinstance(table, Mapping) else ()):
        if isinstance(v, Mapping) and all(isinstance(v.get(k), int | float) for k in ("flip_rate", "t5d")):
            rates[str(name)] = {"flip_rate": float(v["flip_rate"]), "t5d": float(v["t5d"])}
    if not rates:
        raise PixmixError(f"{source}: no per-perturbation flip_rate / t5d in it", param="p_baseline")
    return rates


def normalised_rates(per: Mapping[str, Mapping[str, Any]], names: Collection[str],
                     baseline: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    """ImageNet-P's mFR and mT5D (percent): each perturbation's flip rate and T5D divided by the baseline's,
    averaged over ``names``; None when the baseline lacks one of them (or has a zero rate)."""
    usable = all(name in baseline and baseline[name]["flip_rate"] > 0 and baseline[name]["t5d"] > 0
                 for name in names)
    if not names or not usable:
        return None
    return {key: float(np.mean([per[n][metric] / baseline[n][metric] for n in names]) * 100)
            for key, metric in (("mfr", "flip_rate"), ("mt5d", "t5d"))}


def video_files(folder: Path) -> list[Path]:
    """ImageNet-P's sequences of one perturbation: ``folder/<wnid>/*.mp4``, sorted."""
    return sorted(p for p in folder.rglob("*.mp4") if p.is_file())


class VideoFiles(torch.utils.data.Dataset):
    """Decoded videos as ``(uint8 [T, 3, H, W] tensor, "")``, or ``(empty tensor, why)`` for a file that
    cannot be decoded: the main process then fails in one line (an exception raised in a loader worker
    would reach the user wrapped in the worker's traceback)."""

    def __init__(self, files: list[Path]) -> None:  # noqa: D107 - the class says it
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return torch.from_numpy(read_video(self.files[i])).permute(0, 3, 1, 2), ""
        except ValueError as exc:
            return torch.empty(0, dtype=torch.uint8), str(exc)


def video_consistency(net: Net, folder: Path, name: str, feed: Feeder, limit: int | None) -> dict[str, Any]:
    """Flip rate (percent) and top-5 distance of one ImageNet-P perturbation's mp4s (at most ``limit``
    videos, evenly spaced), decoded by ``feed.workers`` processes; frames reach the model unresized when
    they have its input size (224 for the release), else resized and centre-cropped.

    As the reference (``ImageNet-P/test.py``): each video's rate is the mean over its frame pairs
    (consecutive frames; every frame against the first for noise), averaged over videos.
    """
    files = video_files(folder)
    if not files:
        raise PixmixError(f"{folder} holds no .mp4 videos (expected <perturbation>/<wnid>/*.mp4)", param="data_dir")
    chosen = [files[i] for i in subset(len(files), limit)]
    lengths: list[int] = []
    out = net.run(_frame_batches(chosen, lengths, feed), len(chosen) * _frames_hint(chosen[0]), name, top5=True)
    if out.top5 is None:  # run(top5=True) always ranks
        raise RuntimeError("Net.run returned no top-5 classes")
    noise = "noise" in name
    bounds = np.cumsum([0, *lengths])
    flips = [metrics.flip_rate(out.pred[None, a:b], noise) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    tops = [metrics.t5d(out.top5[None, a:b], noise) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return {"flip_rate": float(np.mean(flips)), "t5d": float(np.mean(tops)), "noise": noise,
            "sequences": len(chosen), "frames": int(max(lengths)), "source": "mp4"}


def _frames_hint(path: Path) -> int:
    """The frame count a video's header announces (for the progress bar; ImageNet-P's are about 30)."""
    import av

    try:
        with av.open(str(path)) as container:
            return max(int(container.streams.video[0].frames), 1)
    except (av.error.FFmpegError, IndexError):  # decoding it says what is wrong, in one line
        return 1


def _frame_batches(files: list[Path], lengths: list[int], feed: Feeder) -> Iterator[torch.Tensor]:
    """Frames of ``files`` in order, whole videos per batch of about ``feed.batch_size`` frames; appends each
    video's frame count to ``lengths``."""
    # Nothing is random; the generator only keeps the loader's base seed off the global RNG.
    loader = torch.utils.data.DataLoader(VideoFiles(files), batch_size=None, shuffle=False,
                                         num_workers=feed.workers, generator=torch.Generator(),
                                         worker_init_fn=one_thread if feed.workers else None)
    pending: list[torch.Tensor] = []
    for (video, error), path in zip(loader, files, strict=True):
        if error:
            raise PixmixError(error, param="data_dir")
        if len(video) < 2:
            raise PixmixError(f"{path}: {len(video)} frame(s); a perturbation sequence needs at least 2",
                              param="data_dir")
        lengths.append(len(video))
        pending.append(video)
        if sum(len(v) for v in pending) >= feed.batch_size:
            yield fit(torch.cat(pending), feed.size)
            pending = []
    if pending:
        yield fit(torch.cat(pending), feed.size)


# --- out-of-class anomaly detection (ImageNet-O or any folder) -------------------------------------------


def out_of_class_folder(data: Path, ood_folder: str | Path | None) -> Path | None:
    """The folder of out-of-class images: ``ood_folder`` when given (it must exist), else ``ImageNet-O/``
    (or the release's ``imagenet-o/``) under ``data``; None when there is none."""
    if ood_folder is not None:
        if not Path(ood_folder).is_dir():
            raise PixmixError(f"{ood_folder} not found: --ood-folder must be a folder of images", param="ood_folder")
        return Path(ood_folder)
    return next((data / name for name in IMAGENET_O_FOLDERS if (data / name).is_dir()), None)


def out_of_class(net: Net, folder: Path, feed: Feeder, in_confidences: np.ndarray, count: int | None,
                 seed: int) -> dict[str, Any]:
    """``results["anomaly"]`` for ImageNet: AUROC, AUPR (and FPR95) of the negative maximum softmax probability,
    val's images against the out-of-class images under ``folder`` (anomalies positive; at most ``count``
    of them, a seeded subset), as the paper's ImageNet anomaly columns."""
    files = ImageFiles(folder, limit=count, seed=seed)
    out = net.run(feed.batches(files, np.arange(len(files))), len(files), "out-of-class")
    figures = metrics.anomaly_metrics(-in_confidences, -out.conf)
    return {"per_set": {"out_of_class": {**figures, "samples": len(files), "folder": str(folder)}}, **figures,
            "in_samples": int(len(in_confidences))}
