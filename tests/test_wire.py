"""Unit tests of the wire format: code package, payload and result objects, URIs, the worker's index."""

from __future__ import annotations

import os
import pickle

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _errors, _manifest, _package, _storage, _wire
from hydra_plugins.hydra_awsbatch_launcher.worker import array_index

pytestmark = pytest.mark.unit


def make_tree(root, files: dict) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    make_tree(root, {
        "train.py": "print('hi')\n",
        "conf/config.yaml": "lr: 0.1\n",
        "lib/model.py": "X = 1\n",
        ".gitignore": "data/\n*.log\n/secret.txt\n!keep.log\n",
        "data/big.npz": "x" * 100,
        "run.log": "log\n",
        "keep.log": "kept\n",
        "secret.txt": "s\n",
        "lib/secret.txt": "not anchored, so shipped\n",
        "lib/.gitignore": "generated_*\n",
        "lib/generated_1.py": "\n",
        "__pycache__/train.cpython-311.pyc": "",
        ".git/HEAD": "ref\n",
        "multirun/2026-01-01/0/x.txt": "old output\n",
    })
    return root


def test_package_ships_the_code_and_honours_gitignore(project):
    package = _package.package_code(project)
    assert package.files == [".gitignore", "conf/config.yaml", "keep.log", "lib/.gitignore", "lib/model.py",
                             "lib/secret.txt", "train.py"]


def test_code_include_brings_back_an_ignored_file_and_code_exclude_drops_one(project):
    package = _package.package_code(project, include=["data/big.npz", "data"], exclude=["conf/*"])
    assert "data/big.npz" in package.files
    assert "conf/config.yaml" not in package.files
    assert "run.log" not in package.files


def test_use_gitignore_false_ships_ignored_files_but_never_caches(project):
    files = _package.package_code(project, use_gitignore=False).files
    assert {"data/big.npz", "run.log", "lib/generated_1.py"} <= set(files)
    assert not any(f.startswith((".git/", "__pycache__/", "multirun/")) for f in files)


def test_same_tree_same_bytes_whatever_the_mtimes(project):
    first = _package.package_code(project)
    os.utime(project / "train.py", (1, 1))
    second = _package.package_code(project)
    assert (first.sha256, first.data) == (second.sha256, second.data)
    (project / "train.py").write_text("print('changed')\n")
    assert _package.package_code(project).sha256 != first.sha256


def test_unpack_gives_back_the_tree(project, tmp_path):
    _package.unpack_code(_package.package_code(project).data, tmp_path / "out")
    assert (tmp_path / "out/lib/model.py").read_text() == "X = 1\n"
    assert not (tmp_path / "out/data").exists()


def test_size_limit_names_the_largest_file(project):
    (project / "weights.bin").write_bytes(b"\0" * 3 * 1024 * 1024)
    with pytest.raises(_errors.StagingError) as error:
        _package.package_code(project, max_mib=2)
    message = str(error.value)
    assert "weights.bin (3.0 MiB)" in message and "2 MiB limit" in message
    assert "hydra.launcher.code_exclude" in message


def test_staging_uris_and_their_inverse():
    staging = _manifest.Staging("s3://bucket/prefix", "20261128-101010-abcdef")
    assert staging.payload(6) == "s3://bucket/prefix/sweeps/20261128-101010-abcdef/payload-6.pkl"
    assert staging.result(7) == "s3://bucket/prefix/sweeps/20261128-101010-abcdef/7/result.pkl"
    assert staging.code("ab") == "s3://bucket/prefix/code/ab.tar.gz"
    assert _manifest.Staging.of_payload(staging.payload(6)) == (staging, 6)
    with pytest.raises(_errors.StagingError):
        _manifest.Staging.of_payload("s3://bucket/prefix/other.pkl")


def test_sweep_ids_start_with_a_fixed_width_time_and_differ():
    import datetime

    ids = [_manifest.new_sweep_id() for _ in range(20)]
    assert len(set(ids)) == 20
    made = datetime.datetime.strptime(ids[0][:15], "%Y%m%d-%H%M%S")  # fixed width: sorts as time does
    assert abs((datetime.datetime.now() - made).total_seconds()) < 5


def test_payload_header_loads_without_the_body_and_each_base_apart():
    recipes = [(0, 5, ("x=1",), ("x=1",)), (1, 6, (), ("model=cnn",))]
    data, _ = _wire.dump_payload({"code_uri": "x"}, _wire.PayloadBody("context", "task", {}), ["base 0", "base 1"],
                                 recipes)
    payload = _wire.load_payload(data)
    assert payload.header["code_uri"] == "x" and payload.header["versions"] == _wire.versions()
    assert isinstance(payload.body, bytes) and payload.recipes == recipes
    assert [_wire.loads(base) for base in payload.bases] == ["base 0", "base 1"]  # each unpickled on its own


def test_version_mismatch_names_both_versions():
    here = _wire.versions()
    assert _wire.version_mismatch(here) is None
    other = dict(here, python="3.8.10")
    message = _wire.version_mismatch(other)
    assert "Python 3.8.10" in message and f"Python {here['python']}" in message
    assert "hydra-core" in _wire.version_mismatch(dict(here, **{"hydra-core": "1.1.0"}))


def test_result_keeps_an_error_when_the_value_cannot_be_pickled():
    import threading

    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=threading.Lock())
    pickled, error = _wire.pickle_job_return(ret)
    assert pickled is None and "could not be pickled" in error["message"] and "lock" in error["message"]


def test_remote_job_error_survives_pickling():
    error = _errors.RemoteJobError("job #1 failed", "mod.Err", "Traceback ...")
    back = pickle.loads(pickle.dumps(error))
    assert (str(back), back.remote_type, back.remote_traceback) == ("job #1 failed", "mod.Err", "Traceback ...")


@pytest.mark.parametrize("env, index", [
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "7", "AWS_BATCH_JOB_ID": "abc:3"}, 7),
    ({"AWS_BATCH_JOB_ID": "a1b2-c3:12"}, 12),
    ({"AWS_BATCH_JOB_ID": "a1b2-c3"}, 0),
    ({}, 0),
])
def test_array_index(env, index):
    assert array_index(env) == index


def test_local_storage_round_trip(tmp_path):
    uri = str(tmp_path / "a/b.bin")
    assert not _storage.exists(uri)
    _storage.write_bytes(uri, b"123")
    assert _storage.read_bytes(uri) == b"123" and _storage.exists(uri)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        _storage.read_bytes(str(tmp_path / "missing"))
