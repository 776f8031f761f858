"""The errors a user may catch. They live in a `_` module because Hydra's plugin scan runs every public module
under hydra_plugins a second time, which would make their classes anew (an `except LaunchError` written before
the scan would then miss the one raised after it). The package re-exports them:
`from hydra_plugins.hydra_awsbatch_launcher import LaunchError`."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class LaunchError(CompactHydraException):
    """Settings to fix before anything is staged or submitted: one line per problem. Hydra prints its message
    alone, without a traceback (a CompactHydraException, as Hydra's own errors in the config are)."""

    def __init__(self, problems: list[str]):
        super().__init__("cannot launch the sweep:\n  - " + "\n  - ".join(problems))
        self.problems = problems

    def __reduce__(self):
        return type(self), (self.problems,)


class StagingError(Exception):
    """Something the user must change before the sweep can be staged, or staging that cannot be read."""


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
