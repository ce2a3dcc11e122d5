"""Accepting files: size limits, names sanitised, type from content, ZIP archives expanded with
bomb and nesting guards. Every refusal says which file and why."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings

from kb.parsing import (
    CHUNK_BYTES,
    MAX_COMPRESSION_RATIO,
    SAFE_COMPRESSION,
    BoundedReader,
    UnsupportedFile,
    compression_name,
    detect_type,
)

MAX_ARCHIVE_MEMBERS = 1000


@dataclass
class IncomingFile:
    """A file on local disk, checked and typed, ready to become a Document."""

    name: str
    path: Path
    sha256: str
    size_bytes: int
    kind: str
    # The file's name in storage when `name` cannot be one (a web page's URL); empty: `name`.
    stored_as: str = ""


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


def sanitize_name(name: str) -> str:
    """The last path component only, no control characters, no leading dots, at most 200 chars."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    name = PurePosixPath(name).name
    name = re.sub(r"[\x00-\x1f\x7f<>:\"|?*]", "_", name).strip().lstrip(".")
    if not name:
        return "unnamed"
    stem, dot, suffix = name.rpartition(".")
    if dot and len(suffix) <= 10:
        return f"{stem[: 200 - len(suffix) - 1]}.{suffix}"
    return name[:200]


def save_stream(stream: IO[bytes] | BoundedReader, directory: Path, name: str, limit: int) -> tuple[Path, str, int]:
    """Copy to disk while hashing and counting; UnsupportedFile once past the limit."""
    target = Path(tempfile.mkstemp(dir=directory, suffix=".upload")[1])
    digest = hashlib.sha256()
    size = 0
    with open(target, "wb") as out:
        while block := stream.read(CHUNK_BYTES):
            size += len(block)
            if size > limit:
                raise UnsupportedFile(f"{name} is larger than the limit of {limit // (1024 * 1024)} MB")
            digest.update(block)
            out.write(block)
    return target, digest.hexdigest(), size


def receive(stream: IO[bytes], name: str, workdir: Path) -> tuple[list[IncomingFile], list[Rejection]]:
    """One uploaded file: itself, or the members of a ZIP archive."""
    name = sanitize_name(name)
    limit = settings.KB_MAX_UPLOAD_BYTES
    try:
        path, sha256, size = save_stream(stream, workdir, name, limit)
        kind = detect_type(path, name)
    except UnsupportedFile as exc:
        return [], [Rejection(name, str(exc))]
    if kind != "zip":
        return [IncomingFile(name, path, sha256, size, kind)], []
    return expand_archive(path, name, workdir)


def expand_archive(path: Path, archive_name: str, workdir: Path) -> tuple[list[IncomingFile], list[Rejection]]:
    accepted: list[IncomingFile] = []
    rejected: list[Rejection] = []
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        return [], [Rejection(archive_name, f"a corrupt ZIP archive: {exc}")]
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > MAX_ARCHIVE_MEMBERS:
            return [], [Rejection(archive_name, f"more than {MAX_ARCHIVE_MEMBERS} files in one archive: split it")]
        budget = settings.KB_MAX_ARCHIVE_BYTES
        declared = sum(info.file_size for info in members)
        if declared > budget:
            return [], [Rejection(archive_name, f"expands to more than {budget // (1024 * 1024)} MB: split it")]
        for info in members:
            member_name = sanitize_name(info.filename)
            label = f"{archive_name}/{info.filename}"
            if info.flag_bits & 0x1:
                rejected.append(Rejection(label, "encrypted inside the archive: add it without a password"))
                continue
            if info.compress_type not in SAFE_COMPRESSION:
                method = compression_name(info)
                rejected.append(Rejection(label, f"compressed with {method}: add it with deflate, zip's default"))
                continue
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                rejected.append(Rejection(label, "compressed more than 100:1, as zip bombs are: refused"))
                continue
            try:
                with archive.open(info) as member:
                    member_path, sha256, size = save_stream(
                        BoundedReader(member, info.file_size), workdir, member_name, settings.KB_MAX_UPLOAD_BYTES
                    )
                kind = detect_type(member_path, member_name)
            except (UnsupportedFile, zipfile.BadZipFile, OSError) as exc:
                rejected.append(Rejection(label, str(exc)))
                continue
            if kind == "zip":
                rejected.append(Rejection(label, "an archive inside an archive: upload it on its own"))
                continue
            accepted.append(IncomingFile(member_name, member_path, sha256, size, kind))
    return accepted, rejected


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder on the media volume (so moving a file into storage is a rename)."""
    parent = Path(settings.MEDIA_ROOT) / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="upload-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
