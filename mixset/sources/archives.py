"""Unpack untrusted archives and sanity-check untrusted images.

:func:`safe_extract` unpacks a tar (plain, gzip, bzip2, xz) or zip archive, detected by content, never by
name. Policy, identical on every Python version (the files are written by this module, not by
``tarfile.extract``/``zipfile.extract``, so the tar "data" filter is not needed and its version-dependent
behaviour does not matter):

* **Whole-archive refusal.** Every member is checked before a single byte is written. One bad member (an
  absolute path or drive letter, a ``..`` component, a NUL byte, a symlink, a hardlink, a device, a fifo,
  an encrypted zip entry, a duplicate name or a file/folder name clash) refuses the whole archive, and the
  message names that member. Members that ``include`` leaves out are checked too: a malicious member means
  the archive is not what the manifest promised. Backslashes count as folder separators, so ``a\\b`` is
  ``a/b`` and ``..\\x`` is refused.
* **Limits.** ``max_members`` bounds the number of members (all of them, counted while reading the index);
  ``max_member_bytes`` and ``max_total_bytes`` bound the uncompressed bytes written (included members only).
  The defaults fit the real collections (the largest, the paper's ``fractals_and_fvis.tar``, is about
  1.6 GB): 2 GiB per member and 16 GiB in all, the download cap of :mod:`mixset.sources.fetch`.
  ``max_ratio`` bounds the expansion (a decompression bomb: 3 MB that inflate to 3 GiB): past
  ``RATIO_FLOOR_BYTES`` (64 MiB), no more than ``max_ratio`` (100) times the archive's own size is written.
  Image collections are already compressed (JPEG, PNG) and expand about 1:1, so only a bomb reaches that.
  Sizes declared in the headers are checked before extraction, and the bytes actually produced are counted
  while writing (a zip entry cannot inflate past its limit even if its header lies).
* **Atomic result.** Members are written into a temporary sibling folder of ``out_dir`` that is renamed to
  ``out_dir`` at the end. On any error the temporary folder is removed and ``out_dir`` is not created.
  ``out_dir`` must not exist, or be an empty folder (which is then replaced). The temporary folder's name
  holds the process id; one left by a process that is gone (killed mid-extraction) is removed by the next
  extraction into the same ``out_dir``.
* Files get mode 0o644 (folders the default mode); owners, permissions and times from the archive are
  ignored.

Untrusted images are checked by :mod:`pixmix.data.images` (``open_image``, ``check_image``: header first,
decompression bombs refused before decoding, then a full decode); they are re-exported here.
"""

from __future__ import annotations

import glob
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

from pixmix.data.images import DEFAULT_IMAGE_FORMATS, ImageError, check_image  # re-exported
from pixmix.utils.errors import PixmixError

__all__ = [
    "DEFAULT_IMAGE_FORMATS",
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_BYTES",
    "RATIO_FLOOR_BYTES",
    "ArchiveError",
    "ImageError",
    "check_image",
    "safe_extract",
]

#: Default cap on the uncompressed size of one member.
DEFAULT_MAX_MEMBER_BYTES = 2 * 2**30
#: Default cap on the uncompressed size of everything extracted from one archive (the real collections are at
#: most a few GiB; this is also fetch's DEFAULT_MAX_BYTES, the largest archive that is downloaded).
DEFAULT_MAX_TOTAL_BYTES = 16 * 2**30
#: Default cap on bytes written per byte of archive (beyond RATIO_FLOOR_BYTES): a decompression bomb's ratio.
DEFAULT_MAX_RATIO = 100.0
#: Below this many bytes written, the ratio is not checked (small archives of text compress well).
RATIO_FLOOR_BYTES = 64 * 2**20

_CHUNK = 1 << 20


