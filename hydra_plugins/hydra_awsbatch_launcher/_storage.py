"""Every file the launcher reads or writes, at an s3:// URI or in a local folder, through one interface.

S3 goes through boto3's managed transfer (multipart for large files, retries with backoff); local folders
(plain paths or file:// URIs) through the file system, with atomic writes. boto3 honours AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

MIB = 1024 * 1024


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def local_path(uri: str) -> Path:
    """The path of a local folder or file given as a plain path or a file:// URI."""
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _s3():
    return _s3_for(os.environ.get("AWS_ENDPOINT_URL"))


@functools.cache
def _s3_for(endpoint: str | None):
    """One client per endpoint: the same process may talk to AWS and to a local cloud."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"mode": "adaptive", "max_attempts": 10}))


# A process forked from one that used a client (a warm worker's trial) makes its own: a connection is not shared.
os.register_at_fork(after_in_child=_s3_for.cache_clear)


@functools.cache
def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * MIB, multipart_chunksize=16 * MIB, max_concurrency=8)


def _is_missing(error) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return local_path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = _bucket_key(uri)
    try:
        _s3().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if _is_missing(error):
            return False
        raise


def check_writable(uri: str, write: bool = True) -> str | None:
    """Why nothing can be written under `uri` (an s3:// prefix or a local folder), or None when a probe object
    could be written and deleted. `write=False` (a dry run) only checks that the bucket or folder is there."""
    if not is_s3(uri):
        path = local_path(uri)
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            return f"{existing} is not a folder: choose a folder for staging"
        try:  # a real probe: permissions, read-only mounts and special file systems all answer the same way
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            return f"{existing} is not writable ({error.strerror}): choose a writable folder, or fix its permissions"
        return None
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, key = _bucket_key(uri)
    probe = (key.rstrip("/") + f"/.write-probe-{uuid.uuid4().hex}").lstrip("/")
    try:
        if write:
            _s3().put_object(Bucket=bucket, Key=probe, Body=b"")
            _s3().delete_object(Bucket=bucket, Key=probe)
        else:  # what the launching user's policy allows (s3:ListBucket on the prefix), writing nothing
            _s3().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    except NoCredentialsError:
        return ("no AWS credentials found to reach S3: run `aws configure` or `aws sso login`, or export "
                "AWS_PROFILE")
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404", "NotFound"):
            return f"bucket '{bucket}' does not exist: create it, deploy the stack, or fix the URI"
        verb, action = ("write to", "s3:PutObject") if write else ("list", "s3:ListBucket")
        return f"cannot {verb} bucket '{bucket}' ({code}): grant {action} there or fix the URI"
    except BotoCoreError as error:
        return f"S3 cannot be reached ({error}): check the network, the region and AWS_ENDPOINT_URL"
    return None


def read_bytes(uri: str) -> bytes:
    """The object's bytes; FileNotFoundError naming the URI when there is none."""
    if not is_s3(uri):
        return local_path(uri).read_bytes()
    from botocore.exceptions import ClientError

    bucket, key = _bucket_key(uri)
    try:
        return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if _is_missing(error):
            raise FileNotFoundError(f"no object at {uri}") from None
        raise


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        _s3().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers see the old object or the whole new one


def upload_file(path: Path, uri: str) -> None:
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        _s3().upload_file(str(path), bucket, key, Config=_transfer_config())
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != Path(path).resolve():
        shutil.copyfile(path, target)


def download_file(uri: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        _s3().download_file(bucket, key, str(path), Config=_transfer_config())
    elif local_path(uri).resolve() != path.resolve():
        shutil.copyfile(local_path(uri), path)


def list_files(uri: str) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every file under the folder or prefix `uri`, sorted."""
    if not is_s3(uri):
        root = local_path(uri)
        if not root.is_dir():
            return []
        return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file())
    bucket, key = _bucket_key(uri)
    prefix = key.rstrip("/") + "/"
    found = []
    for page in _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [(o["Key"][len(prefix):], o["Size"]) for o in page.get("Contents", [])]
    return sorted(found)


def matches(relpath: str, patterns: Iterable[str]) -> bool:
    """A path matches a glob when the whole relative path or its file name does."""
    name = relpath.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relpath, p) or fnmatch.fnmatch(name, p) for p in patterns)


def upload_dir(local_dir: Path, uri: str) -> int:
    """Upload every file under `local_dir`; return how many."""
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    for path in files:
        upload_file(path, join(uri, path.relative_to(local_dir).as_posix()))
    return len(files)


def download_dir(uri: str, local_dir: Path, exclude: Iterable[str] = ()) -> list[str]:
    """Download every file under `uri` into `local_dir` but those an `exclude` pattern matches;
    return the relative paths of the files left out."""
    exclude = list(exclude)
    left_out = []
    for rel, _ in list_files(uri):
        if matches(rel, exclude):
            left_out.append(rel)
        else:
            download_file(join(uri, rel), Path(local_dir) / rel)
    return left_out
