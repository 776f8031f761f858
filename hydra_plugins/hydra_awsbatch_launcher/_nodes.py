"""Trials of several processes (`hydra.launcher.procs_per_node`) on one or more nodes (`hydra.launcher.nodes`), on
the job's side. On every node the worker starts the ranks as `torchrun` does, with PyTorch's own elastic launcher
(`elastic_launch`, static rendezvous on the main node's address); every rank runs the Hydra task (the worker's
`rank_main`, which the worker hands to `execute`: this module imports no worker); rank 0's ending
is the job's, and rank 0 alone writes the job dir's `.hydra` files and the result. The other ranks log to
`<job name>.rank<R>.log` in the same job dir, and a child node brings its ranks' files to the job's outputs.

A rank whose task raises writes its ending beside its node's ranks (`rank_failed`) and exits at once: the elastic
agent then stops the node's other ranks (rather than let them wait in a collective, or train on, for a trial that has
failed), and the trial's error is that rank's exception and traceback, the first rank to fail of any node.

Batch does nothing when a child node dies (the job ends when its main node does), so the nodes watch each other:
every child node's worker holds a TCP connection to the main node's worker (`NodeWatch`, on the rendezvous port + 1),
with a heartbeat; a child whose rank failed sends that rank's error; a connection that closes before its node's
ranks ended well, or stays silent `SILENCE_S`, stops the main node's ranks (so the job, and Batch stops the other
nodes) and fails the trial naming that node (and its rank's error, where it sent one).

Where the node is, in Batch's words (a multi-node parallel job; `aws_batch_local` gives the same variables):
AWS_BATCH_JOB_NUM_NODES, AWS_BATCH_JOB_NODE_INDEX, AWS_BATCH_JOB_MAIN_NODE_INDEX, and on child nodes only
AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS: the main node finds its own address.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import threading
import time
from typing import NamedTuple

from hydra_plugins.hydra_awsbatch_launcher._job import EXIT_FAILED, MASTER_PORT, WATCH_PORT, JobSettings

DEFAULT_PORT = 29500  # torchrun's
RENDEZVOUS_TIMEOUT_S = 900  # how long the nodes wait for each other (Batch starts them one by one)
HEARTBEAT_S = 5.0  # a child node's worker tells the main node's it is alive this often
SILENCE_S = 30.0  # a child node silent this long is dead (an instance that vanishes resets no connection)


class Layout(NamedTuple):
    """Where this node stands in its job."""

    nodes: int
    node_rank: int  # 0: the main node, which hosts the rendezvous
    procs: int  # processes on this node
    main_address: str
    port: int
    watch_port: int = 0  # the main node's NodeWatch; 0: port + 1
    job_id: str = ""  # this node's Batch job id (JOBID#N)

    @property
    def main(self) -> bool:
        return self.node_rank == 0


def layout(env=os.environ) -> Layout | None:
    """This node's place in a trial of several processes; None for a trial of one process (the plain path)."""
    nodes = int(env.get("AWS_BATCH_JOB_NUM_NODES") or 1)
    procs = JobSettings.read(env).procs_per_node or 0
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
    port = int(env.get(MASTER_PORT) or DEFAULT_PORT)  # unset: torchrun's
    return Layout(nodes, node_rank, procs, address, port, int(env.get(WATCH_PORT) or port + 1),
                  env.get("AWS_BATCH_JOB_ID", ""))


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


def rank_failed(scratch: str, rank: int, fields: dict) -> None:
    """A rank's ending (Ending.fields()) whose task failed, for its node's worker to find."""
    path = os.path.join(scratch, f"rank{rank}.failed")
    with open(path + ".tmp", "wb") as out:
        pickle.dump({"rank": rank, "at": time.time(), "fields": fields}, out)
    os.replace(path + ".tmp", path)


def first_failure(scratch: str, node: Layout) -> dict | None:
    """The ending of this node's rank that failed first, its message naming the rank and node; None if none."""
    found = []
    for name in os.listdir(scratch):
        if name.startswith("rank") and name.endswith(".failed"):
            with open(os.path.join(scratch, name), "rb") as saved:
                found.append(pickle.load(saved))
    if not found:
        return None
    first = min(found, key=lambda f: f["at"])
    return dict(first["fields"], error=named(first["fields"].get("error"), first["rank"], node))


def named(error: dict | None, rank: int, node: Layout) -> dict:
    """A rank's error, its message saying which rank of which node."""
    error = dict(error or {"type": "", "message": "it failed", "traceback": ""})
    error["message"] = f"rank {rank} (node {node.node_rank} of {node.nodes}): {error['message']}"
    return error


