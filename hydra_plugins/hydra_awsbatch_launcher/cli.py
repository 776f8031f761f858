"""hydra-awsbatch: follow, inspect, cancel or collect a sweep from its manifest.

    hydra-awsbatch status SWEEP          per-job state, duration and result
    hydra-awsbatch logs SWEEP JOB_NUM    the tail of a job's log (-f: follow it while the job runs)
    hydra-awsbatch report SWEEP          the sweep's page, report.html (-o FILE: elsewhere)
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
import time
from pathlib import Path

from hydra_plugins.hydra_awsbatch_launcher.config import DEFAULT_LOG_GROUP

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


def load_manifest(sweep: str):
    """The manifest of SWEEP: a local sweep dir, or a manifest's URI (with or without /manifest.json)."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest

    uri = _manifest.location(sweep)
    try:
        return _manifest.read(uri)
    except FileNotFoundError:
        raise SystemExit(f"hydra-awsbatch: no sweep manifest at {uri}: give the sweep dir (multirun/DATE/TIME) "
                         "or the manifest's URI") from None
    except ValueError as error:
        raise SystemExit(f"hydra-awsbatch: {uri} is not a sweep manifest of hydra-awsbatch-launcher ({error}); "
                         "give the sweep dir of a sweep launched with hydra/launcher=aws_batch") from None
    except Exception as error:  # unreachable S3, no credentials, a folder where a file should be
        raise SystemExit(f"hydra-awsbatch: cannot read {uri}: {error}") from None


def open_sweep(sweep: str, on_batch: bool = True):
    """The manifest of SWEEP and its sweep engine: following its Batch jobs, or, for a sweep of local processes
    whose launching process is gone, what those jobs left. While that process lives, its jobs are its own: the
    engine is None for status and logs (`on_batch` False), and other commands refuse."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest, _sweep
    from hydra_plugins.hydra_awsbatch_launcher._batch import BatchApi, BatchError, BatchExecutor

    manifest = load_manifest(sweep)
    settings = manifest.settings
    options = {"writes_in_place": bool(settings.get("shared_sweep_dir") or settings.get("in_place")),
               "terminate_on_interrupt": False}
    if manifest.launcher != "AwsBatchLauncher":
        holder = _manifest.held_by(Path(manifest.sweep_dir))
        if holder is None:  # the jobs stopped with their launching process: what they left is all there is
            from hydra_plugins.hydra_awsbatch_launcher._local import Remains

            return manifest, _sweep.Sweep(manifest, Remains(manifest), **options)
        if not on_batch:
            return manifest, None
        raise SystemExit(f"hydra-awsbatch: sweep {manifest.sweep_id} runs as local processes of its launching "
                         f"process ({holder}), which collects them; their logs are in "
                         f"{shlex.quote(str(Path(manifest.sweep_dir) / '.logs'))}")
    warm = bool(settings.get("workers"))
    if warm and on_batch:
        raise SystemExit(f"hydra-awsbatch: sweep {manifest.sweep_id} ran on {settings['workers']} warm workers, which "
                         "only its launching process feeds: they stop with it (Ctrl-C there), or on their own within "
                         "a minute of its end. Its finished trials are in the sweep dir; run the sweep again to "
                         "resume it")
    try:
        api = BatchApi(settings.get("region"), settings.get("profile"))
    except BatchError as error:
        raise SystemExit(f"hydra-awsbatch: {error}") from None
    executor = BatchExecutor(api)
    if not warm:  # a warm sweep's records say what its trials did; its arrays are its workers', not theirs
        executor.add([array for batch in manifest.batches for array in batch.arrays])
    return manifest, _sweep.Sweep(manifest, executor, **options)


def varying(jobs) -> dict[int, str]:
    """Each job's overrides that differ between the jobs (all of them for a single job), in full."""
    pairs = [dict(o.partition("=")[::2] for o in job.overrides) for job in jobs]
    keys = [k for k in dict.fromkeys(k for p in pairs for k in p) if len({p.get(k) for p in pairs}) > 1]
    keys = keys or list(dict.fromkeys(k for p in pairs for k in p))
    return {job.num: " ".join(f"{k}={p[k]}" for k in keys if k in p) for job, p in zip(jobs, pairs)}


