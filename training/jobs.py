"""One-click training jobs: start DPO / KTO / GRPO / reward-model training as a separate process, watch
its progress, cancel it, and register the bundle it produced.

    jm = JobManager(data_dir)
    job = jm.start("dpo", bundle="assets/earl-nano", epochs=3)      # options = the trainer's config fields
    job.status()   # {"state": "running", "step": 12, "steps": 40, "loss": ..., "reward": ..., "eta_s": ..., ...}
    job.cancel()
    jm.register(job)   # -> registry key of <data>/bundles/<name>/ (the studio's model picker lists it)

Each job lives in ``<data>/jobs/<id>/``: ``job.json`` (what was started), ``log.txt`` (stdout + stderr),
``progress.json`` (written atomically by the trainer: step, loss, reward, eta, history) and ``run/``
(checkpoints, TensorBoard). Jobs run in their own process group (``start_new_session``), so the studio
stays responsive, a cancel stops the trainer and its children, and a job survives a studio restart
(its status is read back from the files and the pid).

A job that stopped before finishing (killed, out of disk space, the machine restarted) can be resumed
with ``jm.resume(job_id)``: the same command in the same folder, which continues from the last
checkpoint in ``run/checkpoint`` (saved atomically, so a kill or a full disk leaves the previous one
usable). A job that died on a full disk says so, with the folder and the space needed, even when the
trainer could no longer write its own message (the watcher measures the free space itself).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from engine.diskspace import folder_size, free_bytes, human
from training.common import config_argv, read_progress

REPO = Path(__file__).resolve().parent.parent
METHODS = ("dpo", "kto", "grpo", "reward_model")


def config_class(method: str) -> type:
    """The config dataclass of ``method``'s trainer: a job's options are its fields."""
    if method in ("dpo", "kto"):
        from training.preference import PrefConfig

        return PrefConfig
    if method == "grpo":
        from training.grpo import GRPOConfig

        return GRPOConfig
    from training.reward_model import RewardModelConfig

    return RewardModelConfig


def config_fields(method: str) -> set[str]:
    """The option names a job of ``method`` takes."""
    return {f.name for f in dataclasses.fields(config_class(method))}


def build_command(method: str, job_dir: Path, data_dir: Path, bundle: str, name: str,
                  options: dict[str, Any]) -> list[str]:
    """The trainer's command line; unknown options are refused with the list of known ones."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    fields = config_fields(method)
    bad = [k for k in options if k not in fields]
    if bad:
        raise ValueError(f"unknown {method} options {bad}; known: {sorted(fields)}")
    progress = str(job_dir / "progress.json")
    if method == "reward_model":
        module = "training.reward_model"
        fixed = {"data": str(data_dir), "bundle": bundle, "out": str(data_dir / "reward_models" / name),
                 "progress": progress}
    else:
        module = "training.grpo" if method == "grpo" else "training.preference"
        fixed = {"bundle": bundle, "data": str(data_dir), "name": name, "out": str(job_dir / "run"),
                 "progress": progress}
        if method != "grpo":
            fixed["method"] = method
    rest = {k: v for k, v in options.items() if k not in ("bundle", "data", "name", "out", "progress", "method")}
    return ["-m", module, *config_argv(config_class(method), {**fixed, **rest})]


