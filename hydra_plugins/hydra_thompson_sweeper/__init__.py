"""hydra/sweeper=thompson, and its mind on its own: `Study` (ask / report / tell, without Hydra). The sweeper's
error is re-exported here from a module that Hydra's plugin scan leaves alone, so that it stays one class:
`from hydra_plugins.hydra_thompson_sweeper import Study, SweepError`."""

from hydra_plugins.hydra_thompson_sweeper._space import SweepError
from hydra_plugins.hydra_thompson_sweeper.study import Study

__all__ = ["Study", "SweepError", "__version__"]
__version__ = "0.1.0"