# ------------------------------------------------------------------------------------------- the watch
class NodeWatch:
    """The nodes of one trial watching each other. On the main node: accept every child node's connection and
    follow it; a child whose connection closes before it said `done`, or that stays silent SILENCE_S, is dead:
    `dead` names it, and `on_dead()` stops this node's ranks. A child that says `interrupted` (a SIGTERM: Batch
    stopping the job, which stops the main node too) is dead only if this node is not stopped within SILENCE_S.
    On a child node: connect to the main node (until the rendezvous would time out), say who it is, send a
    heartbeat, and at its end say how its ranks ended: `done` (well), `interrupted`, `failed <its rank's error as
    JSON>`, or nothing (they died). A child's failure stops the main node's ranks at once: `failure` holds it."""

    def __init__(self, node: Layout, on_dead=lambda: os.kill(os.getpid(), signal.SIGTERM), failed=lambda: None):
        self.node, self.on_dead = node, on_dead
        self.failed = failed  # a child node: its rank's error the moment one fails (first_failure), or None
        self.said_failed = False
        self.dead: str | None = None
        self.failure: dict | None = None  # the error a child node's failed rank sent
        self.died = threading.Event()
        self.ended = threading.Event()  # this node's ranks ended: a child's end is no news any more
        self.holding = False  # this node's ranks failed already: a child's death is named, not signalled
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def start(self) -> NodeWatch:
        if self.node.main:
            self._socket = socket.create_server(("", self.node.watch_port))
            self._socket.settimeout(1.0)
            threading.Thread(target=self._accept, daemon=True, name="node-watch").start()
        else:
            threading.Thread(target=self._heartbeat, daemon=True, name="node-watch").start()
        return self

    def close(self, said: str | None = None) -> None:
        """This node's ranks ended; a child node tells the main node how (`said`: done, interrupted, failed <JSON>,
        or None)."""
        self.ended.set()
        with self._lock:
            if self._socket is None:
                return
            try:
                if said and not self.node.main and not (said.startswith("failed") and self.said_failed):
                    self._socket.sendall(f"{said}\n".encode())
                self._socket.close()
            except OSError:
                pass
            self._socket = None

    def verdict(self, timeout: float) -> str | None:
        """The dead child node's name, waiting up to `timeout` for the watch to see it (this node's ranks may
        fail on its loss a moment before its connection is seen to close); no signal is sent meanwhile."""
        self.holding = True
        self.died.wait(timeout)
        return self.dead

    def _accept(self) -> None:
        while not self.ended.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except (OSError, AttributeError):  # closed
                return
            threading.Thread(target=self._follow, args=(connection,), daemon=True).start()

    def _follow(self, connection: socket.socket) -> None:
        connection.settimeout(SILENCE_S)
        name, last, why, failure = "a child node", "", "its connection closed", None
        try:
            with connection, connection.makefile("rb") as lines:
                for line in lines:  # "hello <node rank> <job id>", "alive" every HEARTBEAT_S, then how it ended
                    text = line.decode(errors="replace")
                    last, *rest = text.split() or [""]
                    if last == "failed":
                        try:
                            failure = dict(json.loads(text.split(None, 1)[1]))
                        except (ValueError, TypeError, IndexError):
                            why = f"it said it failed, in words that could not be read: {text[:200]!r}"
                        break
                    if last == "hello" and rest:
                        name = f"node {rest[0]} of {self.node.nodes}" + (f" ({rest[1]})" if rest[1:] else "")
        except TimeoutError:
            why = f"it sent nothing for {SILENCE_S:.0f} s"
        except OSError as error:
            why = f"its connection failed ({error})"
        done = last == "done"
        if last == "interrupted":  # a SIGTERM; Batch stopping the job stops this node too
            done, why = self.ended.wait(SILENCE_S), "it was stopped by a SIGTERM, and this node was not"
        with self._lock:
            if done or self.ended.is_set() or self.dead is not None:
                return
            self.failure = failure
            self.dead = (f"{name} failed: {failure['message']}" if failure
                         else f"{name} stopped before the trial ended ({why})")
        self.died.set()
        if not self.holding:
            print(f"hydra-awsbatch: {self.dead}: stopping this node's processes", flush=True)
            self.on_dead()

    def _heartbeat(self) -> None:
        deadline = time.time() + RENDEZVOUS_TIMEOUT_S
        while True:
            try:
                connection = socket.create_connection((self.node.main_address, self.node.watch_port), timeout=5)
                break
            except OSError:
                if self.ended.is_set() or time.time() > deadline:
                    return
                time.sleep(1.0)
        with self._lock:
            if self.ended.is_set():
                connection.close()
                return
            self._socket = connection
        message = f"hello {self.node.node_rank} {self.node.job_id or '-'}\n".encode()
        beat = 0.0
        while True:
            failure = None if self.said_failed else self.failed()  # a rank failed: said at once, not at the end
            if failure is not None or time.monotonic() - beat >= HEARTBEAT_S:
                if failure is not None:
                    message = f"failed {json.dumps(failure['error'])}\n".encode()
                with self._lock:
                    if self._socket is None:
                        return
                    try:
                        self._socket.sendall(message)
                    except OSError:  # the main node is gone: Batch ends the job, and so this node
                        return
                self.said_failed = self.said_failed or failure is not None
                message, beat = b"alive\n", time.monotonic()
            if self.ended.wait(0.25):
                return


