"""Half-written bundles in ``<data>/bundles/``: a bundle save (export) killed with SIGKILL at two different
instants, and a bundle copied in by hand whose weight file was cut short. The model picker offers only
the complete bundle and says why it left each other folder out."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

from studio.models import ModelRegistry
from tests.faults.conftest import ROOT

# Saves a complete tiny bundle to argv[1]/good, then saves it again to argv[1]/cut and is SIGKILLed
# mid-save: at "vq" before its image tokenizer is written, at "rename" after every file (bundle.json
# included) is written but before the folder is renamed into place. The kill is real (the process dies
# with whatever it had written); the patched call only picks the instant.
KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
import engine.bundle as eb
from engine.tiny import make_tiny_random_bundle
out, when = Path(sys.argv[1]), sys.argv[2]
b = make_tiny_random_bundle(name="tiny")
if when == "vq":
    eb.save_bundle(b, out / "good")
    b.vq.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:
    eb.os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
eb.save_bundle(b, out / "cut")
print("not killed", flush=True)
"""


def test_picker_skips_half_written_bundles(tmp_path, report):
    data = tmp_path / "data"
    bundles = data / "bundles"
    bundles.mkdir(parents=True)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(bundles), when], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for when in ("vq", "rename")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == -signal.SIGKILL, f"{proc.returncode}: {out}{err[-2000:]}"
    leftovers = sorted(p for p in bundles.iterdir() if p.name.startswith(".cut."))
    assert len(leftovers) == 2 and not (bundles / "cut").exists()
    assert any((p / "bundle.json").is_file() for p in leftovers)  # looks like a bundle: the old picker listed it
    # a copy by hand that stopped half-way through the weights
    shutil.copytree(bundles / "good", bundles / "copied")
    weights = bundles / "copied" / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    reg = ModelRegistry(data)
    labels = [c.label for c in reg.choices()]
    assert labels == ["good (fine-tuned)"]
    why = {f.name: w for f, w in reg.skipped}
    assert set(why) == {"copied", *(p.name for p in leftovers)}
    assert "model.safetensors is cut short" in why["copied"]
    assert all("interrupted save" in why[p.name] for p in leftovers)
    note = reg.skipped_message()
    assert "copied" in note and "safe to delete" in note
    report("Bundle export killed (SIGKILL) mid-save; a bundle copied in half-way",
           f"the picker offers only complete bundles; under it: “{note.split('— ', 1)[1][:110]}…”, "
           f"“…{why['copied']}”", "the complete bundles; the leftovers stay on disk (named) until deleted",
           offered=len(labels), skipped=len(why))
