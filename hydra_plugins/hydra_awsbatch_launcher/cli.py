"""hydra-awsbatch: follow, inspect, cancel or collect a sweep from its manifest.

    hydra-awsbatch status SWEEP          per-job state, duration and result
    hydra-awsbatch logs SWEEP JOB_NUM    the tail of a job's CloudWatch log stream
    hydra-awsbatch cancel SWEEP          terminate every unfinished job
    hydra-awsbatch attach SWEEP          watch until done, then bring results and job dirs home
    hydra-awsbatch local-cloud up|status|down   the AWS path on this machine (moto + Docker)

SWEEP is the local sweep dir (it holds manifest.json) or the manifest's URI in staging.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher.config import DEFAULT_LOG_GROUP

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


def load_manifest(sweep: str):
    """The manifest of SWEEP: a local sweep dir, or a manifest's URI (with or without /manifest.json)."""
    from hydra_plugins.hydra_awsbatch_launcher import _stage, _storage

    if _storage.is_s3(sweep) or sweep.endswith(".json"):
        uri = sweep if sweep.endswith(".json") else _storage.join(sweep, _stage.MANIFEST)
    else:
        uri = str(Path(sweep) / _stage.MANIFEST)
    try:
        text = _storage.read_bytes(uri).decode()
    except FileNotFoundError:
        raise SystemExit(f"hydra-awsbatch: no sweep manifest at {uri}: give the sweep dir (multirun/DATE/TIME) "
                         "or the manifest's URI") from None
    except Exception as error:  # unreachable S3, no credentials, a folder where a file should be
        raise SystemExit(f"hydra-awsbatch: cannot read {uri}: {error}") from None
    try:
        manifest = _stage.Manifest.from_json(text)
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise SystemExit(f"hydra-awsbatch: {uri} is not a sweep manifest of hydra-awsbatch-launcher ({error}); "
                         "give the sweep dir of a sweep launched with hydra/launcher=aws_batch") from None
    if not _storage.is_s3(uri):  # the sweep dir may have moved since
        manifest.sweep_dir = str(Path(uri).resolve().parent)
    return manifest


class Sweep:
    """A sweep submitted to AWS Batch, brought back from its manifest."""

    def __init__(self, sweep: str, on_batch: bool = True):
        from hydra_plugins.hydra_awsbatch_launcher._batch import Array, BatchApi, BatchError, BatchExecutor

        self.manifest = load_manifest(sweep)
        self.local = self.manifest.launcher != "AwsBatchLauncher"
        if self.local and on_batch:
            raise SystemExit(f"hydra-awsbatch: sweep {self.manifest.sweep_id} ran with {self.manifest.launcher}; "
                             "its jobs were local processes, which stop with the launching process. Their logs "
                             f"are in {shlex.quote(str(Path(self.manifest.sweep_dir) / '.logs'))}")
        self.executors = []
        if self.local:
            return
        settings = self.manifest.settings
        try:
            self.api = BatchApi(settings.get("region"), settings.get("profile"))
        except BatchError as error:
            raise SystemExit(f"hydra-awsbatch: {error}") from None
        self.executors = [BatchExecutor(self.api, [Array(a["job_id"], a["first"], a["size"]) for a in b["arrays"]])
                          for b in self.manifest.batches if b.get("arrays")]

    def launcher(self):
        from hydra_plugins.hydra_awsbatch_launcher.awsbatch_launcher import AwsBatchLauncher

        launcher = AwsBatchLauncher(terminate_on_interrupt=False, **self.manifest.settings)
        launcher.manifest = self.manifest
        launcher._api = self.api
        return launcher

    def refresh(self) -> None:
        launcher = self.launcher()
        for executor in self.executors:
            launcher.record_states({s.num: s for s in executor.poll()})


def status(args) -> int:
    sweep = Sweep(args.sweep, on_batch=False)
    if not sweep.local:
        sweep.refresh()
    m = sweep.manifest
    print(f"sweep {m.sweep_id} ({m.launcher}), created {m.created}, staging {m.staging_uri}")
    print(f"{'#':>4}  {'state':<10} {'duration':>9}  {'overrides':<40} result")
    for job in m.jobs:
        duration = (f"{job['stopped'] - job['started']:.0f}s" if job.get("started") and job.get("stopped") else "-")
        print(f"{job['num']:>4}  {job.get('state', '?'):<10} {duration:>9}  {' '.join(job['overrides'])[:40]:<40} "
              f"{job.get('result', job.get('reason') or '')}")
    return 0