# -------------------------------------------------------------------------------------------- the node
def execute(node: Layout, job, ending, rank_main, interrupted: type[BaseException], payload_uri: str, index: int,
            scratch: str) -> None:
    """Start this node's ranks, each `rank_main(payload_uri, index, scratch)` (a module's function: the ranks are
    spawned), and wait for them (the elastic agent runs in this process). The main node takes rank 0's ending (the
    dict that rank_main returns) as the job's, or the error of the rank that failed first (a child node's, which it
    sends); a child node's ending says whether its own ranks ended well. A SIGTERM that stops the ranks raises
    `interrupted`."""
    from hydra_plugins.hydra_awsbatch_launcher import _wire
    from hydra_plugins.hydra_awsbatch_launcher._hooks import hook

    LaunchConfig, elastic_launch = hook("torch.distributed.launcher.api.elastic_launch")
    SignalException, ChildFailedError = hook("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")

    config = LaunchConfig(
        min_nodes=node.nodes, max_nodes=node.nodes, nproc_per_node=node.procs, run_id=f"hydra-awsbatch-{job.num}",
        rdzv_backend="static", rdzv_endpoint=f"{node.main_address}:{node.port}",
        rdzv_configs={"rank": node.node_rank, "timeout": RENDEZVOUS_TIMEOUT_S}, max_restarts=0,
        monitor_interval=0.1, start_method="spawn")
    print(f"hydra-awsbatch: node {node.node_rank} of {node.nodes}, {node.procs} processes, rendezvous at "
          f"{node.main_address}:{node.port}", flush=True)
    watch = NodeWatch(node, failed=lambda: first_failure(scratch, node)).start() if node.nodes > 1 else None
    said = None  # how this node's ranks ended, as a child node tells the main node: done, interrupted, or None
    try:
        returns = elastic_launch(config, rank_main)(payload_uri, index, scratch)
        said = "done"  # a rank returns only when its task succeeded (rank_main: a failed one exits)
    except (SignalException, interrupted) as exc:  # SIGTERM (Spot, timeout, Ctrl-C, or the watch): the ranks had it
        if watch and watch.failure:  # too, and saved what they could
            return _fail(ending, watch.failure)
        if watch and watch.dead:
            raise RuntimeError(f"{watch.dead}; this node's processes were stopped, and with them the trial") from None
        said = "interrupted"
        raise interrupted(str(exc)) from None
    except ChildFailedError as exc:
        failed = first_failure(scratch, node)  # a rank's task raised (its error), or a rank died (none)
        dead = watch.verdict(timeout=2.0 if failed else 5.0) if watch and node.main else None  # a child's rank
        # may have failed first, its error on the way (this node's then failed on losing it)
        if watch and watch.failure:  # a child's rank failed first: this node's failed on its loss
            return _fail(ending, watch.failure)
        if failed and not node.main:  # the main node makes it the trial's error
            said = "failed " + json.dumps(failed["error"])
        if failed:
            return ending.take(dict(failed, job_return=None, num=ending.num))
        if dead:  # its loss is what failed this node's ranks
            raise RuntimeError(f"{dead}; this node's processes were stopped, and with them the trial") from None
        failures = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(exc.failures.items()))
        raise RuntimeError(f"node {node.node_rank} of {node.nodes}: {failures} failed; the other processes were "
                           f"stopped\n{exc}") from None
    finally:
        if watch:
            watch.close(said)
    if node.main:
        ending.take(returns[0])  # rank 0's: the job's return value
    else:
        ending.status, ending.exit_code = _wire.Outcome.SUCCEEDED, 0


def _fail(ending, error: dict) -> None:
    """The trial failed with a child node's rank's error."""
    from hydra_plugins.hydra_awsbatch_launcher import _wire

    ending.take({"status": _wire.Outcome.FAILED, "exit_code": EXIT_FAILED, "error": error, "job_return": None})