def last_report(record: dict | None) -> str:
    """"step 5: val_loss=0.312346 acc=0.9": a record's one line, numbers to 6 significant digits."""
    from hydra_plugins.hydra_awsbatch_launcher._report import sig

    if not record:
        return ""
    values = " ".join(f"{k}={sig(v)}" for k, v in record.items() if k not in ("step", "time"))
    return f"step {sig(record.get('step'))}: {values}"


def outcomes(m) -> dict[int, str]:
    """Each job's state as status shows it: PRUNED where the thompson sweeper's state says its trial was stopped
    early (the job itself SUCCEEDED: it returned when asked), else the job's state."""
    import json

    from hydra_plugins.hydra_awsbatch_launcher import _report, _storage

    shown = {job.num: str(job.state) for job in m.jobs}
    where = Path(m.sweep_dir) / _report.STATE
    try:
        text = where.read_text() if where.is_file() else _storage.read_bytes(
            _storage.join(m.staging.sweep, _report.STATE)).decode()
        trials = json.loads(text).get("trials") or []
    except Exception:  # no thompson sweep, or its state being written: the jobs' states
        trials = []
    for trial in trials:
        if trial.get("status") == "pruned" and trial.get("job") in shown:
            shown[trial["job"]] = "PRUNED"
    for job in m.jobs:
        if shown[job.num] == "SUCCEEDED" and not trials and job.stop_request and "interrupted" not in job.stop_request:
            shown[job.num] = "PRUNED"
    for num in orphaned(m):
        shown[num] = "STOPPED"
    return shown


