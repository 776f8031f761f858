"""The bytes between the parent and the worker: the sweep payload (what the job needs besides its code), the
result object a job writes last, and the versions both sides must share. Plain pickles outside, so that the
header and the outcome read on any Python 3 even where the cloudpickled inside cannot."""

from __future__ import annotations

import enum
import io
import pickle
import platform
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hydra_plugins.hydra_awsbatch_launcher._errors import StagingError

FORMAT = 2  # 2: a payload carries bases and recipes (_compose.py), not a config per job


class Outcome(str, enum.Enum):
    """How a job ended, as its result object says (a string on disk and in S3)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # SIGTERM: Spot reclaim, timeout, a stop

    __str__ = str.__str__
    __format__ = str.__format__


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


class PayloadBody(NamedTuple):
    """What every job of a payload needs besides its code and its config: Hydra's context, the task, Hydra's
    global state."""

    hydra_context: Any
    task_function: Any
    singleton_state: dict


class Payload(NamedTuple):
    """A staged batch of jobs, as the worker reads it: each job unpickles the body and its own config's base."""

    header: dict  # versions, URIs, the sweep dir: plain
    body: bytes  # PayloadBody, cloudpickled
    bases: list  # the batch's base configs (_compose.py), each cloudpickled on its own
    recipes: list  # per job, in order: its _compose.Recipe as a plain tuple


def dump_payload(header: dict, body: PayloadBody, bases: list, recipes: list) -> tuple[bytes, set[str]]:
    """A plain pickle of the payload: the header (versions, URIs) loads on any Python 3 even when the cloudpickled
    body cannot. Also returns the modules that loading the body and the bases will import."""
    header = dict(header, versions=versions())
    data, modules = pickled(tuple(body))
    pickled_bases = []
    for base in bases:
        base_data, base_modules = pickled(base)
        pickled_bases.append(base_data)
        modules |= base_modules
    outer = {"format": FORMAT, "header": header, "body": data, "bases": pickled_bases,
             "recipes": [tuple(recipe) for recipe in recipes]}
    return pickle.dumps(outer, protocol=4), modules


def load_payload(data: bytes) -> Payload:
    """The payload, its body and bases still pickled."""
    try:
        outer = pickle.loads(data)
    except Exception as exc:
        raise StagingError(f"the sweep's payload is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise StagingError(f"payload format {outer.get('format') if isinstance(outer, dict) else '?'} is not "
                           f"{FORMAT}: the launcher and the worker come from different hydra-awsbatch-launcher "
                           "versions")
    return Payload(outer["header"], outer["body"], outer["bases"], outer["recipes"])


# ---------------------------------------------------------------------------------------------- results
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


def dump_result(status: Outcome, job_return: bytes | None, error: dict | None = None, **extra) -> bytes:
    """A job's result object: a plain dict of plain values, readable on any Python 3."""
    return pickle.dumps({"format": FORMAT, "status": Outcome(status).value, "job_return": job_return, "error": error,
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


def outcome_of(data: bytes) -> Outcome:
    """How the job of a result object ended, without unpickling its return value (FAILED when unreadable)."""
    try:
        return Outcome(pickle.loads(data)["status"])
    except Exception:
        return Outcome.FAILED


def load_result(data: bytes, script: Path | None = None) -> dict:
    """A job's result object. Unreadable bytes or an unpicklable return value still give a result: FAILED,
    with an error that says why."""
    try:
        result = pickle.loads(data)
        if not isinstance(result, dict) or result.get("format") != FORMAT:
            raise StagingError("not a result object of this launcher version")
        result["status"] = Outcome(result["status"])
    except Exception as exc:
        return {"format": FORMAT, "status": Outcome.FAILED, "job_return": None, "exit_code": None,
                "error": collect_error(exc, f"the job's result object is unreadable: {exc}")}
    if result.get("job_return") is not None:
        try:
            result["job_return"] = loads(result["job_return"], script)
        except Exception as exc:
            result["job_return"] = None
            result["status"] = Outcome.FAILED
            result["error"] = result.get("error") or collect_error(
                exc, f"the job's result could not be unpickled here: {exc}")
    return result


