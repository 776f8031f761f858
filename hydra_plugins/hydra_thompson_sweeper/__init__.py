"""hydra/sweeper=thompson. Its error is re-exported here from a module that Hydra's plugin scan leaves alone, so
that it stays one class: `from hydra_plugins.hydra_thompson_sweeper import SweepError`."""

from hydra_plugins.hydra_thompson_sweeper._space import SweepError

__all__ = ["SweepError", "__version__"]
__version__ = "0.1.0"