def orphaned(m) -> list[int]:
    """The unfinished trials of a warm sweep on Batch whose launching process is gone (its sweep dir's lock is
    here and nobody holds it): its warm workers stop within a minute of it, and these trials with them."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest

    lock = Path(m.sweep_dir) / _manifest.LOCK
    if not (m.settings.get("workers") and m.launcher == "AwsBatchLauncher" and lock.is_file()
            and not _manifest.held_by(Path(m.sweep_dir))):
        return []
    return [job.num for job in m.jobs if job.state not in _manifest.FINAL]


def status(args) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _manifest, _resources
    from hydra_plugins.hydra_awsbatch_launcher._report import sig

    m, sweep = open_sweep(args.sweep, on_batch=False)
    if sweep is not None:
        running = [info.num for info in sweep.refresh() if info.state == "RUNNING"]
        sweep.take_reports(sweep.channel.poll(running, limit=len(running)))  # what the running jobs reported
    print(f"sweep {m.sweep_id} ({m.launcher}), created {m.created}, staging {m.staging_uri}")
    overrides, states = varying(m.jobs), outcomes(m)
    asked = dict(zip((job.num for job in m.jobs), _resources.varying([job.resources for job in m.jobs])))
    width = max([9, *map(len, overrides.values())])
    print(f"{'#':>4}  {'state':<10} {'duration':>9}  {'overrides':<{width}}  "
          "resources (where they differ) / result / last report / where the time went")
    for job in m.jobs:
        duration = f"{job.stopped - job.started:.0f}s" if job.started and job.stopped else "-"
        latency = " ".join(f"{name} {seconds:.1f}s" for name, seconds in job.latency().items())
        print(f"{job.num:>4}  {states[job.num]:<10} {duration:>9}  {overrides[job.num]:<{width}}  "
              + "  ".join(text for text in (asked[job.num], sig(job.result) if job.result else job.reason,
                                            last_report(job.last_report), latency) if text))
    if m.unsubmitted() and not _manifest.held_by(Path(m.sweep_dir)):
        print(m.unsubmitted())
    stopped = orphaned(m)
    if stopped:
        done = sum(job.state == "SUCCEEDED" for job in m.jobs)
        print(f"{len(stopped)} trial(s) (STOPPED) were running on warm workers when the sweep's launching process "
              "ended; its workers stop within 60 s of it, and their trials with them. "
              + ("Run the same command again: the thompson sweeper resumes this sweep" if resumes(m) else
                 anew(m, done, example=m.job(stopped[0]).overrides)))
    return 0


def logs(args) -> int:
    m, sweep = open_sweep(args.sweep, on_batch=False)
    job = next((j for j in m.jobs if j.num == args.job_num), None)
    if m.launcher != "AwsBatchLauncher":
        return local_log(m, job, args)
    if job is None or not job.job_id:
        raise SystemExit(f"hydra-awsbatch: sweep {m.sweep_id} has no submitted job #{args.job_num}")
    job_id = node_job(m, job, args.node)
    api, group = sweep.executor.api, m.settings.get("log_group", DEFAULT_LOG_GROUP)
    warm = bool(m.settings.get("workers"))  # the trial's lines of its warm worker's stream
    printed: list[str] = []
    while True:
        described = api.describe([job_id])
        if not described and job_id != job.job_id and api.describe([job.job_id]):  # moto (the local cloud) keeps
            print(f"hydra-awsbatch: Batch does not know {job_id}: the job's own log stream, every node's lines",
                  file=sys.stderr)  # one stream for all the nodes of a job
            job_id = job.job_id
            continue
        found = (api.job_log_tail(described[0], group, 10_000 if args.follow or warm else args.lines)
                 if described else None)
        ended = not described or described[0].get("status") in ("SUCCEEDED", "FAILED")
        if not found and (not args.follow or ended):
            raise SystemExit(f"hydra-awsbatch: job #{args.job_num} ({job_id}) has no log stream yet; "
                             f"it is {described[0]['status'] if described else 'unknown to Batch'}")
        lines = found[1] if found else []
        if warm:
            lines, over = trial_lines(lines, job, f"its warm worker's log stream ({found[0] if found else job_id})",
                                      args.follow and not ended)
            ended = ended or over
        new = lines[overlap(printed, lines):] if printed else lines[-args.lines:]
        if new:
            print("\n".join(new), flush=True)
            printed = (printed + new)[-10_000:]
        if not args.follow or ended:
            return 0
        time.sleep(args.interval)


def node_job(m, job, node: int) -> str:
    """The Batch job id of node `node` of a multi-node trial (JOBID#K, as Batch names a node); node 0: the job."""
    nodes = int((getattr(job, "resources", None) or {}).get("nodes") or m.settings.get("nodes") or 1)
    if not 0 <= node < nodes:
        raise SystemExit(f"hydra-awsbatch: --node {node}: job #{job.num} of sweep {m.sweep_id} ran on {nodes} "
                         f"node(s): 0 to {nodes - 1}")
    return f"{job.job_id}#{node}" if node else job.job_id


def overlap(printed: list[str], lines: list[str]) -> int:
    """How many of `lines` (a newer tail of the same log) were printed already: the longest start of `lines`
    that ends what was printed."""
    for k in range(min(len(printed), len(lines)), 0, -1):
        if printed[-k:] == lines[:k]:
            return k
    return 0


def trial_lines(lines: list[str], job, where: str, waiting: bool) -> tuple[list[str], bool]:
    """A warm trial's own lines of its worker's log, and whether they are all there (the trial ended)."""
    from hydra_plugins.hydra_awsbatch_launcher import _workers

    mine = _workers.trial_lines(lines, job.num)
    if mine is None and not waiting:
        raise SystemExit(f"hydra-awsbatch: trial #{job.num} ran on a warm worker, and {where} does not hold its "
                         "start (it may not have started, or its lines are older than the last 10,000)")
    return mine or [], bool(mine) and f": trial {job.num} ended" in mine[-1]


def warm_local_log(m, job, args) -> int:
    """A warm trial of aws_batch_local: its lines of its worker's log (SWEEP/.logs/workers/W.log)."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest, _workers

    printed = 0
    while True:
        logs = sorted(Path(m.sweep_dir, ".logs").glob("workers*/*.log"), key=lambda p: p.stat().st_mtime)  # a
        # folder per resource set
        texts = [p.read_text(errors="replace").splitlines() for p in reversed(logs)]  # the newest first
        lines = next((t for t in texts if _workers.trial_lines(t, job.num) is not None), [])
        done = job.state in _manifest.FINAL or not _manifest.held_by(Path(m.sweep_dir))
        where = "no warm worker's log in " + shlex.quote(str(Path(m.sweep_dir, ".logs"))) + "/workers*"
        mine, over = trial_lines(lines, job, where, args.follow and not done)
        new = mine[printed:] if printed else mine[-args.lines:]
        if new:
            print("\n".join(new), flush=True)
        printed = len(mine)
        if not args.follow or over or done:
            return 0
        time.sleep(min(args.interval, 0.5))


def local_log(m, job, args) -> int:
    """A local job's log file (SWEEP/.logs/N.log): its last lines; with -f, what it writes until the job ends."""
    from hydra_plugins.hydra_awsbatch_launcher import _manifest

    if job is not None and m.settings.get("workers"):
        return warm_local_log(m, job, args)

    if job is not None and args.node:
        node_job(m, job, args.node)  # a node the job had
    path = Path(m.sweep_dir) / ".logs" / (f"{args.job_num}.node{args.node}.log" if args.node else f"{args.job_num}.log")
    if job is None:
        raise SystemExit(f"hydra-awsbatch: sweep {m.sweep_id} has no job #{args.job_num}")
    if not path.is_file() and not args.follow:
        raise SystemExit(f"hydra-awsbatch: job #{args.job_num} of sweep {m.sweep_id} has written no log yet "
                         f"({shlex.quote(str(path))})")
    position = 0
    if path.is_file():
        data = path.read_bytes()
        lines = data.decode(errors="replace").splitlines()
        if lines:
            print("\n".join(lines[-args.lines:]), flush=True)
        elif not args.follow:
            print(f"(job #{args.job_num}'s log {shlex.quote(str(path))} is empty)", file=sys.stderr)
        position = len(data)
    while args.follow:
        done = job.state in _manifest.FINAL or not _manifest.held_by(Path(m.sweep_dir))
        if path.is_file():
            with open(path, "rb") as file:
                file.seek(position)
                chunk = file.read()
            cut = chunk.rfind(b"\n") + 1 if not done else len(chunk)  # a line being written waits for its end
            if cut:
                sys.stdout.write(chunk[:cut].decode(errors="replace"))
                sys.stdout.flush()
                position += cut
        if done:
            return 0
        time.sleep(min(args.interval, 0.5))
        m = load_manifest(args.sweep)
        job = m.job(args.job_num)
    return 0


def report(args) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _report

    load_manifest(args.sweep)  # says what is wrong with SWEEP, as every command does
    try:
        path, data = _report.write(args.sweep, args.output, args.price_table)
    except OSError as error:
        raise SystemExit(f"hydra-awsbatch report: {error}") from None
    counts = {}
    for trial in data.trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    spent = _report.cost(data, _report.price_table(args.price_table) if args.price_table else None)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB): sweep {data.sweep_id}, "
          + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs yet")
          + ("" if spent is None else f"; {spent.line()}"))
    return 0


