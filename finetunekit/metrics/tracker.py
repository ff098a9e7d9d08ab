"""Metrics accumulated on the device: no host sync per step; ``result()`` syncs once when asked.

Logs use the names the user gave (Keras): ``compile(metrics=["acc"])`` logs ``acc`` and ``val_acc``.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from finetunekit.errors import ConfigError
from finetunekit.metrics import builtin
from finetunekit.tasks import CLASSIFICATION, MULTI_LABEL, output_activation


def _is_torchmetric(m: Any) -> bool:
    return all(callable(getattr(m, a, None)) for a in ("update", "compute", "reset")) and not isinstance(
        m, str
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class MetricSet:
    """compile()'s checked metrics: names (as given) -> built-in definition or torchmetrics object.
    ``threshold`` (a float or one per class) is the multi-label decision threshold."""

    names: list[str]
    task: str = CLASSIFICATION
    num_classes: int | None = None
    threshold: float | Sequence[float] = 0.5
    objects: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Any:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def check_metrics(
    metrics: Sequence[Any], task: str = CLASSIFICATION, num_classes: int | None = None
) -> MetricSet:
    """Names and torchmetrics objects -> a :class:`MetricSet`; unknown names raise listing the known."""
    names: list[str] = []
    objects: dict[str, Any] = {}
    for m in metrics:
        if _is_torchmetric(m):
            name = str(getattr(m, "name", None) or _snake(type(m).__name__))
            objects[name] = m
        elif not isinstance(m, str) or builtin.lookup(m, task) is None:
            raise ConfigError(
                f"metric {m!r} is unknown for task={task!r}; expected some of {builtin.known_names(task)} "
                "or a torchmetrics.Metric object (pip install finetunekit[metrics])."
            )
        else:
            name = m
        if name in names:
            raise ConfigError(f"metric {name!r} is given twice; expected each metric once.")
        names.append(name)
    return MetricSet(names, task, num_classes, objects=objects)


def _as_set(metrics: Sequence[Any] | MetricSet) -> MetricSet:
    return metrics if isinstance(metrics, MetricSet) else check_metrics(list(metrics))


class MetricTracker:
    """Running mean loss and metric states as device tensors (``_loss``, ``_correct``: the concatenated
    sums of the summable metrics, ``_n``: samples), plus stored scores for AUROC / mAP."""

    def __init__(self, metrics: Sequence[Any] | MetricSet, device: torch.device):
        self.set = _as_set(metrics)
        self.metrics = list(self.set.names)
        self.device = device
        self._builtins = {
            n: builtin.lookup(n, self.set.task) for n in self.metrics if n not in self.set.objects
        }
        self._objects = {n: copy.deepcopy(m).to(device) for n, m in self.set.objects.items()}
        self.reset()

    def _size(self, name: str) -> int:
        m = self._builtins.get(name)
        return 0 if m is None else m.size(self.set.num_classes or 0)

    def reset(self) -> None:
        total = sum(self._size(n) for n in self.metrics)
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._correct = torch.zeros(total, dtype=torch.float64, device=self.device)
        self._n = 0
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        for m in self._objects.values():
            m.reset()

    def _threshold(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.set.threshold, dtype=scores.dtype, device=scores.device)

    def _stores(self) -> bool:
        return any(m is not None and m.kind == "store" for m in self._builtins.values())

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        self._loss += loss.detach().double() * n
        self._n += n
        if not self.metrics:
            return
        scores = output_activation(self.set.task, logits.detach())
        target = target.detach()
        sums = [
            builtin.batch_sums(m, scores, target, self._threshold(scores))
            for m in self._builtins.values()
            if m is not None and m.kind == "sum"
        ]
        if sums:
            self._correct += torch.cat(sums)
        if self._stores():
            self._scores.append(scores)
            self._targets.append(target)
        for m in self._objects.values():
            m.update(*self._torchmetrics_inputs(scores, target))

    def _torchmetrics_inputs(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.set.task == MULTI_LABEL:
            return scores, target.round().long()
        if self.set.task == CLASSIFICATION:
            return scores, target
        return (scores.squeeze(1), target.squeeze(1)) if scores.shape[1] == 1 else (scores, target)

    def all_reduce(self) -> None:
        """Sum the totals over DDP ranks (a no-op in one process): each rank saw its own samples, so the
        job's mean is the summed loss and counts over the summed sample count, never a mean of means.
        Stored scores are gathered; torchmetrics objects synchronize themselves in ``compute()``."""
        from finetunekit.distributed import all_reduce_sum, gather_rows

        totals = all_reduce_sum(
            torch.cat([self._loss.reshape(1), self._correct, self._loss.new_tensor([self._n])])
        )
        self._loss, self._correct, self._n = totals[0], totals[1:-1], int(totals[-1].item())
        if self._scores:
            scores, targets = self._stored()
            self._scores = [torch.from_numpy(gather_rows(scores))]
            self._targets = [torch.from_numpy(gather_rows(targets))]

    def state_dict(self) -> dict[str, Any]:
        """The running totals and the stored scores and targets (AUROC / mAP), so a checkpoint taken
        mid-epoch resumes the epoch's metrics exactly; torchmetrics objects keep their accumulated
        states too (torchmetrics' own ``state_dict`` once ``persistent(True)`` includes them)."""
        state: dict[str, Any] = {"loss": self._loss, "correct": self._correct, "n": self._n}
        if self._scores:
            state["scores"], state["targets"] = torch.cat(self._scores), torch.cat(self._targets)
        if self._objects:
            state["objects"] = {name: dict(_persistent(m).state_dict()) for name, m in self._objects.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loss = torch.as_tensor(state["loss"]).to(self.device, torch.float64)
        self._correct = torch.as_tensor(state["correct"]).to(self.device, torch.float64)
        self._n = int(state["n"])
        self._scores, self._targets = [], []
        if "scores" in state:
            self._scores = [torch.as_tensor(state["scores"]).to(self.device)]
            self._targets = [torch.as_tensor(state["targets"]).to(self.device)]
        saved = state.get("objects", {})
        for name, m in self._objects.items():
            m.reset()
            if name in saved:
                _persistent(m).load_state_dict(_on_device(saved[name], m.device), strict=True)
            elif self._n:
                warnings.warn(
                    f"metric {name!r} restarts at the resumed batch: the checkpoint holds no state for it, "
                    "so this epoch's value covers only the batches after it",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _stored(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self._scores).double().cpu().numpy(), torch.cat(self._targets).cpu().numpy()

    def result(self) -> dict[str, float]:
        """Python floats (one host sync), keyed ``loss`` and the metric names as given."""
        if self._n == 0:
            return {}
        out = {"loss": float(self._loss) / self._n}
        state = self._correct.cpu().numpy()
        stored = self._stored() if self._scores else None
        offset = 0
        for name in self.metrics:
            m = self._builtins.get(name)
            if m is None:
                value = self._objects[name].compute()
                out[name] = float(value) if value.numel() == 1 else float(value.float().mean())
            elif m.kind == "store":
                out[name] = builtin.compute_stored(m, *stored) if stored is not None else float("nan")
            else:
                size = self._size(name)
                out[name] = builtin.compute(
                    m, state[offset : offset + size], self._n, self.set.task == MULTI_LABEL
                )
                offset += size
        return out


def _persistent(metric: Any) -> Any:
    """``metric`` with its accumulated states in its ``state_dict`` (torchmetrics leaves them out by
    default, since a model's checkpoint rarely wants them; a mid-epoch resume does)."""
    metric.persistent(True)
    return metric


def _on_device(state: Any, device: torch.device) -> Any:
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, Mapping):
        return {k: _on_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_on_device(v, device) for v in state]
    return state
