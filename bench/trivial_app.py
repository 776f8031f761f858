"""The trivial Hydra app the benchmarks sweep: what is measured is the launcher, not the work."""

SOURCE = '''
import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    return cfg.x * 2


if __name__ == "__main__":
    main()
'''
