"""Progress of long work: a tqdm bar on a terminal, plain dated lines with rate and ETA in a log.

A bar redraws in place and so shows only on a terminal; a job whose stderr goes to a file (a log, CI, a
scheduler) gets one line every `interval` seconds instead, so a reader of the log sees that it runs, how
fast, and when it will end.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts done items out of `total`; shows a bar (terminal) or log lines (otherwise), or nothing.

    `enabled=None` decides by the job: shown when stderr is a terminal or the job has more than
    `min_total` items. Use as a context manager; `update(n)` after each step.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "sentences",
        *,
        enabled: bool | None = None,
        min_total: int = 0,
        interval: float = 30.0,
        stream=None,
        total_work: float | None = None,
    ):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.stream = stream or sys.stderr
        self.done = 0
        # Items can differ in cost (long sentences first): the ETA then follows the work (e.g. tokens) done.
        self.total_work, self.work = total_work, 0.0
        self.bar = None
        is_terminal = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = total > min_total if enabled is None else enabled
        self.lines = self.enabled and not is_terminal
        if self.enabled and is_terminal:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit=unit[:4], desc=desc, file=self.stream)
        self.start = self.last = time.perf_counter()

    def update(self, n: int, work: float = 0.0) -> None:
        self.done += n
        self.work += work
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total_work:
            work_rate = self.work / elapsed if elapsed > 0 else 0.0
            left = (self.total_work - self.work) / work_rate if work_rate > 0 else float("inf")
        else:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _duration(left) if left != float("inf") else "?"
        share = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{time.strftime('%H:%M:%S')} {self.desc}: {self.done}/{self.total} {self.unit} ({share:.0f}%), "
            f"{rate:.1f} {self.unit}/s, {_duration(elapsed)} elapsed, ETA {eta}",
            file=self.stream,
            flush=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif (
            self.lines and self.done and exc[0] is None and time.perf_counter() - self.start >= self.interval
        ):
            self._line()  # the closing line of a job long enough to have logged
