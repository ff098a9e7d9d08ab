"""Metrics accumulated on the device: no host sync per step; ``result()`` syncs once when asked."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from finetunekit.errors import ConfigError


def _topk_correct(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def f(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k_eff = min(k, logits.shape[1])
        top = logits.topk(k_eff, dim=1).indices
        return (top == target.unsqueeze(1)).any(dim=1).sum()

    return f


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "accuracy": _topk_correct(1),
    "acc": _topk_correct(1),
    "top5_accuracy": _topk_correct(5),
}


def check_metrics(metrics: Sequence[str]) -> list[str]:
    out = []
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"metric {m!r} is unknown; expected some of {sorted(METRICS)}")
        out.append("accuracy" if m == "acc" else m)
    return out


class MetricTracker:
    """Running mean loss and metric counts as device tensors."""

    def __init__(self, metrics: Sequence[str], device: torch.device):
        self.metrics = list(metrics)
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._correct = torch.zeros(len(self.metrics), dtype=torch.float64, device=self.device)
        self._n = 0

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        self._loss += loss.detach().double() * n
        if self.metrics:
            self._correct += torch.stack([METRICS[m](logits, target) for m in self.metrics]).double()
        self._n += n

    def all_reduce(self) -> None:
        """Sum the totals over DDP ranks (a no-op in one process): each rank saw its own samples, so the
        job's mean is the summed loss and counts over the summed sample count, never a mean of means."""
        from finetunekit.distributed import all_reduce_sum

        totals = all_reduce_sum(
            torch.cat([self._loss.reshape(1), self._correct, self._loss.new_tensor([self._n])])
        )
        self._loss, self._correct, self._n = totals[0], totals[1:-1], int(totals[-1].item())

    def state_dict(self) -> dict[str, object]:
        """The running totals, so a checkpoint taken mid-epoch resumes the epoch's metrics exactly."""
        return {"loss": self._loss, "correct": self._correct, "n": self._n}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._loss = torch.as_tensor(state["loss"]).to(self.device, torch.float64)
        self._correct = torch.as_tensor(state["correct"]).to(self.device, torch.float64)
        self._n = int(state["n"])  # type: ignore[call-overload]

    def result(self) -> dict[str, float]:
        """Python floats (one host sync)."""
        if self._n == 0:
            return {}
        values = torch.cat([self._loss.reshape(1), self._correct]).div(self._n).tolist()
        return dict(zip(["loss", *self.metrics], values, strict=True))
