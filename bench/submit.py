"""AWS calls and wall time of submitting a sweep, against one moto server:

  (a) our launcher: `python app.py -m +x=range(N) hydra/launcher=aws_batch ... wait=false`
      (compose, stage the code package and payload, validate, one SubmitJob per chunk: 16 jobs, then 32, 64, ...),
      and the time until its first SubmitJob returned;
  (b) the original sample's way (invoke_jobs.py): a loop of one SubmitJob per config;
  (c) Hydra's basic launcher running the same trivial jobs in-process, the baseline of composing.

Both run as a fresh process, as a user runs them, in the same run. Also counts the watcher's calls per
poll round for 1,000 children against a naive watcher that describes every child (100 ids a call).

    python bench/submit.py [--sizes 10 100 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import trivial_app  # noqa: E402
from tests.moto_batch import create_batch_resources, moto_api, start_moto_server  # noqa: E402

LOOP = textwrap.dedent("""
    import sys, boto3
    batch = boto3.client("batch")
    for i in range(int(sys.argv[1])):
        batch.submit_job(jobName=f"job-{i}", jobQueue=sys.argv[2], jobDefinition=sys.argv[3],
                         containerOverrides={"command": ["python", "train.py", f"+x={i}"]})
""")


def recorded_calls(endpoint: str, run) -> tuple[float, Counter]:
    """Wall time of `run()` and the AWS calls the server saw meanwhile, by service."""
    moto_api(endpoint, "recorder/reset-recording")
    moto_api(endpoint, "recorder/start-recording")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    moto_api(endpoint, "recorder/stop-recording")
    text = Path(os.environ["MOTO_RECORDER_FILEPATH"]).read_text()
    calls = Counter()
    for line in text.splitlines():
        entry = json.loads(line)
        auth = entry["headers"].get("Authorization", "")
        calls[auth.split("/")[3] if auth.count("/") >= 3 else "?"] += 1  # the credential scope names the service
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    os.environ["MOTO_RECORDER_FILEPATH"] = str(workdir / "recording.jsonl")
    server, endpoint = start_moto_server()
    resources = create_batch_resources(endpoint)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(ROOT))
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    (workdir / "app.py").write_text(trivial_app.SOURCE)
    (workdir / "loop.py").write_text(LOOP)

    rows = []
    for n in args.sizes:
        first_submit: list[float] = []

        def ours(n=n, *extra, first_submit=first_submit):
            """The sweep as a user launches it; the seconds until its first SubmitJob returned (its first
            "Submitted ..." line) go into first_submit."""
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "app.py", "-m", f"+x=range(0,{n})", "hydra/launcher=aws_batch",
                 f"hydra.launcher.job_queue={resources['queue']}",
                 f"hydra.launcher.job_definition={resources['job_definition']}",
                 f"hydra.launcher.staging_uri={resources['staging']}", "hydra.launcher.wait=false",
                 f"hydra.sweep.dir=sweeps/{n}{'-dry' if extra else ''}", *extra], cwd=workdir,
                env=dict(env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                if "] Submitted " in line and not extra and not first_submit:
                    first_submit.append(time.perf_counter() - start)
            if proc.wait() != 0:
                raise SystemExit(f"the sweep of {n} failed")

        def compose_only(n=n):  # a dry run: Hydra composes every config (twice: its sweeper and us), no upload
            ours(n, "hydra.launcher.dry_run=true")

        def basic(n=n):  # Hydra's basic launcher: the sweeper composes each config, the launcher again, then runs it
            subprocess.run([sys.executable, "app.py", "-m", f"+x=range(0,{n})", f"hydra.sweep.dir=basic/{n}"],
                           cwd=workdir, env=env, check=True, capture_output=True)

        def loop(n=n):
            subprocess.run([sys.executable, "loop.py", str(n), resources["queue"], resources["job_definition"]],
                           cwd=workdir, env=env, check=True, capture_output=True)

        our_s, our_calls = recorded_calls(endpoint, ours)
        dry_s, _ = recorded_calls(endpoint, compose_only)
        loop_s, loop_calls = recorded_calls(endpoint, loop)
        start = time.perf_counter()
        basic()
        basic_s = time.perf_counter() - start
        rows.append((n, sum(our_calls.values()), dict(our_calls), first_submit[0], our_s, dry_s,
                     sum(loop_calls.values()), loop_s, basic_s))

    print(f"{'configs':>8} | {'our calls':>9} {'(by service)':<24} {'1st submit s':>12} {'our s':>7} {'dry run s':>9} "
          f"| {'loop calls':>10} {'loop s':>7} | {'basic s':>7} | {'calls ratio':>11} {'our / basic':>11}")
    for n, calls, by_service, first_s, seconds, dry_s, loop_calls, loop_s, basic_s in rows:
        print(f"{n:>8} | {calls:>9} {json.dumps(by_service):<24} {first_s:>12.2f} {seconds:>7.2f} {dry_s:>9.2f} | "
              f"{loop_calls:>10} {loop_s:>7.2f} | {basic_s:>7.2f} | {calls / loop_calls:>11.3f} "
              f"{seconds / basic_s:>11.2f}")
    print("1st submit s: from launch until the first SubmitJob returned (goal for 1,000 configs: within 5 s).\n"
          "dry run s: the same command with dry_run=true (composes and checks every config, pickles the batch; "
          "nothing is uploaded or submitted).\nbasic s: Hydra's basic launcher running the same trivial jobs "
          "in-process, measured in the same run.")

    # The watcher for 1,000 children: our calls per round against describing every child.
    from hydra_plugins.hydra_awsbatch_launcher import _batch

    api = _batch.BatchApi()
    (first, size, request), = _batch.SubmitSpec(
        "watch", resources["queue"], resources["job_definition"]).requests("s3://b/p.pkl", "s", 0, 1000)
    (job_id,) = api.submit([request])
    executor = _batch.BatchExecutor(api, poll_interval_s=0.01)
    executor.add([_batch.Array(job_id, first, size)])
    calls = []
    api.batch.meta.events.register("before-call.batch.*", lambda model, **kw: calls.append(model.name))
    per_round = []
    for _ in range(3):
        before = len(calls)
        executor.poll()
        per_round.append(len(calls) - before)
    print(f"\nwatcher, 1,000 children: calls per round {per_round} (first round lists the children that changed); "
          f"a watcher describing every child: {math.ceil(1000 / 100)} per round; bound ceil(N/100)+2 = 12")
    server.stop()


if __name__ == "__main__":
    main()
