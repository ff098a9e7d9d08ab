"""Every module imports first in a fresh interpreter (an import cycle fails there, whatever imported it
before), and the layer contract in pyproject.toml holds.

A fresh interpreter per module costs seconds each (torch), so one clean interpreter imports the
third-party libraries only and forks a child per module: each child starts with no finetunekit module
loaded and imports just that one.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import finetunekit

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(finetunekit.__path__, "finetunekit.")
    if not m.name.endswith("__main__")
)
FORK_EACH = """
import importlib, os, sys, traceback
import numpy, torch, torchvision, timm, safetensors  # third-party only: no finetunekit module yet
assert not [m for m in sys.modules if m.startswith("finetunekit")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    assert len(MODULES) > 50 and "finetunekit.training.trainer" in MODULES
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FORK_EACH, *MODULES], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-6000:]


def test_the_import_contract_holds() -> None:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_tuner_stays_a_short_facade() -> None:
    """FineTuner's behaviour lives in finetunekit/_facade and the layers below; tuner.py only assembles it."""
    lines = (Path(finetunekit.__file__).parent / "tuner.py").read_text().count("\n")
    assert lines < 300, f"finetunekit/tuner.py has {lines} lines; move behaviour into finetunekit/_facade"
