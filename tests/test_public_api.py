"""The package's public face, used as a user uses it: the errors a user catches, imported before Hydra's plugin
scan, are still the ones raised after it (the scan runs public modules a second time, making their classes
anew); and someone else's launcher that implements async_api.AsyncLauncher gets asynchronous sweeps."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

CATCHING_APP = """
    import os
    import sys

    from hydra_plugins.hydra_awsbatch_launcher import {error}  # before Hydra's plugin scan

    import hydra


    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        {task}
        return 1.0


    if __name__ == "__main__":
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises the error instead of printing it
        try:
            main()
        except {error} as caught:
            print("caught", type(caught).__name__)
            sys.exit(0)
        sys.exit(3)
"""
LOCAL = ["hydra/launcher=aws_batch_local", "hydra.sweep.dir=sweep"]


@pytest.mark.parametrize("error, task, args", [
    ("LaunchError", "pass", [*LOCAL, "hydra.launcher.code_root=/no/such/folder"]),
    ("StagingError", "pass", [*LOCAL, "hydra.launcher.code_max_mib=0.000001"]),
    ("RemoteJobError", "os._exit(3)", LOCAL),
    ("MissingModule", "import no_such_module_of_anyone", LOCAL),
    ("SweepError", "pass", ["hydra/sweeper=thompson", "hydra.sweeper.n_workers=0", "+y=interval(0, 1)"]),
])
def test_an_error_imported_before_the_plugin_scan_is_caught_after_it(tmp_path, app_env, error, task, args):
    source = textwrap.dedent(CATCHING_APP).format(error=error, task=task)
    if error == "SweepError":
        source = source.replace("from hydra_plugins.hydra_awsbatch_launcher import SweepError  #",
                                "from hydra_plugins.hydra_thompson_sweeper import SweepError  #")
    (tmp_path / "app.py").write_text(source)
    proc = subprocess.run([sys.executable, "app.py", "--multirun", "+x=1", *args], cwd=tmp_path, env=app_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and f"caught {error}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


CONTRACT_LAUNCHER = """
    import concurrent.futures
    import os

    from hydra._internal.core_plugins.basic_launcher import BasicLauncher


    def note(*words):
        with open(os.environ["CALLS"], "a") as calls:
            calls.write(" ".join(map(str, words)) + "\\n")


    class ContractLauncher(BasicLauncher):
        \"\"\"Someone else's launcher: Hydra's basic one, plus the six calls of async_api.AsyncLauncher.\"\"\"

        def launch_async(self, job_overrides, initial_job_idx):
            note("launch_async", len(job_overrides))
            futures = []
            for ret in self.launch(job_overrides, initial_job_idx):  # at once, in this process: done futures
                futures.append(concurrent.futures.Future())
                futures[-1].set_result(ret)
            return futures

        def resume_async(self, nums):
            return {}

        def job_times(self, num):
            return 1000.0 * (num + 1), 1000.0 * (num + 1) + 1.5

        def mirror(self, name, data):
            note("mirror", name, len(data))

        def stop(self, nums, reason):
            note("stop", *nums)

        def metrics(self, num, since=0):
            return []
"""
QUADRATIC = """
    import hydra


    @hydra.main(version_base=None, config_path=None)
    def main(cfg):
        return (cfg.x - 0.3) ** 2


    if __name__ == "__main__":
        main()
"""


def test_a_launcher_that_implements_the_contract_gets_asynchronous_sweeps(tmp_path, app_env):
    plugin = tmp_path / "hydra_plugins" / "contract_launcher"  # Hydra takes plugins from hydra_plugins alone
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    (plugin / "contract_launcher.py").write_text(textwrap.dedent(CONTRACT_LAUNCHER))
    (tmp_path / "app.py").write_text(textwrap.dedent(QUADRATIC))
    proc = subprocess.run(
        [sys.executable, "app.py", "--multirun", "hydra/sweeper=thompson", "+x=interval(0, 1)",
         "hydra.sweeper.n_trials=5", "hydra.sweeper.n_workers=2", "hydra.sweep.dir=sweep",
         "hydra.launcher._target_=hydra_plugins.contract_launcher.contract_launcher.ContractLauncher"],
        cwd=tmp_path, env=dict(app_env, CALLS=str(tmp_path / "calls.txt")), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "has no launch_async" not in proc.stdout + proc.stderr  # the asynchronous path, not batches
    calls = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert sum(int(c[1]) for c in calls if c[0] == "launch_async") == 5
    mirrored = [c for c in calls if c[0] == "mirror"]
    assert mirrored and {c[1] for c in mirrored} == {"thompson_state.json"}
    assert int(mirrored[-1][2]) == (tmp_path / "sweep/thompson_state.json").stat().st_size  # the final state
    with open(tmp_path / "sweep/trials.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["duration_s"] for r in rows] == ["1.5"] * 5  # the launcher's job times, not the sweeper's clock


def test_waiting_on_futures_hears_a_signal_that_another_thread_received():
    """Ctrl-C during a sweep: a plain concurrent.futures.wait sleeps through a signal that a thread other than
    the main one took (its handler runs only when the main thread wakes); async_api.wait raises it at once."""
    import concurrent.futures
    import signal
    import threading
    import time

    from hydra_plugins.hydra_awsbatch_launcher.async_api import wait

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    never = concurrent.futures.Future()
    timer = threading.Timer(30, never.set_result, [None])  # a backstop: the test ends even where it fails
    sender = threading.Timer(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGUSR1))
    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer.start()
    sender.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait([never])
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - start < 5
