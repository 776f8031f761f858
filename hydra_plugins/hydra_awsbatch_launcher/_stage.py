"""The wire format between the parent and the worker: where things live in staging, the code package, the
sweep payload, the result objects and the sweep manifest.

Staging layout, under `staging_uri` (an s3:// prefix or a local folder):

    code/<sha256>.tar.gz                      the code package, content-addressed
    sweeps/<sweep_id>/manifest.json           the sweep's record (a copy sits in the local sweep dir)
    sweeps/<sweep_id>/payload-<first>.pkl     one per launched batch of jobs, first = its first job number
    sweeps/<sweep_id>/<num>/result.pkl        a job's result object, written last
    sweeps/<sweep_id>/<num>/output/...        a job's output dir
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import pickle
import platform
import secrets
import sys
import tarfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage

FORMAT = 1
MANIFEST = "manifest.json"
# Never worth shipping: version control, caches, environments and the outputs of earlier runs.
ALWAYS_EXCLUDE = (
    ".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv*", "venv", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".ipynb_checkpoints", "*.egg-info", ".DS_Store", "multirun", "outputs",
)


class StagingError(Exception):
    """Something the user must change before the sweep can be staged."""


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Staging:
    """Every URI of a sweep in one place."""

    root: str
    sweep_id: str

    def code(self, sha256: str) -> str:
        return _storage.join(self.root, "code", f"{sha256}.tar.gz")

    @property
    def sweep(self) -> str:
        return _storage.join(self.root, "sweeps", self.sweep_id)

    @property
    def manifest(self) -> str:
        return _storage.join(self.sweep, MANIFEST)

    def payload(self, first_num: int) -> str:
        return _storage.join(self.sweep, f"payload-{first_num}.pkl")

    def result(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "result.pkl")

    def output(self, num: int) -> str:
        return _storage.join(self.sweep, str(num), "output")

    @classmethod
    def of_payload(cls, payload_uri: str) -> tuple[Staging, int]:
        """The staging and the first job number that a payload URI belongs to."""
        root, sep, rest = payload_uri.rpartition("/sweeps/")
        sweep_id, _, name = rest.partition("/")
        if not sep or not name.startswith("payload-") or not name.endswith(".pkl"):
            raise StagingError(f"not a payload URI: {payload_uri}")
        return cls(root, sweep_id), int(name[len("payload-"):-len(".pkl")])


def new_sweep_id() -> str:
    """Unique and sortable by time: 20261128-153012-4f9a1c."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def job_subdir(config) -> str:
    """The job's dir under hydra.sweep.dir, evaluated as run_job evaluates it (with the job's HydraConfig)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        return str(OmegaConf.select(config, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = saved


# ---------------------------------------------------------------------------------------- code package
@dataclass
class CodePackage:
    data: bytes
    sha256: str
    files: list[str]
    raw_bytes: int


def _gitignore_rules(directory: Path, base: str) -> list[tuple[str, str, bool, bool, bool]]:
    """(base, pattern, negated, dir_only, anchored) for each rule of `directory`/.gitignore."""
    path = directory / ".gitignore"
    if not path.is_file():
        return []
    rules = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line  # a slash anywhere but at the end ties the pattern to this folder
        rules.append((base, line.lstrip("/"), negated, dir_only, anchored))
    return rules


def _ignored(rel: str, is_dir: bool, rules) -> bool:
    """Git's rule: the last matching pattern decides."""
    import fnmatch

    ignored = False
    for base, pattern, negated, dir_only, anchored in rules:
        if dir_only and not is_dir:
            continue
        if base and not rel.startswith(base + "/"):
            continue
        local = rel[len(base) + 1:] if base else rel
        if fnmatch.fnmatch(local if anchored else local.rsplit("/", 1)[-1], pattern):
            ignored = not negated
    return ignored