def _exited(pid: int) -> bool:
    """Whether ``pid`` is a zombie: exited, but not reaped by a parent that is gone (or is another
    process). A process whose main thread shows Z while its other threads still exit (right after a
    SIGTERM) is not one yet: that state lasts until the last thread is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]  # after "(comm)"
        if state != "Z":
            return False
        threads = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Threads:")]
        return not threads or int(threads[0].split()[1]) <= 1
    except (OSError, IndexError, ValueError):
        return False


@dataclasses.dataclass
class Job:
    id: str
    method: str
    dir: Path
    pid: int
    cmd: list[str]
    name: str
    bundle: str
    started: float
    _proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    @property
    def progress_path(self) -> Path:
        return self.dir / "progress.json"

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _exited(self.pid)

    def status(self) -> dict[str, Any]:
        """Progress plus the process state: starting / running / done / failed / cancelled."""
        p = read_progress(self.progress_path) or {"state": "starting", "step": 0, "steps": None, "history": []}
        p = dict(p)
        alive = self.alive()
        p["alive"] = alive
        if (self.dir / "cancelled").exists():
            p["state"] = "cancelled"
        elif not alive and p.get("state") in ("starting", "running"):
            rc = self._proc.returncode if self._proc is not None else None
            p["state"] = "failed"
            p["message"] = f"the training process exited (code {rc}) before finishing; see the log:\n" + self.log_tail(15)
        if p["state"] == "failed":
            full = self.disk_full_message(p.get("step"))
            if full:
                p["message"] = full + ("\n\n" + p["message"] if p.get("message") else "")
        p.update(id=self.id, method=self.method, name=self.name)
        return p

    def checkpoint_step(self) -> int | None:
        """The step of the last complete checkpoint (what a resume continues from), None if there is none."""
        import torch

        for ckpt in (self.dir / "run" / "checkpoint", self.dir / "run" / "checkpoint.old"):
            if (ckpt / "state.pt").is_file():
                try:
                    return int(torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")["step"])
                except Exception:  # a damaged file: not a checkpoint to resume from
                    continue
        return None

    def disk_full_message(self, step: int | None = None) -> str:
        """When the disk holding the job is too full for another checkpoint: what happened, what is kept and
        what to do; else "". Measured here, since a trainer on a full disk cannot write its own message."""
        # the next checkpoint is written beside the last one before replacing it: its size again, plus slack
        need = max(folder_size(self.dir / "run" / "checkpoint"), 1 << 20) + (1 << 20)
        free = free_bytes(self.dir)
        if free is None or free >= need:
            return ""
        kept = self.checkpoint_step()
        at = f" at step {step}" if step else ""
        keep = (f"Its last checkpoint (step {kept}, in {self.dir / 'run' / 'checkpoint'}) is kept and usable."
                if kept is not None else "It had not saved a checkpoint yet.")
        return (f"The disk holding {self.dir} is full: the job stopped{at}; it needs about {human(need)} free for "
                f"its next checkpoint, and {human(free)} is free. {keep} Free some space, then press Resume "
                "(or JobManager.resume) to continue from the checkpoint.")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def cancel(self, timeout_s: float = 10.0) -> bool:
        """Stop the job (SIGTERM to its process group, SIGKILL after ``timeout_s``). False if it had ended."""
        if not self.alive():
            return False
        (self.dir / "cancelled").write_text(str(time.time()))
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        self._wait_gone(timeout_s)
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self._wait_gone(5.0)
        return True

    def _wait_gone(self, timeout_s: float) -> None:
        # alive() reaps our own child (Popen.poll) and sees another manager's through /proc
        deadline = time.time() + timeout_s
        while time.time() < deadline and self.alive():
            time.sleep(0.05)

    def bundle_path(self) -> Path | None:
        p = read_progress(self.progress_path) or {}
        return Path(p["bundle"]) if p.get("state") == "done" and p.get("bundle") else None


class JobManager:
    """Jobs under ``<data_dir>/jobs``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen] = {}

    def start(self, method: str, bundle: str, name: str | None = None, threads: int = 1, **options: Any) -> Job:
        """Start a training job in its own process; returns at once."""
        if not (Path(bundle) / "bundle.json").is_file():
            raise ValueError(f"{bundle} is not a bundle folder (no bundle.json)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        job_id = f"{stamp}-{method}-{uuid.uuid4().hex[:6]}"
        if name is None:
            base = json.loads((Path(bundle) / "bundle.json").read_text()).get("name", "model")
            name = f"{base}-{method}-{stamp}"
        if "threads" in config_fields(method) and "threads" not in options:
            options["threads"] = threads  # the trainer's torch threads, as many as OMP_NUM_THREADS below
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True)
        cmd = [sys.executable, *build_command(method, job_dir, self.data_dir, str(bundle), name, options)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        log = open(job_dir / "log.txt", "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        job = Job(job_id, method, job_dir, proc.pid, cmd, name, str(bundle), time.time(), proc)
        (job_dir / "job.json").write_text(json.dumps({"id": job_id, "method": method, "pid": proc.pid, "cmd": cmd,
                                                      "name": name, "bundle": str(bundle), "started": job.started,
                                                      "options": {k: str(v) for k, v in options.items()}}, indent=1))
        self._procs[job_id] = proc
        return job

    def resume(self, job_id: str) -> Job:
        """Run a job that stopped before finishing again, in its folder: it continues from its last
        checkpoint (from the start when it has none). Refused while it runs or once it is done."""
        job = self.get(job_id)
        if job.alive():
            raise ValueError(f"job {job_id} is still running")
        if (read_progress(job.progress_path) or {}).get("state") == "done":
            raise ValueError(f"job {job_id} has finished; there is nothing to resume")
        (job.dir / "cancelled").unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        log = open(job.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            log.write(f"\n--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(job.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        meta = json.loads((job.dir / "job.json").read_text())
        meta.update(pid=proc.pid, resumed=[*meta.get("resumed", []), time.time()])
        tmp = job.dir / "job.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, job.dir / "job.json")
        self._procs[job_id] = proc
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        f = self.jobs_dir / job_id / "job.json"
        if not f.is_file():
            raise ValueError(f"no job {job_id!r} in {self.jobs_dir}")
        d = json.loads(f.read_text())
        return Job(d["id"], d["method"], f.parent, d["pid"], d["cmd"], d["name"], d["bundle"], d["started"],
                   self._procs.get(job_id))

    def list(self) -> list[Job]:
        """All jobs, newest first."""
        ids = sorted((p.parent.name for p in self.jobs_dir.glob("*/job.json")), reverse=True)
        return [self.get(i) for i in ids]

    def register(self, job: Job, registry: Any = None) -> str:
        """Check the finished job's bundle loads as a bundle and make it selectable; returns its registry key.

        Bundles under ``<data>/bundles/`` are listed by the studio's ``ModelRegistry`` automatically; one
        written elsewhere is added with ``registry.add_path``.
        """
        path = job.bundle_path()
        if path is None:
            raise ValueError(f"job {job.id} has not finished ({job.status()['state']})")
        from engine.bundle import read_bundle_config

        read_bundle_config(path)  # BundleError with a readable message if it is not a bundle
        (job.dir / "registered").write_text(str(path))
        if registry is not None:
            inside = path.resolve().parent == (self.data_dir / "bundles").resolve()
            return f"path:{path.resolve()}" if inside else registry.add_path(path)
        return f"path:{path.resolve()}"
