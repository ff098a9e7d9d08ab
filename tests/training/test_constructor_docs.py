"""help(FineTuner) documents every constructor argument; the getting-started page states the real defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

from finetunekit import FineTuner

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_constructor_argument_is_documented() -> None:
    doc = inspect.getdoc(FineTuner.__init__) or ""
    names = [n for n in inspect.signature(FineTuner.__init__).parameters if n != "self"]
    missing = [n for n in names if f"    {n}: " not in doc]
    assert not missing, f"FineTuner.__init__'s docstring does not document {missing}"
    assert "DESIGN" not in (inspect.getdoc(FineTuner) or "")


def test_getting_started_states_the_default_lr_and_the_saved_files() -> None:
    text = (DOCS / "getting-started.md").read_text()
    lr = inspect.signature(FineTuner.compile).parameters["lr"].default
    assert lr == 2e-3 and "lr 2e-3" in text and "lr 1e-3" not in text
    for name in ("model.safetensors", "config.json", "manifest.json"):
        assert name in text
