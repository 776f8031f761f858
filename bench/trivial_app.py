"""The trivial Hydra app the benchmarks sweep: what is measured is the launcher, not the work."""

SOURCE = '''
import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    return cfg.x * 2


if __name__ == "__main__":
    main()
'''

# The same app as a training script starts: torch imported at module level (what warm workers keep warm)
TORCH_SOURCE = "import torch  # noqa: F401\n" + SOURCE
