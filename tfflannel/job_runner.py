"""Run a job graph: one process per job, one lock per job, waiting for inputs another process makes.

A job is anything with `name`, `slug`, `kind`, `args`, `target`, `needs`, `shard` and `command_line()`
(`reproduce.Job`). `run_cli_job` runs its command line as its own process (`python -m tfflannel ARGS`);
`Runner` runs one shard's jobs in order; `is_complete` tells from the files a job writes (never importing
TensorFlow) whether it is done, so a rerun skips it and a waiting job may start.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.predictions import ROLES
from tfflannel.utils import read_csv

STALE = "stale run"


def _run_complete(run_dir):
    """Whether a run's resume state says it finished (an unreadable state counts as not)."""
    from tfflannel.resume_state import read_fit_state

    try:
        state = read_fit_state(run_dir)
    except InputError:
        return False
    return state is not None and bool(state.complete)


def _predicted_roles(run_dir):
    """The partitions a run's predict-base finished (an unreadable provenance counts as none)."""
    from tfflannel.provenance import read_provenance

    try:
        provenance = read_provenance(run_dir)
    except InputError:
        return set()
    return set(provenance.done) if provenance is not None else set()


def cache_matches_manifest(cache):
    """Whether the segmentation cache `cache` is complete for the manifest next to it (file reads only).

    Complete means: `cache.json` (written last by `segment`) lists every shard `index.csv` names, and `index.csv`
    holds exactly the manifest's images (image_id and sha256) except those `errors.csv` lists. A cache of an
    older manifest, or one another shard is still rebuilding, is not complete.

    Args:
        cache: str or Path. WORKDIR/cache, next to WORKDIR/manifest.csv.

    Returns:
        bool.
    """
    cache = Path(cache)
    manifest_path = cache.parent / "manifest.csv"
    from tfflannel.segmentation.cache_record import read_cache_record

    try:
        recorded = read_cache_record(cache.parent)
    except InputError:
        return False
    if recorded is None or not recorded.shards or not (cache / "index.csv").is_file() or not manifest_path.is_file():
        return False
    try:
        index = read_csv(cache / "index.csv")
        failed = {r["image_id"] for r in read_csv(cache / "errors.csv")} if (cache / "errors.csv").is_file() else set()
        wanted = {r["image_id"]: r["sha256"] for r in read_csv(manifest_path) if r["image_id"] not in failed}
        have = {r["image_id"]: r["sha256"] for r in index}
        shards = {r["shard"] for r in index}
    except (OSError, KeyError, ValueError):
        return False
    return have == wanted and shards <= set(recorded.shards)


def is_complete(job):
    """Whether the job's outputs exist and say they are complete (file reads only; no TensorFlow).

    For the segmentation cache this includes that it matches the current manifest (`cache_matches_manifest`),
    so other shards wait for a rebuild instead of training on a stale cache. For the other jobs the commands
    themselves decide whether complete outputs are still up to date; this only tells a waiting job that its
    inputs are there.

    Args:
        job: Job.

    Returns:
        bool.
    """
    target = Path(job.target)
    if job.kind == "segment":
        return cache_matches_manifest(target)
    if job.kind == "train":
        return _run_complete(target)
    if job.kind == "predict":
        return set(ROLES) <= _predicted_roles(target)
    if job.kind == "ensemble":
        return (_run_complete(target)
                and (target / "learner_weights.json").is_file() and (target / "predictions" / "test.csv").is_file())
    if job.kind == "audit":
        return (target / "audit.json").is_file()
    return (target / "table3.csv").is_file()


