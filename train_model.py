"""Train a small classifier on scikit-learn's digits and return its validation loss.

    python train_model.py                                   # one run
    python train_model.py --multirun lr=1e-3,1e-4           # a sweep
    python train_model.py experiment=cnn_digits             # another model and optimizer

An ordinary Hydra app: it knows nothing of where it runs. It resumes from the newest checkpoint under
checkpoint.uri, and on SIGTERM (Spot reclaim, timeout) it saves one and exits with EXIT_PREEMPTED. Each epoch's
losses and accuracy go to `report()`: into the run's metrics.jsonl, and to the sweep while the job runs.

Started in a distributed environment (torchrun, or `hydra.launcher.nodes` / `procs_per_node`), it trains with
DistributedDataParallel (gloo on CPU, NCCL on GPU): each process takes its share of every batch, rank 0 saves the
checkpoints, and all of them stop at the same step on SIGTERM (example_app/distributed.py).
"""

from __future__ import annotations

import logging
import signal
import threading

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from example_app import distributed
from example_app.checkpoints import CheckpointStore
from example_app.data import load_dataset, split
from hydra_plugins.hydra_awsbatch_launcher import report

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: stopped by SIGTERM after saving a checkpoint; run it again


class StopRequest:
    """Turns SIGTERM into a flag that the training loop checks after each step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum, frame) -> None:
        log.warning("SIGTERM received: finishing this step, then saving a checkpoint")
        self.requested = True


def evaluate(model, x, y) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return loss, accuracy


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with distributed.Context() as dist:
        return train(cfg, dist)


def train(cfg: DictConfig, dist: distributed.Context) -> float:
    device = dist.device()
    torch.manual_seed(cfg.seed)

    x, y = load_dataset(cfg.data.uri)
    (x_train, y_train), (x_val, y_val) = split(x, y, cfg.data.val_fraction, cfg.seed)
    x_train, y_train = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
    x_val, y_val = torch.from_numpy(x_val).to(device), torch.from_numpy(y_val).to(device)

    # model.resources: what a job of this model asks of its machine (read by the launcher, not the model)
    model = instantiate(OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "resources"])).to(device)
    net = dist.wrap(model)  # DistributedDataParallel where several processes train
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    shuffle = torch.Generator().manual_seed(cfg.seed)
    store = CheckpointStore(cfg.checkpoint.uri, cfg.checkpoint.keep)

    # Resume: weights, optimizer, and where in which epoch we were (with that epoch's shuffle).
    epochs_done, start_step, loss_sum, history = 0, 0, 0.0, []
    uri, state = store.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle"])
        epochs_done, start_step, loss_sum = state["epochs_done"], state["step"], state["loss_sum"]
        history = state["history"]
        log.info("Resumed from %s: %d epochs and %d steps done", uri, epochs_done, start_step)

    def checkpoint(epochs: int, step: int, epoch_shuffle: torch.Tensor) -> str:
        if not dist.main:  # rank 0 saves for all: they hold the same weights
            return "(rank 0's checkpoint)"
        return store.save({
            "epochs_done": epochs, "step": step, "loss_sum": loss_sum, "history": history,
            "shuffle": epoch_shuffle, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        })

    log.info("Training %s on %s: %d train, %d validation examples%s",
             type(model).__name__, device, len(x_train), len(x_val),
             f", rank {dist.rank} of {dist.world}" if dist.active else "")
    val_loss = history[-1]["val_loss"] if history else float("nan")
    with StopRequest() as stop:
        for epoch in range(epochs_done, cfg.epochs):
            epoch_shuffle = shuffle.get_state()  # so a mid-epoch resume replays the same order
            batches = torch.randperm(len(x_train), generator=shuffle).split(cfg.batch_size)
            for step in range(start_step, len(batches)):
                if dist.active:  # this rank's share of the global batch
                    idx = dist.shard(batches[step]).to(device)
                    loss = dist.scale(F.cross_entropy(net(x_train[idx]), y_train[idx], reduction="sum"),
                                      len(batches[step]))
                else:
                    idx = batches[step].to(device)
                    loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                value, stopping = dist.agree(loss, stop.requested)
                loss_sum += value
                if stopping and step + 1 < len(batches):
                    saved = checkpoint(epoch, step + 1, epoch_shuffle)
                    log.warning("Saved %s; exiting with code %d", saved, EXIT_PREEMPTED)
                    raise SystemExit(EXIT_PREEMPTED)
            val_loss, accuracy = evaluate(model, x_val, y_val)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / len(batches),
                            "val_loss": val_loss, "val_accuracy": accuracy})
            log.info("epoch %d/%d train_loss=%.4f val_loss=%.4f val_accuracy=%.4f",
                     epoch + 1, cfg.epochs, loss_sum / len(batches), val_loss, accuracy)
            # The sweep sees each epoch while the job runs; True when it asks this trial to stop (a pruner).
            stop_early = report(epoch + 1, **{k: v for k, v in history[-1].items() if k != "epoch"})
            stop_early = dist.any(stop_early, device)  # rank 0 reports; every rank stops with it
            start_step, loss_sum = 0, 0.0
            saved = checkpoint(epoch + 1, 0, shuffle.get_state())
            if stop_early and epoch + 1 < cfg.epochs:
                log.warning("The sweep stops this trial early, after epoch %d; saved %s", epoch + 1, saved)
                break
            if dist.any(stop.requested, device) and epoch + 1 < cfg.epochs:
                log.warning("Saved %s; exiting with code %d", saved, EXIT_PREEMPTED)
                raise SystemExit(EXIT_PREEMPTED)
    log.info("Finished: val_loss=%.4f", val_loss)
    return float(val_loss)


if __name__ == "__main__":
    main()
