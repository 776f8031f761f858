"""What the user sees while a sweep runs: a live line of job counts per state on a terminal (plain log lines
when stdout is not one), and a table of every job at the end."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger("hydra_plugins.hydra_awsbatch_launcher")


def counts_line(states, order=()) -> str:
    """"2 RUNNING, 3 SUCCEEDED": the count of each state, in `order` (the life of a job)."""
    counts = Counter(states)
    known = [f"{counts[s]} {s}" for s in order if counts[s]]
    return ", ".join(known + [f"{n} {s}" for s, n in sorted(counts.items()) if s not in order])


class LiveText:
    """A few lines redrawn in place on a terminal (rich; live displays nest from rich 14.1 on), logged to
    `logger` each time they change elsewhere. The display starts with the first line shown, and again after
    close()."""

    def __init__(self, live: bool | None = None, logger: logging.Logger = log):
        self.live = sys.stdout.isatty() if live is None else live
        self.logger = logger
        self._last = None
        self._display = None

    def show(self, text: str, same_as_before: str | None = None) -> None:
        """`same_as_before`: the part of the text whose change is worth a log line (default: all of it)."""
        key = text if same_as_before is None else same_as_before
        if key == self._last:
            return
        self._last = key
        if not self.live:
            self.logger.info(text)
            return
        if self._display is None:
            from rich.live import Live

            self._display = Live("", refresh_per_second=4, transient=True)
            self._display.start()
        self._display.update(text)

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None
        self._last = None


class Progress(LiveText):
    def __init__(self, sweep_id: str, order=(), live: bool | None = None):
        super().__init__(live)
        self.sweep_id, self.order = sweep_id, order
        self._counts, self._reports_at = None, -math.inf

    SHOWN = 5  # running jobs whose last report the live line shows
    REPORTS_EVERY_S = 30.0  # without a terminal, the reports are logged at most this often between count changes

    def update(self, states, stuck: dict | None = None, reports: dict | None = None) -> None:
        """`states`: the Batch state of every job; `stuck`: reason -> count for jobs held in RUNNABLE; `reports`:
        job number -> its last report, for the jobs that run."""
        from hydra_plugins.hydra_awsbatch_launcher._metrics import summary

        line = f"sweep {self.sweep_id}: {counts_line(states, self.order)}"
        notes = [f"  {n} RUNNABLE: {reason}" for reason, n in (stuck or {}).items()]
        shown = [(num, report) for num, report in sorted((reports or {}).items()) if report]
        notes += [f"  #{num} {summary(report)}" for num, report in shown[:self.SHOWN]]
        if len(shown) > self.SHOWN:
            notes.append(f"  ... and {len(shown) - self.SHOWN} more running jobs that report")
        text = "\n".join([line, *notes])
        if self.live:
            self.show(text)
            return
        # in a log: the counts when they change; the running jobs' reports with them, or at most every 30 s
        counts, now = "\n".join([line, *notes[:len(stuck or {})]]), time.monotonic()
        due = bool(shown) and now - self._reports_at >= self.REPORTS_EVERY_S
        if counts != self._counts or due:
            self._counts, self._reports_at = counts, now if shown else self._reports_at
            self.logger.info(text)

    def close(self) -> None:
        super().close()
        self._counts, self._reports_at = None, -math.inf

    @staticmethod
    def row(job, sweep_dir: str) -> dict:
        """The summary table's row of a job's manifest record (_manifest.JobRecord)."""
        from hydra.core.utils import filter_overrides

        from hydra_plugins.hydra_awsbatch_launcher._report import sig

        return {"num": job.num, "overrides": " ".join(filter_overrides(job.overrides)), "state": job.state,
                "result": sig(job.result)[:60], "job_dir": str(Path(sweep_dir) / job.subdir),
                "duration": f"{job.stopped - job.started:.1f}s" if job.started and job.stopped else "-"}

    @staticmethod
    def summary(rows: list[dict], most: int = 40) -> None:
        """One row per job: number, overrides, state, duration, value or error, job dir. A sweep of more than
        `most` jobs: a line of counts per outcome, then the rows of those that did not succeed (at most `most`)."""
        headers = ("#", "overrides", "state", "duration", "result", "job dir")
        if len(rows) > most:
            outcomes = counts_line([r["state"] for r in rows], ("SUCCEEDED", "FAILED"))
            log.info(f"sweep summary: {len(rows)} jobs: {outcomes}; job dirs under {Path(rows[0]['job_dir']).parent}")
            rows = [r for r in rows if r["state"] != "SUCCEEDED"]
            if len(rows) > most:
                log.info(f"the first {most} of the {len(rows)} that did not succeed:")
            rows = rows[:most]
        cells = [(str(r["num"]), r["overrides"], r["state"], r["duration"], r["result"], r["job_dir"])
                 for r in rows]
        if not cells:
            return
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table

            table = Table(*headers, title="sweep summary")
            for row in cells:
                table.add_row(*row)
            Console().print(table)
            return
        for row in cells:
            log.info("\t#%s %s: %s in %s -> %s (%s)", *row)