def logs(args) -> int:
    sweep = Sweep(args.sweep, on_batch=False)
    job = next((j for j in sweep.manifest.jobs if j["num"] == args.job_num), None)
    if sweep.local:
        path = Path(sweep.manifest.sweep_dir) / ".logs" / f"{args.job_num}.log"
        raise SystemExit(f"hydra-awsbatch: sweep {sweep.manifest.sweep_id} ran its jobs locally; job #{args.job_num}'s "
                         f"output is in {shlex.quote(str(path))}" + ("" if path.is_file() else " (not written)"))
    if job is None or not job.get("job_id"):
        raise SystemExit(f"hydra-awsbatch: sweep {sweep.manifest.sweep_id} has no submitted job #{args.job_num}")
    described = sweep.api.describe([job["job_id"]])
    stream = (described[0].get("container", {}).get("logStreamName") if described else None)
    if not stream:
        raise SystemExit(f"hydra-awsbatch: job #{args.job_num} ({job['job_id']}) has no log stream yet; "
                         f"it is {described[0]['status'] if described else 'unknown to Batch'}")
    print("\n".join(sweep.api.log_tail(sweep.manifest.settings.get("log_group", DEFAULT_LOG_GROUP), stream,
                                       args.lines)))
    return 0


def cancel(args) -> int:
    sweep = Sweep(args.sweep)
    launcher = sweep.launcher()
    stopped = 0
    for executor in sweep.executors:
        executor.poll()
        stopped += executor.terminate("cancelled with hydra-awsbatch cancel")
        launcher.record_states(executor.states)
    print(f"terminated {stopped} unfinished jobs of sweep {sweep.manifest.sweep_id}")
    return 0


def attach(args) -> int:
    """Watch, then collect from the manifest and the results alone: the payload is never unpickled, and the
    app's own modules are found where the launcher found them (code_root)."""
    from hydra.core.utils import JobStatus

    sweep = Sweep(args.sweep)
    code_root = sweep.manifest.settings.get("code_root")
    if code_root and Path(code_root).is_dir() and code_root not in sys.path:
        sys.path.insert(0, code_root)
    launcher = sweep.launcher()
    failed = 0
    for executor in sweep.executors:
        nums = sorted(executor.states)
        states = launcher.watch(executor, len(nums))
        returns = launcher.collect(nums, states, executor)
        failed += sum(r.status != JobStatus.COMPLETED for r in returns)
    print(f"sweep {sweep.manifest.sweep_id}: {len(sweep.manifest.jobs) - failed} jobs completed, {failed} failed; "
          f"job dirs in {shlex.quote(sweep.manifest.sweep_dir)}")
    return 1 if failed else 0


def local_cloud(args) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _local_cloud

    try:
        if args.action == "up":
            _local_cloud.up(args.stack)
            return 0
        return _local_cloud.status() if args.action == "status" else _local_cloud.down()
    except (_local_cloud.LocalCloudError, OSError) as error:
        raise SystemExit(f"hydra-awsbatch local-cloud {args.action}: {error}") from None


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of lines, 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hydra-awsbatch", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function, text in [("status", status, "per-job state, duration and result"),
                                 ("logs", logs, "the tail of a job's CloudWatch log stream"),
                                 ("cancel", cancel, "terminate every unfinished job of the sweep"),
                                 ("attach", attach, "watch until done, then collect results and job dirs")]:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("sweep", help="the local sweep dir, or the manifest's URI")
        command.set_defaults(function=function)
        if name == "logs":
            command.add_argument("job_num", type=int, help="the job's number (#N in the sweep)")
            command.add_argument("-n", "--lines", type=positive, default=50, help="lines to show (default 50)")
    cloud = commands.add_parser("local-cloud", help="the AWS path on this machine: moto's server + Docker",
                                description="up: start moto's server, deploy template.yaml, build the job image; "
                                            "status: what runs; down: stop what up started")
    cloud.add_argument("action", choices=["up", "status", "down"])
    cloud.add_argument("--stack", default="hydra-batch", help="stack name (default hydra-batch)")
    cloud.set_defaults(function=local_cloud)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.function(args)


if __name__ == "__main__":
    sys.exit(main())
