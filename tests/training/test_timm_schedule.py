"""timm schedulers through the same multiplier adapter as torch's: the multiplier is timm's own value at
every step, a fit with one resumes bitwise, and epoch-based timm lengths are refused with the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images, on_global_step
from timm.scheduler import CosineLRScheduler, StepLRScheduler

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore
from finetunekit.errors import ConfigError
from finetunekit.schedules import TimmSchedulerMultiplier, get_schedule


def test_multiplier_is_timms_own_lr_at_every_step() -> None:
    kwargs = {"warmup_t": 3, "warmup_lr_init": 0.01, "lr_min": 0.05}
    multiplier = get_schedule(CosineLRScheduler, 20, **kwargs)
    assert isinstance(multiplier, TimmSchedulerMultiplier)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = CosineLRScheduler(opt, t_initial=20, t_in_epochs=False, **kwargs)
    seen = []
    for step in range(1, 21):
        assert multiplier(0.0) == pytest.approx(opt.param_groups[0]["lr"], abs=0)
        seen.append(multiplier(0.0))
        multiplier.step()  # type: ignore[attr-defined]
        reference.step_update(num_updates=step)
    assert seen[0] == 0.01 and max(seen) > 0.9 and seen[-1] < 0.2  # warm-up, then cosine decay


def test_epoch_based_lengths_are_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="t_in_epochs=True.*in steps"):
        get_schedule(StepLRScheduler, 10, decay_t=3, t_in_epochs=True)


def _fit(backup: Path, crash: int | None = None) -> Any:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, image_size=16, device="cpu", seed=0)
    ft.compile(lr=0.05, schedule=CosineLRScheduler, schedule_kwargs={"warmup_t": 4, "warmup_lr_init": 1e-3})
    callbacks: list[Any] = [BackupAndRestore(backup, save_freq=3)]
    if crash is not None:

        def die(step: int) -> None:
            if step == crash:
                raise KeyboardInterrupt

        callbacks.append(on_global_step(die))
    x, y = make_images(48, 3, 16)
    try:
        ft.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        return None
    return {k: v.clone() for k, v in ft.model.state_dict().items()}, ft.history.history  # type: ignore[union-attr]


def test_a_fit_with_a_timm_scheduler_resumes_bitwise(tmp_path: Path) -> None:
    reference = _fit(tmp_path / "ref")
    assert _fit(tmp_path / "bk", crash=7) is None  # the backup after batch 5 (global step 6) is mid-epoch
    resumed = _fit(tmp_path / "bk")
    assert reference[1] == resumed[1]
    assert all(torch.equal(reference[0][k], resumed[0][k]) for k in reference[0])
    lrs = reference[1]["lr"]
    assert lrs[0] != lrs[1]  # the schedule moved the LR
