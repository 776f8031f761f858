"""Reading and writing whole files at a local path or an s3:// URI, through fsspec."""

from __future__ import annotations

import os
import uuid

import fsspec


def _fs(uri: str):
    fs, path = fsspec.core.url_to_fs(os.path.expanduser(uri))
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it.

    An object store's PUT is atomic already; on a local disk we write a temporary file and rename it.
    """
    fs, path = _fs(uri)
    if not is_local(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_names(uri: str) -> list[str]:
    """Names of the files directly under the folder or prefix `uri` (empty when it does not exist)."""
    fs, path = _fs(uri)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(uri: str) -> None:
    fs, path = _fs(uri)
    fs.rm(path)


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name