def collect_files(root: Path, include=(), exclude=(), use_gitignore: bool = True) -> list[tuple[str, Path]]:
    """(relative path, path) of the files to ship, sorted. `exclude` and ALWAYS_EXCLUDE always apply;
    `.gitignore` files apply when `use_gitignore`, except to what an `include` pattern names."""
    root = Path(root)
    exclude = [*ALWAYS_EXCLUDE, *exclude]
    rules: list = []
    found = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        base = here.relative_to(root).as_posix()
        base = "" if base == "." else base
        if use_gitignore:
            rules = rules + _gitignore_rules(here, base)  # a new list: siblings don't see each other's rules

        def keep(name: str, is_dir: bool, base: str = base, rules: list = rules) -> bool:
            rel = f"{base}/{name}" if base else name
            if _storage.matches(rel, exclude):
                return False
            return not (use_gitignore and _ignored(rel, is_dir, rules) and not _storage.matches(rel, include))

        dirnames[:] = sorted(d for d in dirnames if keep(d, True))
        for name in sorted(filenames):
            path = here / name
            if keep(name, False) and path.is_file():
                found.append(((f"{base}/{name}" if base else name), path))
    return sorted(found)


def package_code(root: Path, include=(), exclude=(), use_gitignore: bool = True,
                 max_mib: float = 50.0) -> CodePackage:
    """A deterministic tar.gz of the files under `root`: the same tree always gives the same bytes."""
    files = collect_files(root, include, exclude, use_gitignore)
    sizes = [(path.stat().st_size, rel) for rel, path in files]
    raw = sum(size for size, _ in sizes)
    if raw > max_mib * _storage.MIB:
        largest = ", ".join(f"{rel} ({size / _storage.MIB:.1f} MiB)" for size, rel in sorted(sizes)[::-1][:5])
        raise StagingError(
            f"the code package of {root} would hold {raw / _storage.MIB:.1f} MiB, over the "
            f"{max_mib:g} MiB limit. Largest files: {largest}. Keep data out of it (put it in S3 and read "
            f"it from there), or set hydra.launcher.code_exclude, or raise hydra.launcher.code_max_mib."
        )
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel, path in files:
                info = tarfile.TarInfo(rel)
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    data = buffer.getvalue()
    return CodePackage(data, hashlib.sha256(data).hexdigest(), [rel for rel, _ in files], raw)