class ArchiveError(PixmixError):
    """An archive or image was refused. The message is one line naming the file (and member) and the reason."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(" ".join(str(message).split()), param=param)


@dataclass(frozen=True)
class _Member:
    raw: str  # the name as stored in the archive
    name: str  # normalised, relative, '/'-separated
    is_dir: bool
    size: int  # declared uncompressed size (0 for folders)
    handle: tarfile.TarInfo | zipfile.ZipInfo


def _show(name: str) -> str:
    return repr(name)  # quotes, and escapes newlines/control characters, keeping messages on one line


def _normalise(raw: str, archive: Path) -> str:
    """The safe relative POSIX name for a member, or ArchiveError. '' means the archive root ('./')."""

    def refuse(why: str) -> ArchiveError:
        return ArchiveError(
            f"unsafe member {_show(raw)} in {archive}: {why}; the archive was refused and nothing was extracted"
        )

    if "\x00" in raw:
        raise refuse("NUL byte in its name")
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise refuse("absolute path")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise refuse("drive-letter path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("'..' component escapes the output folder")
    return "/".join(parts)


def _tar_members(tf: tarfile.TarFile, archive: Path, max_members: int) -> list[_Member]:
    members: list[_Member] = []
    count = 0
    for info in tf:
        count += 1
        if count > max_members:
            raise ArchiveError(
                f"{archive} has more than {max_members} members; refused (raise max_members if it is genuine)"
            )
        name = _normalise(info.name, archive)
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hardlink"
            raise ArchiveError(
                f"unsafe member {_show(info.name)} in {archive}: {kind} to {_show(info.linkname)}; "
                "the archive was refused and nothing was extracted"
            )
        if not (info.isreg() or info.isdir()):
            kind = {
                tarfile.CHRTYPE: "character device",
                tarfile.BLKTYPE: "block device",
                tarfile.FIFOTYPE: "fifo",
            }.get(info.type, f"unsupported member type {info.type!r}")
            raise ArchiveError(
                f"unsafe member {_show(info.name)} in {archive}: {kind}; "
                "the archive was refused and nothing was extracted"
            )
        members.append(_Member(info.name, name, info.isdir(), 0 if info.isdir() else info.size, info))
    return members


def _zip_members(zf: zipfile.ZipFile, archive: Path, max_members: int) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > max_members:
        raise ArchiveError(
            f"{archive} has {len(infos)} members, over the limit of {max_members}; refused "
            "(raise max_members if it is genuine)"
        )
    members: list[_Member] = []
    for info in infos:
        name = _normalise(info.filename, archive)
        mode = info.external_attr >> 16
        fmt = stat.S_IFMT(mode)
        is_dir = info.is_dir() or fmt == stat.S_IFDIR
        if fmt and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "symlink" if stat.S_ISLNK(mode) else "special file (device, fifo or socket)"
            raise ArchiveError(
                f"unsafe member {_show(info.filename)} in {archive}: {kind}; "
                "the archive was refused and nothing was extracted"
            )
        if info.flag_bits & 0x1:
            raise ArchiveError(f"member {_show(info.filename)} in {archive} is encrypted; refused")
        members.append(_Member(info.filename, name, is_dir, 0 if is_dir else info.file_size, info))
    return members


def _check_layout(members: list[_Member], archive: Path) -> None:
    """Refuse duplicate names and file/folder clashes (``a`` a file and ``a/b`` a member)."""
    files: set[str] = set()
    dirs: set[str] = set()
    for m in members:
        if not m.name:
            if not m.is_dir:
                raise ArchiveError(f"member {_show(m.raw)} in {archive} has an empty name; refused")
            continue
        parents = ["/".join(m.name.split("/")[:i]) for i in range(1, m.name.count("/") + 1)]
        for p in parents:
            if p in files:
                raise ArchiveError(
                    f"member {_show(m.name)} in {archive} is inside {_show(p)}, which is a file; refused"
                )
            dirs.add(p)
        if m.is_dir:
            if m.name in files:
                raise ArchiveError(f"member {_show(m.name)} in {archive} is both a file and a folder; refused")
            dirs.add(m.name)
        else:
            if m.name in files:
                raise ArchiveError(f"duplicate member {_show(m.name)} in {archive}; refused")
            if m.name in dirs:
                raise ArchiveError(f"member {_show(m.name)} in {archive} is both a file and a folder; refused")
            files.add(m.name)


def _copy(src: IO[bytes], dst_path: Path, limit: int, member: str, archive: Path, what: str) -> int:
    written = 0
    with open(dst_path, "xb") as out:
        while True:
            block = src.read(_CHUNK)
            if not block:
                break
            written += len(block)
            if written > limit:
                raise ArchiveError(f"member {_show(member)} in {archive} exceeds {what}; refused")
            out.write(block)
    os.chmod(dst_path, 0o644)
    return written


def safe_extract(
    archive: Path,
    out_dir: Path,
    *,
    include: Callable[[str], bool] | None = None,
    max_members: int = 1_000_000,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[Path]:
    """Extract ``archive`` into ``out_dir`` (which must not exist, or be empty) atomically and safely.

    ``include(name)`` gets each member's normalised relative name (``'fractals/images/a.jpg'``) and decides
    whether it is extracted; folders are created as needed for included files, and a folder member is only
    created on its own when ``include`` is None or accepts it. Returns the extracted files (not folders) as
    paths under ``out_dir``, in archive order. ``max_ratio`` bounds bytes written per byte of archive once
    more than ``RATIO_FLOOR_BYTES`` are written. See the module docstring for the safety policy.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    kind = _check_paths(archive, out_dir)
    if not max_ratio > 0:
        raise ArchiveError(f"max_ratio must be > 0, got {max_ratio!r}", param="max_ratio")
    ratio_cap = max(RATIO_FLOOR_BYTES, int(max_ratio * archive.stat().st_size))
    limits = _Limits(max_member_bytes, max_total_bytes, ratio_cap, max_ratio)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".extracting", dir=out_dir.parent))
    try:
        written = _unpack(kind, archive, tmp, include, max_members, limits)
        if out_dir.is_dir() and not out_dir.is_symlink():
            out_dir.rmdir()  # empty (checked above); fails loudly if something appeared meanwhile
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out_dir / rel for rel in written]