def cancel(args) -> int:
    m, sweep = open_sweep(args.sweep)
    if m.launcher != "AwsBatchLauncher":
        raise SystemExit(f"hydra-awsbatch: sweep {m.sweep_id} ran with {m.launcher}; its jobs were local processes, "
                         "which stop with the launching process (Ctrl-C there stops them)")
    sweep.refresh()
    stopped = sweep.stop("cancelled with hydra-awsbatch cancel")
    print(f"terminated {stopped} unfinished jobs of sweep {m.sweep_id}")
    return 0


def attach(args) -> int:
    """Watch, then collect from the manifest and the results alone: the payload is never unpickled, and the
    app's own modules are found where the launcher found them (code_root)."""
    from hydra.core.utils import JobStatus

    m, sweep = open_sweep(args.sweep)
    code_root = m.settings.get("code_root")
    if code_root and Path(code_root).is_dir() and code_root not in sys.path:
        sys.path.insert(0, code_root)
    returns = sweep.wait(sweep.follow([job.num for job in m.jobs if job.job_id]))
    failed = sum(r.status != JobStatus.COMPLETED for r in returns)
    print(f"sweep {m.sweep_id}: {len(returns) - failed} jobs completed, {failed} failed; "
          f"job dirs in {shlex.quote(m.sweep_dir)}")
    unheard = [job for job in m.jobs if not job.job_id]  # staged, and its launcher stopped before they went out
    for line in missing(m, unheard, len(returns) - failed):
        print(line)
    return 1 if failed or unheard or m.unsubmitted() else 0


