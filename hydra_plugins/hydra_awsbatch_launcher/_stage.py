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

import dataclasses
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
from typing import Any, NamedTuple

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


def _gitignore_spec(directory: Path):
    """The rules of `directory`/.gitignore, read as git reads them (pathspec's GitIgnoreSpec), or None."""
    path = directory / ".gitignore"
    if not path.is_file():
        return None
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(path.read_text(errors="replace").splitlines())


def _ignored(rel: str, is_dir: bool, specs: list) -> bool:
    """Git's rule: a deeper .gitignore overrides a shallower one, and within one file the last match decides."""
    ignored = False
    for base, spec in specs:
        local = rel[len(base) + 1:] if base else rel
        decided = spec.check_file(local + "/" if is_dir else local).include
        if decided is not None:
            ignored = decided
    return ignored


def is_sweep_dir(path: Path) -> bool:
    """The folder of an earlier sweep (Hydra's multirun.yaml, or our manifest) or a staging folder (code
    packages and sweeps): never shipped, whatever it is called."""
    return ((path / "multirun.yaml").is_file() or (path / MANIFEST).is_file()
            or ((path / "sweeps").is_dir() and any((path / "code").glob("*.tar.gz"))))


def collect_files(root: Path, include=(), exclude=(), use_gitignore: bool = True) -> list[tuple[str, Path]]:
    """(relative path, path) of the files to ship, sorted. `exclude`, ALWAYS_EXCLUDE and the folders of earlier
    sweeps always apply; `.gitignore` files apply when `use_gitignore`, except to what an `include` names."""
    root = Path(root)
    exclude = [*ALWAYS_EXCLUDE, *exclude]
    found = []
    specs_of: dict[str, list] = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        base = here.relative_to(root).as_posix()
        base = "" if base == "." else base
        specs = list(specs_of[base.rpartition("/")[0]]) if base else []  # os.walk: the parent came first
        spec = _gitignore_spec(here) if use_gitignore else None
        if spec is not None:
            specs.append((base, spec))
        specs_of[base] = specs

        def keep(name: str, is_dir: bool, base: str = base, specs: list = specs, here: Path = here) -> bool:
            rel = f"{base}/{name}" if base else name
            if _storage.matches(rel, exclude) or (is_dir and is_sweep_dir(here / name)):
                return False
            return not (use_gitignore and _ignored(rel, is_dir, specs) and not _storage.matches(rel, include))

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


SCRIPT_MODULE = "__hydra_awsbatch_main__"  # the app's script, imported by file in the job
OWN_PACKAGE = "hydra_plugins.hydra_awsbatch_launcher"  # the only Hydra plugin the job image must have


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
            return cls(script_relpath(code_root), function.__qualname__)
        except (AttributeError, KeyError, TypeError, ValueError):  # no script file, or not in the package
            return None

    def load(self, code_dir: Path):
        function = import_script(code_dir / self.relpath)
        for name in self.qualname.split("."):
            function = getattr(function, name)
        return getattr(function, "__wrapped__", function)  # @hydra.main's wrapper -> the task itself


def script_relpath(code_root: Path) -> str:
    """The running script's path relative to code_root; ValueError when it lies outside."""
    return Path(sys.modules["__main__"].__file__).resolve().relative_to(code_root).as_posix()


def import_script(path: Path):
    """The app's script imported by file as SCRIPT_MODULE (its `if __name__ == "__main__"` stays idle)."""
    import importlib.util

    if SCRIPT_MODULE in sys.modules:
        return sys.modules[SCRIPT_MODULE]
    spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def is_foreign_plugin(module: str) -> bool:
    """A Hydra plugin module other than this launcher: installed where the sweep is launched, perhaps not in
    the image, and never needed by a job (sweepers, other launchers, their configs)."""
    return module.startswith("hydra_plugins.") and not module.startswith(OWN_PACKAGE)


