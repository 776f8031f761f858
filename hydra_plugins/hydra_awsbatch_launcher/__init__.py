"""hydra-awsbatch-launcher: `hydra/launcher=aws_batch` and `aws_batch_local`. What a task may call (`report`) and
the errors a user may catch are re-exported here from modules that Hydra's plugin scan leaves alone, so that
they stay one object each."""

from hydra_plugins.hydra_awsbatch_launcher._errors import LaunchError, MissingModule, RemoteJobError, StagingError
from hydra_plugins.hydra_awsbatch_launcher._metrics import report

__version__ = "0.1.0"
__all__ = ["LaunchError", "MissingModule", "RemoteJobError", "StagingError", "__version__", "report"]
