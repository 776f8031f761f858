"""Trials of several processes (`hydra.launcher.procs_per_node`) on one or more nodes (`hydra.launcher.nodes`), on
the job's side. On every node the worker starts the ranks as `torchrun` does, with PyTorch's own elastic launcher
(`elastic_launch`, static rendezvous on the main node's address); every rank runs the Hydra task (the worker's
`rank_main`, which the worker hands to `execute`: this module imports no worker); rank 0's ending
is the job's, and rank 0 alone writes the job dir's `.hydra` files and the result. The other ranks log to
`<job name>.rank<R>.log` in the same job dir, and a child node brings its ranks' files to the job's outputs.

Where the node is, in Batch's words (a multi-node parallel job; `aws_batch_local` gives the same variables):
AWS_BATCH_JOB_NUM_NODES, AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_MAIN_NODE_INDEX, and on child nodes only
AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS: the main node finds its own address.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

ENV_PROCS_PER_NODE = "HYDRA_AWSBATCH_PROCS_PER_NODE"  # processes per node; unset: the node's GPUs, or 1
ENV_MASTER_PORT = "HYDRA_AWSBATCH_MASTER_PORT"  # the main node's rendezvous port; unset: DEFAULT_PORT
DEFAULT_PORT = 29500  # torchrun's
RENDEZVOUS_TIMEOUT_S = 900  # how long the nodes wait for each other (Batch starts them one by one)


class Layout(NamedTuple):
    """Where this node stands in its job."""

    nodes: int
    node_rank: int  # 0: the main node, which hosts the rendezvous
    procs: int  # processes on this node
    main_address: str
    port: int

    @property
    def main(self) -> bool:
        return self.node_rank == 0


def layout(env=os.environ) -> Layout | None:
    """This node's place in a trial of several processes; None for a trial of one process (the plain path)."""
    nodes = int(env.get("AWS_BATCH_JOB_NUM_NODES") or 1)
    procs = int(env.get(ENV_PROCS_PER_NODE) or 0)
    if nodes <= 1 and procs <= 1:
        return None
    if procs < 1:
        procs = _gpus() or 1
    node_rank = (int(env.get("AWS_BATCH_JOB_NODE_INDEX") or 0) - int(env.get("AWS_BATCH_JOB_MAIN_NODE_INDEX") or 0))
    node_rank %= nodes
    if nodes == 1:
        address = "127.0.0.1"
    elif node_rank:
        address = env.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS") or ""
        if not address:
            raise RuntimeError("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS is not set on this child node: it runs "
                               "only in a multi-node parallel job")
    else:
        address = own_address()
    return Layout(nodes, node_rank, procs, address, int(env.get(ENV_MASTER_PORT) or DEFAULT_PORT))


def own_address() -> str:
    """The main node's address as its children reach it (`hostname -i`, as AWS's MNP examples do)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def free_port() -> int:
    """A port free on this machine now (for a local job's rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -------------------------------------------------------------------------------------------- the node
def execute(node: Layout, job, ending, rank_main, interrupted: type[BaseException], *args) -> None:
    """Start this node's ranks, each `rank_main(*args)` (a module's function: the ranks are spawned), and wait
    for them (the elastic agent runs in this process). The main node takes rank 0's ending (the dict that
    rank_main returns) as the job's; a child node's ending says whether its own ranks ended well. A SIGTERM that
    stops the ranks raises `interrupted`."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from hydra_plugins.hydra_awsbatch_launcher import _wire

    config = LaunchConfig(
        min_nodes=node.nodes, max_nodes=node.nodes, nproc_per_node=node.procs, run_id=f"hydra-awsbatch-{job.num}",
        rdzv_backend="static", rdzv_endpoint=f"{node.main_address}:{node.port}",
        rdzv_configs={"rank": node.node_rank, "timeout": RENDEZVOUS_TIMEOUT_S}, max_restarts=0,
        monitor_interval=0.1, start_method="spawn")
    print(f"hydra-awsbatch: node {node.node_rank} of {node.nodes}, {node.procs} processes, rendezvous at "
          f"{node.main_address}:{node.port}", flush=True)
    try:
        returns = elastic_launch(config, rank_main)(*args)
    except SignalException as exc:  # SIGTERM (Spot, timeout, Ctrl-C): the ranks had it too, and saved what they could
        raise interrupted(str(exc)) from None
    except ChildFailedError as exc:
        failures = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(exc.failures.items()))
        raise RuntimeError(f"node {node.node_rank} of {node.nodes}: {failures} failed; the other processes were "
                           f"stopped\n{exc}") from None
    failed = {rank: r for rank, r in sorted(returns.items()) if r["status"] != _wire.Outcome.SUCCEEDED}
    if node.main:
        ending.take(returns[0])  # rank 0's: the job's return value, or its own failure
        failed.pop(0, None)
    else:
        ending.status, ending.exit_code = _wire.Outcome.SUCCEEDED, 0
    if failed:  # another rank failed: so does the trial, saying which
        rank, other = next(iter(failed.items()))
        error = dict(other["error"] or {"type": "", "message": "it failed", "traceback": ""})
        error["message"] = f"rank {rank} (node {node.node_rank} of {node.nodes}): {error['message']}"
        ending.take(dict(other, error=error, job_return=None, num=ending.num))
