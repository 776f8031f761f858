"""The code package: which files of code_root ship (git's ignore rules, include and exclude patterns, never
earlier sweeps), as a deterministic tar.gz named by its content hash; and unpacking it in the job."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher import _storage
from hydra_plugins.hydra_awsbatch_launcher._errors import StagingError
from hydra_plugins.hydra_awsbatch_launcher._manifest import MANIFEST

# Never worth shipping: version control, caches, environments and the outputs of earlier runs.
ALWAYS_EXCLUDE = (
    ".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv*", "venv", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".ipynb_checkpoints", "*.egg-info", ".DS_Store", "multirun", "outputs",
)


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