def missing(m, unheard: list, completed: int) -> list[str]:
    """What a sweep whose launcher stopped while it submitted lacks, and what runs it, true for this sweep: the
    thompson sweeper resumes it (what went out is followed, the rest submitted); any other sweeper (Hydra's basic,
    Optuna...) starts anew, the completed jobs included."""
    lines = []
    on_batch = m.launcher == "AwsBatchLauncher" and not m.settings.get("workers")
    if unheard and on_batch:
        lines.append(f"{len(unheard)} jobs were staged but not known to be submitted (the launcher stopped before "
                     "Batch answered; some may have gone out)")
    elif unheard:
        lines.append(f"{len(unheard)} jobs were staged but never started (local jobs and warm workers run only "
                     "while their launcher runs)")
    if m.unsubmitted():
        lines.append(m.unsubmitted())
    if not lines:
        return []
    if resumes(m):
        found = ", follows the jobs that went out on Batch" if unheard and on_batch else ""
        lines.append(f"Run the same command again: the thompson sweeper resumes this sweep{found} and runs only "
                     "the trials that did not end; the ended ones are kept")
        return lines
    twice = " (and those of them that went out twice)" if unheard and on_batch else ""
    lines.append(anew(m, completed, twice, unheard[0].overrides if unheard else None))
    return lines


def resumes(m) -> bool:
    """Whether running the sweep's command again resumes it: a thompson sweep (its state file is there)."""
    from hydra_plugins.hydra_awsbatch_launcher import _report, _storage

    try:
        return (Path(m.sweep_dir) / _report.STATE).is_file() or _storage.exists(
            _storage.join(m.staging.sweep, _report.STATE))
    except Exception:  # staging unreachable: the sweep dir said no
        return False


def anew(m, completed: int, twice: str = "", example: list | None = None) -> str:
    """What running a sweep of Hydra's sweepers (they do not resume) again does, and how to run only the rest."""
    total = max(m.announced, len(m.jobs))
    return (f"Running the same command again starts the sweep anew: all {total:,} jobs run again, the "
            f"{completed:,} completed ones included{twice}: Hydra's sweepers (but hydra/sweeper=thompson) do "
            "not resume a sweep. To run only the missing jobs, launch them by their overrides"
            + (f", e.g. {' '.join(example)}" if example else ""))


def local_cloud(args) -> int:
    from hydra_plugins.hydra_awsbatch_launcher import _local_cloud

    try:
        if args.action == "up":
            _local_cloud.up(args.stack)
            return 0
        return _local_cloud.status() if args.action == "status" else _local_cloud.down(args.images)
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
                                 ("logs", logs, "the tail of a job's log (CloudWatch, or the local file)"),
                                 ("report", report, "write the sweep's page (report.html), finished or not"),
                                 ("cancel", cancel, "terminate every unfinished job of the sweep"),
                                 ("attach", attach, "watch until done, then collect results and job dirs")]:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("sweep", help="the local sweep dir, or the manifest's URI")
        command.set_defaults(function=function)
        if name == "logs":
            command.add_argument("job_num", type=int, help="the job's number (#N in the sweep)")
            command.add_argument("-n", "--lines", type=positive, default=50, help="lines to show (default 50)")
            command.add_argument("--node", type=int, default=0, help="a multi-node trial's node (default 0: the "
                                 "main node)")
            command.add_argument("-f", "--follow", action="store_true", help="go on printing what the job writes "
                                                                            "until it ends")
            command.add_argument("--interval", type=float, default=5.0, help=argparse.SUPPRESS)
        if name == "report":
            command.add_argument("-o", "--output", help="where to write the page (default SWEEP/report.html)")
            command.add_argument("--price-table", help="a price table of prices.yaml's shape, for the cost estimate")
    cloud = commands.add_parser("local-cloud", help="the AWS path on this machine: moto's server + Docker",
                                description="up: start moto's server, deploy template.yaml, build the job image; "
                                            "status: what runs; down: stop what up started")
    cloud.add_argument("action", choices=["up", "status", "down"])
    cloud.add_argument("--stack", default="hydra-batch", help="stack name (default hydra-batch)")
    cloud.add_argument("--images", action="store_true", help="down: also remove the images up built")
    cloud.set_defaults(function=local_cloud)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # no INFO from botocore and the like
    logging.getLogger().setLevel(logging.WARNING)  # also where logging was configured before (main() in-process)
    log.setLevel(logging.INFO)
    return args.function(args)


if __name__ == "__main__":
    sys.exit(main())
