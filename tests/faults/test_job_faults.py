"""A one-click fine-tune job (a real DPO training process) on a disk that fills up, then SIGKILLed: each
time the last checkpoint stays usable and the job resumes from it, and the job's status says what
happened (for the full disk: the folder, the space needed and what is kept)."""

from __future__ import annotations

import os
import signal
import time
from itertools import islice

from tests.faults.conftest import confirmed, fill_disk


def _wait(job, ok, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = job.status()
        if ok(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"job never {what}: {job.status()}\n{job.log_tail(40)}")


def test_finetune_job_disk_full_then_sigkill_resumes(mounts, tmp_path, report):
    import torch
    from safetensors.torch import load_file

    from engine.bundle import load_bundle
    from engine.tiny import make_tiny_random_bundle
    from feedback.store import Store
    from studio.models import ModelRegistry
    from training.data import suite
    from training.jobs import JobManager
    from training.simulated_raters import SimulatedRater, generate, rate

    torch.set_num_threads(1)
    make_tiny_random_bundle(tmp_path / "tiny", seed=0)
    bundle = load_bundle(tmp_path / "tiny")
    disk = mounts.tmpfs("disk", 24 * 1024)
    store = Store(disk / "data")
    samples = list(islice(suite.stream("train", seed=1, root=None, area=bundle.config.image_area,
                                       kinds=["grayscale", "invert"]), 2))
    rate(store, generate(store, bundle, samples, n=3, seed=2), [SimulatedRater("sim", noise=0.5, seed=0)],
         kinds=("pair", "thumb"))
    before = confirmed(store)
    jm = JobManager(store.data_dir)
    job = jm.start("dpo", str(tmp_path / "tiny"), name="tiny-dpo", epochs=20, batch_size=1, lr=1e-3,
                   ckpt_every=1)
    ckpt = job.dir / "run" / "checkpoint"
    _wait(job, lambda st: (ckpt / "state.pt").is_file() or not st["alive"], "saved a checkpoint")
    filler = fill_disk(disk)  # the disk fills while the job trains: its next checkpoint cannot be written
    st = _wait(job, lambda st: not st["alive"], "stopped on the full disk")
    assert st["state"] == "failed"
    full_msg = st["message"]
    kept_step = job.checkpoint_step()
    assert kept_step is not None and kept_step >= 1
    assert f"The disk holding {job.dir} is full" in full_msg and "needs about" in full_msg, full_msg
    assert f"step {kept_step}" in full_msg and "Resume" in full_msg, full_msg
    assert not (job.dir / "run" / "checkpoint.tmp").exists()  # the partial checkpoint did not stay
    tensors = load_file(str(ckpt / "trainable.safetensors"))  # the kept checkpoint is whole and loads
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())

    filler.unlink()  # space freed: resume continues from the checkpoint
    job = jm.resume(job.id)
    st = _wait(job, lambda st: st["state"] == "running" and st["step"] > kept_step, "resumed past the checkpoint")
    assert f"resumed from step {kept_step}" in job.log_path.read_text()
    # then the job is killed outright (the OOM killer, a power cut of the process)
    _wait(job, lambda st: (job.checkpoint_step() or 0) > kept_step, "checkpointed after resuming")
    os.killpg(job.pid, signal.SIGKILL)
    st = _wait(job, lambda st: not st["alive"], "died")
    assert st["state"] == "failed" and "exited" in st["message"], st
    killed_step, second_step = st["step"], job.checkpoint_step()
    assert second_step is not None and second_step > kept_step
    job = jm.resume(job.id)
    st = _wait(job, lambda st: st["state"] in ("done", "failed") and not st["alive"], "finished", timeout=400)
    assert st["state"] == "done", job.log_tail(40)
    assert f"resumed from step {second_step}" in job.log_path.read_text()
    assert st["step"] == st["steps"]
    key = jm.register(jm.get(job.id), ModelRegistry(store.data_dir))
    assert key in [c.key for c in ModelRegistry(store.data_dir).choices()]
    assert confirmed(store) == before  # training only reads the ratings
    report("Disk full while a fine-tune job checkpoints (tmpfs filled mid-run); then the job SIGKILLed",
           full_msg, f"the checkpoint of step {kept_step} (then of step {second_step} after the kill); Resume "
           f"continues from it and the job finishes ({st['steps']} steps) and registers; every rating",
           checkpoint_kept_step=kept_step, killed_at_step=killed_step, resumed_from=second_step,
           steps=st["steps"])
