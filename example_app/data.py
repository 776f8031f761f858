"""The digits data set: write it to a URI once, read it back, split it.

    python -m example_app.data s3://my-bucket/data/digits.npz
"""

from __future__ import annotations

import argparse
import io
import logging

import numpy as np

from example_app import storage

log = logging.getLogger(__name__)


def make_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (no download): 1,797 images of 8x8 pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def write_dataset(uri: str) -> None:
    x, y = make_digits()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    storage.write_bytes(uri, buffer.getvalue())


def load_dataset(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the data set from `uri`; a local path that does not exist yet is prepared first."""
    if storage.is_local(uri) and not storage.exists(uri):
        log.info("Preparing the digits data set at %s", uri)
        write_dataset(uri)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"data.uri={uri}: no data set there. Write it once with: "
                                f"python -m example_app.data {uri}") from None
    with np.load(io.BytesIO(data)) as npz:
        return npz["x"], npz["y"]


def split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """A seeded shuffle, then the last `val_fraction` of it for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction)))
    train, val = order[:-n_val], order[-n_val:]
    return (x[train], y[train]), (x[val], y[val])


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the digits data set to a local path or an s3:// URI.")
    parser.add_argument("uri", help="where to write it, e.g. s3://my-bucket/data/digits.npz")
    args = parser.parse_args()
    write_dataset(args.uri)
    print(f"wrote the digits data set to {args.uri}")


if __name__ == "__main__":
    main()
