"""Every strategy x every schedule on a tiny model, checked at every epoch and step: trainability,
frozen weights and BN buffers bitwise, param-group count, exact LRs and ratios, refreeze clearing."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, make_images
from strategy_harness import check_record, expected_multipliers, run

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.schedules import one_cycle, schedule_phase
from finetunekit.strategies import (
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
    Strategy,
)

EPOCHS, BATCH, N = 4, 16, 48  # 3 steps per epoch, 12 steps


class OpenCloseOpen(Strategy):
    """All groups, then head only (the backbone is frozen AGAIN), then all: exercises refreezing."""

    def plan(self, n_groups: int, epoch: int) -> list[float | None]:
        if epoch == 1:
            return [None] * (n_groups - 1) + [1.0]
        return [0.5] * (n_groups - 1) + [1.0]


STRATEGIES = {
    "full": lambda: FullFineTune(),
    "frozen": lambda: FrozenBackbone(),
    "gradual": lambda: GradualUnfreeze(every=1),
    "gradual_milestones_decay": lambda: GradualUnfreeze(milestones={0: 1, 2: 3}, decay=0.7),
    "discriminative": lambda: DiscriminativeLR(0.7),
    "discriminative_scales": lambda: DiscriminativeLR(scales=[0.01, 0.3, 1.0]),
    "lpft_restart": lambda: LPFT(probe_epochs=2, finetune_scale=0.1, restart_schedule=True),
    "lpft_one_schedule": lambda: LPFT(probe_epochs=1),
    "composed": lambda: [GradualUnfreeze(every=1), DiscriminativeLR(0.7)],
    "open_close_open": lambda: OpenCloseOpen(),
}
SCHEDULES = {
    "constant": ("constant", {}),
    "one_cycle": ("one_cycle", {}),
    "cosine": ("cosine", {"warmup": 0.2}),
    "slanted_triangular": ("slanted_triangular", {}),
    "torch_StepLR": (torch.optim.lr_scheduler.StepLR, {"step_size": 2, "gamma": 0.7}),
    "torch_OneCycleLR": (torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 1.0, "total_steps": 12}),
}


def tuner(strategy, seed=0):
    torch.manual_seed(seed)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, seed=seed, strategy=strategy, device="cpu")


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("strategy_name", list(STRATEGIES))
def test_strategy_guarantees_at_every_epoch_and_step(strategy_name, schedule_name):
    x, y = make_images(N)
    ft = tuner(STRATEGIES[strategy_name]())
    schedule, kwargs = SCHEDULES[schedule_name]
    ft.compile(lr=3e-3, schedule=schedule, schedule_kwargs=kwargs)
    rec = run(ft, x, y, EPOCHS, BATCH)
    restarts = ft.strategy.schedule_restarts(len(ft.groups))
    check_record(rec, ft, EPOCHS, expected_multipliers(schedule, kwargs, N // BATCH, EPOCHS, restarts), 3e-3)


def test_newly_opened_group_joins_the_schedule_without_a_jump():
    x, y = make_images(N)
    ft = tuner(GradualUnfreeze(every=1))
    ft.compile(lr=1e-2, schedule="one_cycle")
    rec = run(ft, x, y, EPOCHS, BATCH)
    steps = N // BATCH
    first = rec.lrs[steps]  # first step of epoch 1, when stage1 (group 1) opens
    last_before = rec.lrs[steps - 1]
    assert last_before[1][1] == 0.0 and first[1][1] > 0.0
    # it joins where the schedule IS (progress steps/total), with the head's LR: no warm restart
    where = 1e-2 * one_cycle()(steps / (EPOCHS * steps))
    assert first[1][1] == first[1][2] == where
    assert first[1][1] != 1e-2 * one_cycle()(0.0)


def test_refrozen_group_loses_grads_and_optimizer_state():
    x, y = make_images(N)
    ft = tuner(OpenCloseOpen())
    ft.compile(lr=1e-2, schedule="constant")
    seen = {}

    def at_epoch_begin(epoch, logs):
        stem = ft._params_by_group[0]
        seen[epoch] = (
            [p.grad is None for p in stem],
            [p in ft.optimizer.state for p in stem],
            [p.requires_grad for p in stem],
        )

    steps_after = {}

    def at_epoch_end(epoch, logs):
        state = ft.optimizer.state  # a defaultdict: never index it (that would insert an entry)
        steps_after[epoch] = [float(state.get(p, {}).get("step", -1)) for p in ft._params_by_group[0]]

    cb = LambdaCallback(on_epoch_begin=at_epoch_begin, on_epoch_end=at_epoch_end)
    ft.fit(x, y, epochs=3, batch_size=BATCH, verbose=0, callbacks=[cb])
    grads_cleared, has_state, trainable = seen[1]
    assert all(grads_cleared) and not any(has_state) and not any(trainable)
    # epoch 0 had Adam state; epoch 2 started it again from nothing (no momentum leaked across)
    assert steps_after[0] == [3.0] * len(steps_after[0])
    assert steps_after[1] == [-1.0] * len(steps_after[1])  # no state while frozen
    assert steps_after[2] == [3.0] * len(steps_after[2])


def test_lpft_restarts_the_schedule_at_the_fine_tuning_phase():
    x, y = make_images(N)
    ft = tuner(LPFT(probe_epochs=2, finetune_scale=0.1, restart_schedule=True))
    ft.compile(lr=1e-2, schedule="one_cycle")
    rec = run(ft, x, y, EPOCHS, BATCH)
    head = [lrs[2] for _, lrs in rec.lrs]
    steps = N // BATCH
    assert head[0] == pytest.approx(1e-2 / 25)  # the probe's cycle warms up from base/25
    assert head[2 * steps] == pytest.approx(1e-2 * 0.1 / 25)  # fine-tuning warms up again (x0.1)
    assert schedule_phase([2], 4, 1) == (0, 2) and schedule_phase([2], 4, 3) == (2, 4)
    assert schedule_phase([2], 2, 1) == (0, 2)  # a restart at/after the end changes nothing


def test_lpft_without_restart_spans_one_schedule():
    x, y = make_images(N)
    ft = tuner(LPFT(probe_epochs=1, finetune_scale=0.1))
    ft.compile(lr=1e-2, schedule="constant")
    rec = run(ft, x, y, 2, BATCH)
    assert [lrs[0] for _, lrs in rec.lrs] == [0.0] * 3 + [1e-2 * 0.1] * 3
