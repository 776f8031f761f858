"""Data-parallel training when the app is started in a distributed environment (torchrun's variables: WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), as `hydra.launcher.nodes` and `procs_per_node` start it; one process
otherwise, exactly as before.

Every rank draws the same shuffle and takes its share of each global batch (`shard`), so a step of W processes
sees the very examples one process sees with the same `batch_size`; its loss is scaled so that DistributedDataParallel's
average of the gradients is the gradient of the global batch's mean loss. W processes therefore train the model
one process trains, up to the order of floating-point sums.
"""

from __future__ import annotations

import datetime
import os

import torch

TIMEOUT = datetime.timedelta(seconds=60)  # a collective that waits longer than this for a lost peer fails


class Context:
    """This process's place in the training: rank, world size, device; a no-op for one process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE") or 1)
        self.rank = int(os.environ.get("RANK") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK") or 0)
        self.active = self.world > 1
        self._owned = False

    @property
    def main(self) -> bool:
        """Rank 0: the one that saves checkpoints."""
        return self.rank == 0

    def __enter__(self) -> Context:
        if self.active and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group(backend, timeout=TIMEOUT)
            self._owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            torch.distributed.destroy_process_group()

    def device(self) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank if self.active else 0)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train with: DistributedDataParallel over `model` where several processes train it."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's examples of a global batch (the distributed sampler: every rank drew the same shuffle)."""
        return batch[self.rank::self.world] if self.active else batch

    def scale(self, loss_sum: torch.Tensor, global_batch: int) -> torch.Tensor:
        """The loss to back-propagate from the summed loss of this rank's shard of a batch of `global_batch`
        examples: once DDP averages the ranks' gradients, that of the global batch's mean loss."""
        return loss_sum * self.world / global_batch

    def agree(self, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """The global batch's mean loss and whether any rank must stop (SIGTERM reaches ranks at different steps:
        they all stop at the same one), in one collective."""
        if not self.active:
            return loss.item(), stop
        values = torch.stack([loss.detach().float() / self.world, torch.tensor(float(stop), device=loss.device)])
        torch.distributed.all_reduce(values)
        return values[0].item(), values[1].item() > 0

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` holds on any rank."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(value)
        return value.item() > 0