@contextlib.contextmanager
def job_lock(path):
    """An exclusive `fcntl.flock` on `path`, taken without waiting.

    Yields:
        bool. True when this process holds the lock; False when another process does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_cli_job(job, log_path):
    """Run one job's command line as its own process (`python -m tfflannel ARGS`), its output appended to `log_path`.

    A fresh process per job: no job inherits another's global state (precision policy, op determinism,
    Keras session, a strategy that can be created once per process), and nothing has to be reset by hand.

    Args:
        job: Job.
        log_path: Path. The job's log file (appended to).

    Returns:
        str or None. None on success, else the error (the command's `Error:` line, or a traceback's last line).
        For a run made with other settings, the last line starts with `stale run` and gives the exact command
        that starts the job over.
    """
    import subprocess
    import sys

    from tfflannel.resume import STALE_HINT

    with open(log_path, "a") as log:
        log.write(f"$ {job.command_line()}\n")
        log.flush()
        code = subprocess.run([sys.executable, "-m", "tfflannel", *job.args], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False).returncode
    if code == 0:
        return None
    lines = [line for line in Path(log_path).read_text(errors="replace").splitlines() if line.strip()]
    errors = [line[len("Error: "):] for line in lines if line.startswith("Error: ")]
    message = errors[-1] if errors else (lines[-1] if lines else f"exit status {code}")
    if STALE_HINT in message:
        return (f"{message}\n{STALE}: if the change is intended, start it over with "
                f"`{job.command_line(main_program())} --force`, then rerun reproduce")
    return message


class Runner:
    """Runs this shard's jobs in order, waiting for inputs made elsewhere; one console line per job.

    Args:
        jobs: list of Job. From `build_jobs`.
        out: str or Path. The runs directory (locks in OUT/.jobs, logs in OUT/logs).
        shard: (I, N). This process's shard. Defaults to `(1, 1)`.
        wait: float. Seconds to wait for inputs that another process makes. Defaults to one day.
        poll: float. Seconds between checks while waiting. Defaults to `5`.
        execute: callable(Job, Path) -> str or None. Runs one job. Defaults to `run_cli_job` (a process per job).
        echo: callable(str). Where progress lines go. Defaults to `print`.

    A job that fails, or cannot start because an input failed or never came, leaves `OUT/.jobs/<job>.failed`, so a
    shard waiting for it stops waiting; the marker goes when the job succeeds. `stop` (a `threading.Event`) ends
    `run` before the next job and ends any wait.
    """

    def __init__(self, jobs, out, shard=(1, 1), wait=86400.0, poll=5.0, execute=run_cli_job, echo=print):
        self.jobs, self.out, self.shard = jobs, Path(out), shard
        self.wait, self.poll, self.execute, self.echo = wait, poll, execute, echo
        self.by_name = {j.name: j for j in jobs}
        self.mine = [j for j in jobs if j.shard is None or j.shard == shard[0] - 1]
        self.states = {}
        self.stop = threading.Event()

    def _slug(self, job):
        """The job's lock, marker and log name: each shard's part of the segment job is a job of its own."""
        part, parts = self.shard
        return f"{job.slug}-{part}of{parts}" if job.kind == "segment" and parts > 1 else job.slug

    def _marker(self, job):
        return self.out / ".jobs" / f"{self._slug(job)}.failed"

    def _failed_elsewhere(self, job):
        """The job (the segment job: any shard's part) failed in another process, and nobody runs it again now."""
        parts = self.shard[1]
        slugs = ([f"{job.slug}-{p}of{parts}" for p in range(1, parts + 1)] if job.kind == "segment" and parts > 1
                 else [self._slug(job)])
        for slug in slugs:
            if (self.out / ".jobs" / f"{slug}.failed").exists():
                with job_lock(self.out / ".jobs" / f"{slug}.lock") as free:
                    if free:
                        return True
        return False

    def _wait_for(self, names):
        """None when every named job is complete, else the reason why not (failed, or still missing)."""
        deadline = time.monotonic() + self.wait
        while True:
            if self.stop.is_set():
                return "stopped"
            pending = [n for n in names if not is_complete(self.by_name[n])]
            if not pending:
                return None
            failed = [n for n in pending if self.states.get(n) in ("failed", "blocked", "missing")
                      or (n not in self.states and self._failed_elsewhere(self.by_name[n]))]
            if failed:
                return f"input failed: {', '.join(failed)}"
            waiting_on_self = [n for n in pending if self.states.get(n) == "done"]   # done, yet not complete
            if waiting_on_self or time.monotonic() >= deadline:
                return f"missing input: {', '.join(pending)}"
            time.sleep(self.poll)

    def run(self):
        """Run the shard's jobs.

        Returns:
            dict. {job name: state}, state one of `done`, `complete` (nothing to do), `failed`, `blocked`
            (an input failed), `missing` (an input never came), `busy` (another process holds its lock).
        """
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        for index, job in enumerate(self.mine, 1):
            if self.stop.is_set():
                break
            started = time.monotonic()
            state, detail = self._run_one(job)
            self.states[job.name] = state
            line = f"[{index}/{len(self.mine)}] {state:<8} {time.monotonic() - started:8.1f} s  {job.name}"
            self.echo(line + (f"  ({detail})" if detail else ""))
        return dict(self.states)

    def _run_one(self, job):
        reason = self._wait_for([n for n in job.needs if job.kind != "segment"])
        if reason == "stopped":
            return "stopped", ""
        if reason:
            self._marker(job).write_text(reason + "\n")     # shards waiting for this job stop waiting too
            return ("blocked" if reason.startswith("input failed") else "missing"), reason
        with job_lock(self.out / ".jobs" / f"{self._slug(job)}.lock") as mine:
            if not mine:
                return "busy", "another process runs it"
            was_complete = is_complete(job) and job.shard is not None
            error = self.execute(job, self.out / "logs" / f"{self._slug(job)}.log")
            marker = self._marker(job)
            if error:
                marker.write_text(error + "\n")
                last = error.splitlines()[-1]
                last = last if last.startswith(STALE) else last[:200]     # the command to rerun is never cut
                return "failed", f"{last}; log: {self.out / 'logs' / (self._slug(job) + '.log')}"
            marker.unlink(missing_ok=True)
        if job.kind == "segment":
            reason = self._wait_for(["segment"])      # the other shards' parts of the cache
            if reason:
                return "missing", "other shards' parts of the segmentation cache"
        return ("complete" if was_complete else "done"), ""


def main_program():
    """How the dry-run lines start: `tfflannel` (the installed command; `python cli.py` in a checkout is the same)."""
    return "tfflannel"
