"""Checkpoints in a folder or S3 prefix: one file per save, written atomically, newest K kept.

A checkpoint named ckpt-e00003-s0000012.pt holds the state after 3 whole epochs and 12 steps of the
fourth, so names sort in training order and the newest is the last.
"""

from __future__ import annotations

import io
import logging
import re

import torch

from example_app import storage

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-e(\d{5})-s(\d{7})\.pt$")


def checkpoint_name(epochs_done: int, step: int) -> str:
    return f"ckpt-e{epochs_done:05d}-s{step:07d}.pt"


class CheckpointStore:
    def __init__(self, uri: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be at least 1, got {keep}")
        self.uri = uri
        self.keep = keep

    def names(self) -> list[str]:
        return [name for name in storage.list_names(self.uri) if _NAME.match(name)]

    def save(self, state: dict) -> str:
        """Write `state` (which has 'epochs_done' and 'step') and delete all but the newest `keep`."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        uri = storage.join(self.uri, checkpoint_name(state["epochs_done"], state["step"]))
        storage.write_bytes(uri, buffer.getvalue())
        for old in self.names()[: -self.keep]:
            storage.remove(storage.join(self.uri, old))
        return uri

    def load_latest(self) -> tuple[str, dict] | tuple[None, None]:
        names = self.names()
        if not names:
            return None, None
        uri = storage.join(self.uri, names[-1])
        state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
        return uri, state
