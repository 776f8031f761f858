"""Wall time of an 8-job trivial sweep through the local cloud (moto's Batch running each job in a container
of our image), and of the same sweep on 2 warm workers (2 containers), against 8 bare `docker run`s of the same
image doing the same work, started together.

    python bench/e2e.py [--jobs 8] [--workers 2]

Needs a Docker engine (see the README's local cloud); builds the image if needed, in the same run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import trivial_app  # noqa: E402
from hydra_plugins.hydra_awsbatch_launcher import _local_cloud  # noqa: E402

STACK = "bench-batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="warm workers of the second sweep")
    args = parser.parse_args()
    problem = _local_cloud.docker_answers()
    if problem:
        raise SystemExit(problem)
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    pid, endpoint = _local_cloud.start_moto(workdir)
    try:
        outputs = _local_cloud.deploy_stack(endpoint, STACK)
        image = outputs["RepositoryUri"] + ":latest"
        _local_cloud.build_image(image, _local_cloud.base_image())
        (workdir / "app.py").write_text(trivial_app.SOURCE)
        env = dict(os.environ, **_local_cloud.environment(endpoint))

        sweeps = {}
        warm = [f"hydra.launcher.workers={args.workers}"]
        for name, extra in (("local cloud sweep, a job per trial", []),
                            (f"local cloud sweep, {args.workers} warm workers", warm)):
            start = time.perf_counter()
            subprocess.run([sys.executable, "app.py", "-m", f"+x=range(0,{args.jobs})", "hydra/launcher=aws_batch",
                            f"hydra.launcher.stack_name={STACK}", "hydra.launcher.poll_interval_s=0.5",
                            f"hydra.sweep.dir=sweep{len(sweeps)}", *extra], cwd=workdir, env=env, check=True,
                           capture_output=True)
            sweeps[name] = time.perf_counter() - start

        # The same work without the launcher: each container runs the task's body through the same entry point.
        start = time.perf_counter()
        runs = [subprocess.Popen(["docker", "run", "--rm", "--network", "host", image, "python", "-c",
                                  f"print({i} * 2)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for i in range(args.jobs)]
        assert all(run.wait() == 0 for run in runs)
        bare_s = time.perf_counter() - start
    finally:
        os.kill(pid, signal.SIGTERM)
    print(f"{args.jobs} trivial jobs, one run")
    print(f"{'path':<46}{'wall s':>8}{'x bare':>8}")
    for name, seconds in sweeps.items():
        print(f"{name:<46}{seconds:>8.2f}{seconds / bare_s:>8.2f}")
    print(f"{'bare docker run x' + str(args.jobs) + ' (concurrent)':<46}{bare_s:>8.2f}{1:>8.2f}")


if __name__ == "__main__":
    main()
