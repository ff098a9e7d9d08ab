"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) as a batch transform with soft targets.

``compile(mixup=0.2, cutmix=1.0)`` makes the training loop call a :class:`BatchMixer` on each batch
before the forward pass: images are mixed with a shuffled copy of the batch (a convex combination for
mixup, a pasted box for CutMix) and the integer labels become soft targets ``lam * onehot(y) + (1 - lam)
* onehot(y[perm])``. torch's ``cross_entropy`` accepts such probability targets and still applies
``label_smoothing`` to them, so the two compose. When both are on, each batch picks one of them with
probability 1/2 (timm's default).

Every draw of a batch comes from a generator made for that batch from ``(seed, epoch, step, rank)``
(numpy's SeedSequence mixes them), not from a stream: the mixing of batch k is the same whether the
run went straight there or was killed and resumed, and the mixer's whole state is its seed.

Training accuracy is measured against the original labels (the dominant component of each image), so
with mixing it reads low; validation is never mixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from finetunekit.errors import ConfigError


def check_mix_alpha(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"{name}={value!r} is invalid; expected a Beta concentration >= 0 (0 = off), e.g. {name}=0.2"
        )
    return float(value)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly, clipped at the borders."""
    cut = float(np.sqrt(1.0 - lam))
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return (max(cy - ch // 2, 0), min(cy + ch // 2, height), max(cx - cw // 2, 0), min(cx + cw // 2, width))


class BatchMixer:
    """Callable ``(x, y, position) -> (x_mixed, soft_targets)`` on one device batch.

    ``position`` is ``(epoch, step)`` in a fit (the loop passes it); called without one, successive calls
    count up. ``seed=None`` draws the seed from torch's global RNG, so ``torch.manual_seed`` rules.
    ``last_lam`` / ``last_perm`` are for tests.
    """

    def __init__(
        self,
        num_classes: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        seed: int | None = None,
        rank: int = 0,
    ):
        self.num_classes = num_classes
        self.mixup = check_mix_alpha("mixup", mixup)
        self.cutmix = check_mix_alpha("cutmix", cutmix)
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self.rank = rank
        self.calls = 0
        self.last_lam = 1.0
        self.last_perm: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def rng_for(self, position: tuple[int, ...]) -> np.random.Generator:
        """The generator of the batch at ``position``: a pure function of the seed, rank and position."""
        return np.random.default_rng([self.seed % 2**63, self.rank, *(int(p) for p in position)])

    def _choose(self, rng: np.random.Generator) -> str:
        if self.mixup > 0 and self.cutmix > 0:
            return "cutmix" if rng.random() < 0.5 else "mixup"
        return "cutmix" if self.cutmix > 0 else "mixup"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, position: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # a direct call counts in its own sequence, apart from any (epoch, step) of a fit
        position = (0, self.calls) if position is None else (1, *position)
        self.calls += 1
        rng = self.rng_for(position)
        kind = self._choose(rng)
        lam = float(rng.beta(getattr(self, kind), getattr(self, kind)))
        perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
        if kind == "mixup":
            mixed = x * lam + x[perm] * (1.0 - lam)
        else:
            y0, y1, x0, x1 = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
            mixed = x.clone()
            mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(x.shape[-2] * x.shape[-1])  # the box actually pasted
        if y.is_floating_point():  # multi-hot / regression targets (finetunekit.tasks): mixed as they are
            onehot = y.to(x.dtype)
        else:
            onehot = torch.nn.functional.one_hot(y.long(), self.num_classes).to(x.dtype)
        self.last_lam, self.last_perm = lam, perm
        return mixed, onehot * lam + onehot[perm] * (1.0 - lam)

    # -- resumable state: the seed (every batch's draws derive from it) and the direct-call count -----
    def state_dict(self) -> dict[str, Any]:
        return {"seed": str(self.seed), "rank": self.rank, "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed, self.rank, self.calls = int(state["seed"]), int(state["rank"]), int(state["calls"])

    def __repr__(self) -> str:
        return f"BatchMixer(mixup={self.mixup:g}, cutmix={self.cutmix:g})"
