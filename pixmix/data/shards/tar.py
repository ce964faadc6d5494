"""WebDataset tar shards: a deterministic writer, a verifier and a random-access reader.

Writer and reader are symmetric: a shard is a tar of ``<key>.<field>`` members, members of a sample
adjacent and in sorted field order, with fixed ownership, mode and mtime, so the same samples always
give the same bytes (and the same sha256). Shards are written to a temporary name and renamed when
complete; the index of a set of shards (its manifest) is written last, by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pixmix.data.remote import Location
from pixmix.utils.errors import PixmixError

log = logging.getLogger("pixmix.data.shards")

FIXED_MTIME = 0
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_FIELD = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Sample:
    """One sample: a key (letters, digits, ``_`` and ``-``; a dot would split it) and its fields."""

    key: str
    fields: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise PixmixError(f"sample key {self.key!r} must use only letters, digits, '_' and '-' (no dots)")
        if not self.fields:
            raise PixmixError(f"sample {self.key!r} has no fields")
        for name, value in self.fields.items():
            if not _FIELD.match(name):
                raise PixmixError(f"sample {self.key!r}: field name {name!r} must be lower-case letters/digits")
            if not isinstance(value, (bytes, bytearray)):
                raise PixmixError(f"sample {self.key!r}: field {name!r} must be bytes, got {type(value).__name__}")


@dataclass(frozen=True)
class ShardInfo:
    """What a manifest records of one shard."""

    name: str  # path relative to the set's folder
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_shard(path: Path, samples: Iterable[Sample], root: Path | None = None) -> ShardInfo:
    """Write ``samples`` to the tar ``path`` (via ``path.tmp``, renamed when complete)."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    seen: set[str] = set()
    with open(tmp, "wb") as fh:
        # encoder=False: fields are stored as given (TarWriter would re-encode images); fixed owner,
        # mode and mtime make the bytes a function of the samples alone.
        with wds.TarWriter(fh, user="", group="", mode=0o644, encoder=False, mtime=FIXED_MTIME) as writer:
            for sample in samples:
                if sample.key in seen:
                    raise PixmixError(f"{path}: duplicate sample key {sample.key!r}")
                seen.add(sample.key)
                writer.write({"__key__": sample.key, **dict(sample.fields)})
                count += 1
        fh.flush()
        os.fsync(fh.fileno())
    digest, size = file_sha256(tmp)
    tmp.replace(path)
    name = str(path.relative_to(root)) if root is not None else path.name
    return ShardInfo(name=name, samples=count, bytes=size, sha256=digest)


def file_sha256(path: Path) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


@dataclass(frozen=True)
class MemberRef:
    """Where one field of one sample lies inside a shard."""

    shard: Path | Location  # a local file, or a file of a remote set
    offset: int
    size: int


def _split_member(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    key, _, field = base.partition(".")
    return key, field


def iter_shard(path: Path | Location) -> Iterator[Sample]:
    """The samples of one shard (a local file or a remote one, streamed), in order. Raises PixmixError (one line,
    naming the shard) if broken."""
    if isinstance(path, Location) and path.is_local:
        path = path.path
    try:
        if isinstance(path, Location):
            with path.open() as fh:
                yield from iter_tar(fh)
        else:
            with open(path, "rb") as fh:
                yield from iter_tar(fh)
    except PixmixError as exc:
        raise PixmixError(f"{path}: {exc}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PixmixError(f"{path}: unreadable shard ({exc}); delete it and re-run the build to rewrite it") from exc


def iter_tar(fh: Any) -> Iterator[Sample]:
    """The samples of a tar stream read front to back (``fh`` needs only ``read``); a member that is not a
    regular file is an error (PixmixError); tar errors pass through."""
    with tarfile.open(fileobj=fh, mode="r|") as tar:
        key: str | None = None
        fields: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                raise PixmixError(f"member {member.name!r} is not a regular file")
            k, field = _split_member(member.name)
            if key is not None and k != key:
                yield Sample(key, fields)
                fields = {}
            key = k
            data = tar.extractfile(member)
            assert data is not None
            fields[field] = data.read()
            tar.members = []  # type: ignore[attr-defined]  # keep no headers: a shard may hold many
        if key is not None:
            yield Sample(key, fields)



class HashingReader:
    """A read-only stream that hashes and counts what passes through it: one pass over a shard both reads
    its tar and checks its sha256 and size (``mixset verify``, the scan of sets without a manifest)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.sha256, self.bytes = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> tuple[str, int]:
        """Read what the tar reader left (its end padding counts in the size and hash); ``(sha256, size)``."""
        while self.read(1 << 20):
            pass
        return self.sha256.hexdigest(), self.bytes

def member_kind(member: tarfile.TarInfo) -> str:
    """What a tar member that is not a regular file is, in words (for reports)."""
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    return "a folder" if member.isdir() else "not a regular file"


def index_shard(path: Path | Location, skipped: list[str] | None = None) -> list[tuple[str, dict[str, MemberRef]]]:
    """``(key, {field: MemberRef})`` per sample, from the tar headers alone (no data is read; a remote shard is
    read with forward seeks over the members' data).

    Members that are not regular files (symbolic or hard links, folders) are left out, each named in
    ``skipped`` (when given) and in a warning of the ``pixmix.data.shards`` logger.
    """
    out: list[tuple[str, dict[str, MemberRef]]] = []
    if isinstance(path, Location) and path.is_local:
        path = path.path
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(path, Location):
                tar = stack.enter_context(tarfile.open(fileobj=stack.enter_context(path.open()), mode="r:"))
            else:
                tar = stack.enter_context(tarfile.open(path, "r:"))
            for member in tar:
                if not member.isfile():
                    message = f"{path}: member {member.name!r} is {member_kind(member)}: skipped"
                    log.warning("%s", message)
                    if skipped is not None:
                        skipped.append(message)
                    continue
                key, field = _split_member(member.name)
                if not out or out[-1][0] != key:
                    out.append((key, {}))
                out[-1][1][field] = MemberRef(path, member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PixmixError(f"{path}: unreadable shard ({exc})") from exc
    return out


def read_member(ref: MemberRef) -> bytes:
    """The bytes of one member, read at its offset (a short read is a truncated shard); one ranged request for
    a remote shard."""
    if isinstance(ref.shard, Location):
        data = ref.shard.read_range(ref.offset, ref.size)
    else:
        with open(ref.shard, "rb") as fh:
            fh.seek(ref.offset)
            data = fh.read(ref.size)
    if len(data) != ref.size:
        raise PixmixError(f"{ref.shard}: truncated at byte {ref.offset + len(data)}")
    return data


def to_bytes(image: Any, fmt: str, quality: int = 90) -> bytes:
    """Encode a PIL image once, deterministically (no timestamps or text chunks)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=quality, method=4)
    else:
        raise PixmixError(f"image format must be png, jpg or webp, got {fmt!r}", param="fmt")
    return buf.getvalue()
