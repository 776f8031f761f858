"""Sweeps of thousands of configs on aws_batch_local, as a user runs them: the first jobs run while the rest are
still being staged, each job reads its own config and what all jobs share, and Ctrl-C on a sweep still being
submitted stops it promptly, with every job accounted for."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from hydra_plugins.hydra_awsbatch_launcher import _storage, _wire
from hydra_plugins.hydra_awsbatch_launcher._compose import FIRST_CHUNK
from tests.conftest import cli, wait_for
from tests.test_faults import workers_of

pytestmark = pytest.mark.integration
APP = '''
import os
import time

import hydra


@hydra.main(version_base=None, config_path=None)
def main(cfg):
    with open(os.path.join(os.environ["MARKS"], str(cfg.x)), "w") as mark:
        mark.write(str(time.time()))
    time.sleep(0.5)
    return cfg.x * 2


if __name__ == "__main__":
    main()
'''
CONFIGS = 3000


def test_a_large_sweep_runs_while_it_is_staged_and_ctrl_c_stops_it_with_every_job_accounted_for(tmp_path, app_env):
    (tmp_path / "app.py").write_text(APP)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "app.py", "-m", f"+x=range(0,{CONFIGS})", "hydra/launcher=aws_batch_local",
                             "hydra.launcher.max_parallel=2", "hydra.sweep.dir=sweep"], cwd=tmp_path,
                            env=dict(app_env, MARKS=str(marks)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    staged = tmp_path / "sweep/.staging/sweeps"  # Ctrl-C once jobs ran and three chunks are staged, whichever is
    try:
        wait_for(lambda: (len(list(marks.iterdir())) >= 4 and len(list(staged.glob("*/payload-*.pkl"))) >= 3)  # last
                 or proc.poll() is not None, timeout=180)  # (a busy CPU may stage slower than 4 trivial jobs run)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)  # the old launcher took minutes: it rewrote the manifest per job
    finally:  # a failed wait leaves no sweep of 3,000 jobs running behind the tests that follow
        proc.kill()
    assert proc.returncode != 0
    assert "Interrupted: stopping the unfinished jobs" in output and "Stopped " in output, output[-3000:]
    assert not workers_of(tmp_path)

    sweep = tmp_path / "sweep"
    manifest = json.loads((sweep / "manifest.json").read_text())
    jobs = manifest["jobs"]
    assert manifest["announced"] == CONFIGS
    assert {job["state"] for job in jobs} <= {"SUCCEEDED", "FAILED", "STAGED"}  # every job accounted for
    unsent = [job for job in jobs if job["state"] == "STAGED"]  # staged when Ctrl-C came, never submitted
    assert not any(job["job_id"] or job["started"] for job in unsent)
    ran = {int(mark.name) for mark in marks.iterdir()}
    succeeded = {job["num"] for job in jobs if job["state"] == "SUCCEEDED"}
    assert succeeded <= ran and len(succeeded) >= 2
    assert all(job["result"] == repr(job["num"] * 2) for job in jobs if job["state"] == "SUCCEEDED")
    stopped = [job for job in jobs if job["state"] == "FAILED"]
    assert stopped and all(job["reason"] == "interrupted by the user" for job in stopped)

    # The sweep went out in chunks of 16, 32, 64, ...: the first jobs ran before the last chunk was staged. Each
    # chunk's payload holds one base config (every job of this sweep has the same shape) and a recipe per job.
    payloads = sorted(sweep.glob(".staging/sweeps/*/payload-*.pkl"), key=lambda p: int(p.stem.split("-")[1]))
    firsts = [int(p.stem.split("-")[1]) for p in payloads]
    assert firsts[:3] == [0, FIRST_CHUNK, 3 * FIRST_CHUNK]
    assert min(float(mark.read_text()) for mark in marks.iterdir()) < payloads[-1].stat().st_mtime or \
        len(jobs) < CONFIGS
    sizes = []
    for path in payloads:
        payload = _wire.load_payload(_storage.read_bytes(str(path)))
        assert len(payload.bases) == 1
        sizes.append((len(payload.recipes), path.stat().st_size))
    (few, small), (many, large) = sizes[0], sizes[-1]
    assert (large - small) / (many - few) < 200  # bytes per job more: a recipe, not a config
    status = cli("status", str(sweep), env=app_env)
    assert status.returncode == 0
    if len(jobs) < CONFIGS:  # Ctrl-C came while it was still submitting
        assert f"{CONFIGS - len(jobs):,} of the sweep's {CONFIGS:,} jobs were never submitted" in status.stdout
    attach = cli("attach", str(sweep), env=app_env)  # collects what there is, and says what is missing
    assert f"{len(succeeded)} jobs completed, {len(stopped)} failed" in attach.stdout, attach.stdout + attach.stderr
    if unsent:
        assert f"{len(unsent)} jobs were staged but never started" in attach.stdout, attach.stdout


def test_ctrl_c_that_lands_inside_omegaconf_while_composing_still_reads_as_ctrl_c():
    """Seen once in the Ctrl-C test above: the KeyboardInterrupt landed while OmegaConf was setting a job's
    `hydra.overrides.task`, OmegaConf's cleanup of the half-set list raised AttributeError instead, and the sweep
    left without "Interrupted: stopping the unfinished jobs". Here the interrupt lands at that very point."""
    from omegaconf import OmegaConf

    from hydra_plugins.hydra_awsbatch_launcher._compose import Recipe, composed
    from hydra_plugins.hydra_awsbatch_launcher._sweep import interrupts_kept

    def compose_interrupted():
        config = OmegaConf.create({"hydra": {"overrides": {"task": []}, "job": {
            "override_dirname": "", "config": {"override_dirname": {"kv_sep": "=", "item_sep": ",",
                                                                    "exclude_keys": []}}}}})
        OmegaConf.set_readonly(config.hydra, True)  # as Hydra leaves it

        def ctrl_c_in_omegaconf(frame, event, arg):  # Ctrl-C as the list's first item is about to be set
            caller = frame.f_back
            if (event == "call" and frame.f_code.co_name == "_wrap_value_and_set"
                    and caller.f_code.co_name == "_set_item_impl" and caller.f_back.f_code.co_name == "append"):
                raise KeyboardInterrupt
            return None

        tracer = sys.gettrace()  # a debugger's or coverage's, put back after
        sys.settrace(ctrl_c_in_omegaconf)
        try:
            composed(config, Recipe(0, 0, (), ("x=1",)), ([], []))
        finally:
            sys.settrace(tracer)

    with pytest.raises(AttributeError) as unwound:  # what OmegaConf makes of it
        compose_interrupted()
    assert any(isinstance(error, KeyboardInterrupt) for error in _contexts(unwound.value))
    with pytest.raises(KeyboardInterrupt), interrupts_kept():  # what the launcher's launch_async raises
        compose_interrupted()
    with pytest.raises(ValueError), interrupts_kept():  # other errors pass as they are
        raise ValueError("not an interrupt")
    original = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as plain, interrupts_kept():  # a plain interrupt too
        raise original
    assert plain.value is original
    try:  # an error in a handler of an earlier interrupt is that error: the interrupt was handled
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(ValueError), interrupts_kept():
            raise ValueError("a bad override, found while stopping")  # noqa: B904 (its context is the point)


def _contexts(error):
    while error is not None:
        yield error
        error = error.__context__