def pickled(obj) -> tuple[bytes, set[str]]:
    """cloudpickle's bytes of `obj`, and the modules of every class and function they name."""
    import types

    import cloudpickle

    modules: set[str] = set()

    class Recording(cloudpickle.CloudPickler):
        def reducer_override(self, obj):
            if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
                modules.add(getattr(obj, "__module__", None) or "")
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Recording(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
    return buffer.getvalue(), modules


_FOREIGN_ENTRIES: dict[tuple, bool] = {}  # ConfigStore path -> whether its entry names another plugin


def without_foreign_plugins(singleton_state: dict, configs: list) -> None:
    """Drop from what goes to the job every trace of other Hydra plugins (in place): their ConfigStore
    entries, and the object types of their nodes under `hydra` in each config (made plain containers)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf, open_dict, read_write

    store = singleton_state["instances"].get(ConfigStore)
    if store is not None:
        def prune(tree: dict, path: tuple) -> None:
            for name, entry in list(tree.items()):
                if isinstance(entry, dict):
                    prune(entry, (*path, name))
                    continue
                key = (*path, name, getattr(entry, "provider", None))
                if key not in _FOREIGN_ENTRIES:  # the store's entries stay put: decided once per process
                    _FOREIGN_ENTRIES[key] = any(is_foreign_plugin(m) for m in pickled(entry)[1])
                if _FOREIGN_ENTRIES[key]:
                    del tree[name]
        prune(store.repo, ())
    def foreign(node) -> bool:
        parent = node._get_parent()
        node._set_parent(None)  # the node alone, not the tree it hangs in
        try:
            return any(is_foreign_plugin(m) for m in pickled(node)[1])
        finally:
            node._set_parent(parent)

    decided: dict[tuple, bool] = {}  # configs with the same choices of Hydra's groups share their node types
    for config in configs:
        hydra_node = config.hydra
        choices = repr(OmegaConf.to_container(hydra_node.runtime.choices)) if "runtime" in hydra_node else ""
        for key in list(hydra_node.keys()):
            node = hydra_node._get_node(key)
            if not OmegaConf.is_config(node):
                continue
            if (key, choices) not in decided:
                decided[key, choices] = foreign(node)
            if decided[key, choices]:
                plain = OmegaConf.to_container(node, resolve=False, enum_to_str=True)
                with read_write(hydra_node), open_dict(hydra_node):
                    hydra_node[key] = plain


class PayloadBody(NamedTuple):
    """What the job needs besides its code: Hydra's context, the task, Hydra's global state, the configs."""

    hydra_context: Any
    task_function: Any
    singleton_state: dict
    configs: list


def dump_payload(header: dict, body: PayloadBody) -> tuple[bytes, set[str]]:
    """A plain pickle of {header, body}: the header (versions, URIs) loads on any Python 3 even when the
    cloudpickled body cannot. Also returns the modules that loading the body will import."""
    header = dict(header, versions=versions())
    data, modules = pickled(tuple(body))
    return pickle.dumps({"format": FORMAT, "header": header, "body": data}, protocol=4), modules


def load_payload(data: bytes) -> tuple[dict, bytes]:
    """The header and the still-pickled body."""
    try:
        outer = pickle.loads(data)
    except Exception as exc:
        raise StagingError(f"the sweep's payload is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise StagingError(f"payload format {outer.get('format') if isinstance(outer, dict) else '?'} is not "
                           f"{FORMAT}: the launcher and the worker come from different hydra-awsbatch-launcher "
                           "versions")
    return outer["header"], outer["body"]


# ---------------------------------------------------------------------------------------------- results
SUCCEEDED, FAILED, INTERRUPTED = "succeeded", "failed", "interrupted"


def error_info(exc: BaseException) -> dict:
    return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def collect_error(exc: BaseException, message: str) -> dict:
    """The error of a job whose result could not be brought home (here, not in the job: no remote traceback)."""
    return {"type": type(exc).__name__, "message": message, "traceback": ""}


def pickle_job_return(job_return) -> tuple[bytes | None, dict | None]:
    """Hydra's JobReturn, cloudpickled apart from the result object (so that a value the parent cannot
    unpickle leaves the rest readable); or None and the error when the value or exception cannot pickle."""
    import cloudpickle

    if job_return is None:
        return None, None
    try:
        return cloudpickle.dumps(job_return), None
    except Exception as exc:
        error = error_info(exc)
        error["message"] = f"the task's result could not be pickled to bring it back: {exc}"
        return None, error


def dump_result(status: str, job_return: bytes | None, error: dict | None = None, **extra) -> bytes:
    """A job's result object: a plain dict, readable on any Python 3."""
    return pickle.dumps({"format": FORMAT, "status": status, "job_return": job_return, "error": error,
                         "host": platform.node(), **extra}, protocol=4)