def unpack_code(data: bytes, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(target)


# --------------------------------------------------------------------------------------------- payload
def versions() -> dict:
    import cloudpickle
    import hydra

    return {"python": platform.python_version(), "hydra-core": hydra.__version__,
            "cloudpickle": cloudpickle.__version__}


def version_mismatch(made_with: dict) -> str | None:
    """Why this interpreter cannot load a payload made with `made_with`, or None when it can."""
    here = versions()
    problems = []
    if made_with["python"].split(".")[:2] != here["python"].split(".")[:2]:
        problems.append(f"Python {made_with['python']} made the sweep, the job runs Python {here['python']}")
    if made_with["hydra-core"] != here["hydra-core"]:
        problems.append(f"hydra-core {made_with['hydra-core']} made the sweep, the job has {here['hydra-core']}")
    if not problems:
        return None
    return ("version mismatch: " + "; ".join(problems)
            + ". Use the same versions in the image (Dockerfile's BASE_IMAGE, a pinned hydra-core) as where you "
            "launch.")


@dataclass(frozen=True)
class ScriptFunction:
    """A task function of the app's script, by file and name, so the job imports it from the code package
    and its tracebacks show real file names and source lines (cloudpickle's copies show neither)."""

    relpath: str
    qualname: str

    @classmethod
    def of(cls, function, code_root: Path) -> ScriptFunction | None:
        if getattr(function, "__module__", None) != "__main__" or "<locals>" in function.__qualname__:
            return None
        try:
            path = Path(sys.modules["__main__"].__file__).resolve()
            return cls(path.relative_to(code_root).as_posix(), function.__qualname__)
        except (AttributeError, KeyError, TypeError, ValueError):  # no script file, or not in the package
            return None

    def load(self, code_dir: Path):
        import importlib.util

        spec = importlib.util.spec_from_file_location("__hydra_awsbatch_main__", code_dir / self.relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)  # as an import: the script's `if __name__ == "__main__"` stays idle
        function = module
        for name in self.qualname.split("."):
            function = getattr(function, name)
        return getattr(function, "__wrapped__", function)  # @hydra.main's wrapper -> the task itself


def dump_payload(header: dict, objects: tuple) -> bytes:
    """A plain pickle of {header, body}: the header (versions, URIs) loads on any Python 3 even when the
    cloudpickled body (hydra context, task function, Singleton state, job configs) cannot."""
    import cloudpickle

    header = dict(header, versions=versions())
    return pickle.dumps({"format": FORMAT, "header": header, "body": cloudpickle.dumps(objects)}, protocol=4)


def load_payload(data: bytes) -> tuple[dict, bytes]:
    """The header and the still-pickled body."""
    outer = pickle.loads(data)
    if outer.get("format") != FORMAT:
        raise StagingError(f"payload format {outer.get('format')} is not {FORMAT}: the launcher and the "
                           "worker come from different hydra-awsbatch-launcher versions")
    return outer["header"], outer["body"]


# ---------------------------------------------------------------------------------------------- results
SUCCEEDED, FAILED, INTERRUPTED = "succeeded", "failed", "interrupted"


def error_info(exc: BaseException) -> dict:
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def dump_result(status: str, job_return=None, error: dict | None = None, **extra) -> bytes:
    """A job's result object: a plain dict whose `job_return` (Hydra's JobReturn) is cloudpickled apart,
    so that a value or exception the parent cannot unpickle still leaves the rest readable."""
    import cloudpickle

    pickled = None
    if job_return is not None:
        try:
            pickled = cloudpickle.dumps(job_return)
        except Exception as exc:  # an unpicklable return value or exception
            error = error or error_info(exc)
            error["message"] = f"{error['message']} (the job's result could not be pickled: {exc})"
            status = FAILED
    return pickle.dumps({"format": FORMAT, "status": status, "job_return": pickled, "error": error,
                         "host": platform.node(), **extra}, protocol=4)


def load_result(data: bytes) -> dict:
    result = pickle.loads(data)
    if result.get("job_return") is not None:
        import cloudpickle

        try:
            result["job_return"] = cloudpickle.loads(result["job_return"])
        except Exception as exc:
            result["job_return"] = None
            result["error"] = result.get("error") or {
                "type": type(exc).__name__, "message": f"the job's result could not be unpickled here: {exc}",
                "traceback": ""}
    return result


# --------------------------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """The one record of a sweep, from which it can be inspected, attached to or cancelled."""

    sweep_id: str
    staging_uri: str
    sweep_dir: str
    launcher: str
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    code_uri: str = ""
    settings: dict = field(default_factory=dict)  # launcher settings that `hydra-awsbatch` needs later
    batches: list = field(default_factory=list)  # {first, size, payload_uri, batch_job_ids, arrays}
    jobs: list = field(default_factory=list)  # {num, overrides, subdir, state, started, stopped, ...}
    _by_num: dict = field(default_factory=dict, repr=False, compare=False)  # jobs by number, not saved

    def job(self, num: int) -> dict:
        if len(self._by_num) != len(self.jobs):  # jobs are only ever appended
            self._by_num = {j["num"]: j for j in self.jobs}
        return self._by_num[num]

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in self.__dict__.items() if not k.startswith("_")}, indent=2,
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))

    def save(self) -> None:
        """Write it to staging and to the local sweep dir."""
        text = self.to_json()
        _storage.write_bytes(Staging(self.staging_uri, self.sweep_id).manifest, text.encode())
        _storage.write_bytes(str(Path(self.sweep_dir) / MANIFEST), text.encode())


class RemoteJobError(Exception):
    """A job failed where its own exception could not be brought back: its type, message and traceback."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback

    def __reduce__(self):
        return type(self), (str(self), self.remote_type, self.remote_traceback)