@dataclass(frozen=True)
class _Limits:
    """The byte limits of one extraction: per member, in all, and by expansion ratio (already in bytes)."""

    member: int
    total: int
    ratio_cap: int
    ratio: float

    def budget(self) -> tuple[int, str]:
        """The bytes all chosen members may add up to, and how to name that limit."""
        if self.ratio_cap < self.total:
            return self.ratio_cap, (f"the expansion limit of {self.ratio_cap} bytes ({self.ratio:g} times the "
                                    "archive's size: a decompression bomb?)")
        return self.total, f"the limit of {self.total} bytes"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _remove_stale(out_dir: Path) -> None:
    """Remove temporary folders of earlier extractions into ``out_dir`` whose process is gone (killed)."""
    prefix = f".{out_dir.name}."
    for candidate in out_dir.parent.glob(f"{glob.escape(prefix)}*.extracting"):
        pid = candidate.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)) and candidate.is_dir() \
                and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)


def _check_paths(archive: Path, out_dir: Path) -> str:
    """The archive's kind (``"tar"`` or ``"zip"``, by content); refuses a missing archive or a used ``out_dir``."""
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist or is not a file")
    if out_dir.exists() or out_dir.is_symlink():
        if out_dir.is_symlink() or not out_dir.is_dir() or any(out_dir.iterdir()):
            raise ArchiveError(f"output folder {out_dir} already exists and is not empty; remove it or choose another")
    if tarfile.is_tarfile(archive):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    raise ArchiveError(f"{archive} is not a tar (plain, gz, bz2, xz) or zip archive; check the download")


def _unpack(kind: str, archive: Path, tmp: Path, include: Callable[[str], bool] | None, max_members: int,
            limits: _Limits) -> list[str]:
    """Check every member, then write the chosen ones into ``tmp``; a corrupt archive is an ArchiveError."""
    try:
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                members = _tar_members(tf, archive, max_members)
                return _extract(members, tmp, archive, include, limits,
                                lambda m: tf.extractfile(cast(tarfile.TarInfo, m.handle)))
        with zipfile.ZipFile(archive) as zf:
            members = _zip_members(zf, archive, max_members)
            return _extract(members, tmp, archive, include, limits,
                            lambda m: zf.open(cast(zipfile.ZipInfo, m.handle)))
    except ArchiveError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error,
            lzma.LZMAError) as exc:
        raise ArchiveError(f"{archive} is corrupt or unsupported ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        if exc.filename is None:  # decompressor errors (zlib, lzma, bz2) surface as OSError without a file
            raise ArchiveError(f"{archive} is corrupt ({type(exc).__name__}: {exc})") from None
        raise


def _extract(members: list[_Member], tmp: Path, archive: Path, include: Callable[[str], bool] | None,
             limits: _Limits, opener: Callable[[_Member], IO[bytes] | None]) -> list[str]:
    """Refuse a bad layout or sizes over the limits, then write the chosen members: their names, in order."""
    max_member_bytes = limits.member
    budget, budget_name = limits.budget()
    _check_layout(members, archive)
    chosen = [m for m in members if m.name and (include is None or include(m.name))]
    total = 0
    for m in chosen:
        if m.is_dir:
            continue
        if m.size > max_member_bytes:
            raise ArchiveError(
                f"member {_show(m.name)} in {archive} is {m.size} bytes, over the per-member limit of "
                f"{max_member_bytes}; refused"
            )
        total += m.size
        if total > budget:
            raise ArchiveError(f"{archive} would extract more than {budget_name}; refused")
    written: list[str] = []
    total = 0
    for m in chosen:
        target = tmp.joinpath(*PurePosixPath(m.name).parts)
        # Belt and braces: nothing in the folder is a link, so the resolved path must stay inside.
        if not str(target.resolve()).startswith(str(tmp.resolve()) + os.sep):
            raise ArchiveError(f"unsafe member {_show(m.name)} in {archive}: resolves outside the output folder")
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = opener(m)
        if src is None:  # pragma: no cover - regular tar members always have data
            raise ArchiveError(f"member {_show(m.name)} in {archive} has no data")
        with src:
            limit = min(max_member_bytes, budget - total)
            what = f"the per-member limit of {max_member_bytes} bytes" if limit == max_member_bytes else budget_name
            total += _copy(src, target, limit, m.name, archive, what)
        written.append(m.name)
    return written