class _Unpickler(pickle.Unpickler):
    """Classes of the app's script (SCRIPT_MODULE in the job) come back as the launching script's own
    (`__main__` there), or from the script imported by file when this process is not the script."""

    def __init__(self, data: bytes, script: Path | None):
        super().__init__(io.BytesIO(data))
        self.script = script

    def find_class(self, module: str, name: str):
        if module == SCRIPT_MODULE:
            main = sys.modules.get("__main__")
            if hasattr(main, name.split(".")[0]):
                module = "__main__"
            elif self.script is not None and self.script.is_file():
                import_script(self.script)
        return super().find_class(module, name)


def loads(data: bytes, script: Path | None = None):
    """Unpickle what a job wrote; `script`: the app's script file, imported when the pickle needs it."""
    return _Unpickler(data, script).load()


def load_result(data: bytes, script: Path | None = None) -> dict:
    """A job's result object. Unreadable bytes or an unpicklable return value still give a result: FAILED,
    with an error that says why."""
    try:
        result = pickle.loads(data)
        if not isinstance(result, dict) or result.get("format") != FORMAT:
            raise StagingError("not a result object of this launcher version")
    except Exception as exc:
        return {"format": FORMAT, "status": FAILED, "job_return": None, "exit_code": None,
                "error": collect_error(exc, f"the job's result object is unreadable: {exc}")}
    if result.get("job_return") is not None:
        try:
            result["job_return"] = loads(result["job_return"], script)
        except Exception as exc:
            result["job_return"] = None
            result["status"] = FAILED
            result["error"] = result.get("error") or collect_error(
                exc, f"the job's result could not be unpickled here: {exc}")
    return result


# --------------------------------------------------------------------------------------------- manifest
@dataclass
class JobRecord:
    """One job of a sweep as the manifest keeps it."""

    num: int
    overrides: list
    subdir: str
    state: str  # in Batch's words (_sweep's vocabulary)
    job_id: str = ""  # Batch's job id (PARENT:INDEX for an array child), or the local process's
    exit_code: int | None = None
    reason: str = ""
    submitted: float | None = None  # epoch seconds
    started: float | None = None
    stopped: float | None = None
    result: str = ""  # the return value's repr, or "ErrorType: message"


@dataclass
class Array:
    """One SubmitJob: `size` jobs (a plain job when size is 1) for job numbers first..first+size-1."""

    job_id: str
    first: int
    size: int


@dataclass
class BatchRecord:
    """One payload and the jobs it serves: what one launch (or launch_async) call staged."""

    first: int
    size: int
    payload_uri: str
    batch_job_ids: list = field(default_factory=list)
    arrays: list = field(default_factory=list)  # Array, on Batch


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


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
    batches: list = field(default_factory=list)  # BatchRecord
    jobs: list = field(default_factory=list)  # JobRecord
    _by_num: dict = field(default_factory=dict, repr=False, compare=False)  # jobs by number, not saved

    def job(self, num: int) -> JobRecord:
        if len(self._by_num) != len(self.jobs):  # jobs are only ever appended
            self._by_num = {j.num: j for j in self.jobs}
        return self._by_num[num]

    def to_json(self) -> str:
        data = {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data = _known(cls, data)
        data["jobs"] = [JobRecord(**_known(JobRecord, j)) for j in data.get("jobs", [])]
        data["batches"] = [BatchRecord(**dict(_known(BatchRecord, b), arrays=[Array(**a) for a in b.get("arrays", [])]))
                           for b in data.get("batches", [])]
        return cls(**data)

    def save(self) -> None:
        """Write it to staging and to the local sweep dir."""
        text = self.to_json()
        _storage.write_bytes(Staging(self.staging_uri, self.sweep_id).manifest, text.encode())
        _storage.write_bytes(str(Path(self.sweep_dir) / MANIFEST), text.encode())


class MissingModule(ModuleNotFoundError):
    """The payload or the task needs a module that the job's environment lacks; says where to put it."""

    @classmethod
    def of(cls, exc: ModuleNotFoundError) -> MissingModule:
        missing = cls(f"the job needs the module '{exc.name}', which is not installed where it runs: install it in "
                      "the job image (the Dockerfile), or ship it in the code package (hydra.launcher.code_root / "
                      "code_include)", name=exc.name)
        missing.__cause__ = exc
        return missing

    def __reduce__(self):
        return type(self), (str(self),), {"name": self.name}


class RemoteJobError(Exception):
    """A job failed where its own exception could not be brought back: its type, message and traceback."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback

    def __reduce__(self):
        return type(self), (str(self), self.remote_type, self.remote_traceback)
