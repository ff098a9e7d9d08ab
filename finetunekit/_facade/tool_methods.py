"""The after-fit tools as FineTuner methods; each is a thin call into finetunekit.tools."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from finetunekit import _assembly as assembly
from finetunekit.techniques.resizing import describe as describe_sizes
from finetunekit.tools import learning_curve as _lc
from finetunekit.tools import wise
from finetunekit.training import feature_cache, frozen_defaults

if TYPE_CHECKING:
    from finetunekit.tools.calibrate import CalibrationReport
    from finetunekit.tools.export import ExportReport
    from finetunekit.tools.interpret import Interpretation
    from finetunekit.tools.lr_finder import LRFinderResult


from finetunekit._facade.base import TunerBase

T = TypeVar("T", bound=TunerBase)


class ToolMethods(TunerBase):
    """find_lr, summary, WiSE-FT, learning curves, interpretation, calibration, export, Hub."""

    def find_lr(self, x: Any = None, y: Any = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_steps: int = 100, batch_size: int = 32, **kwargs: Any) -> LRFinderResult:  # fmt: skip
        """fastai's LR range test under the epoch-0 plan; model, optimizer and RNGs are left exactly as
        they were. Returns the LR/loss curve and ``suggested_lr``; ``.plot()`` draws it. See
        :func:`finetunekit.tools.lr_finder.find_lr` for the other options."""
        from finetunekit.tools.lr_finder import find_lr

        return find_lr(self, x, y, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                       batch_size=batch_size, **kwargs)  # fmt: skip

    def summary(self, epochs: int | None = None) -> str:
        """Per layer group: parameters and, for each epoch of the plan, its LR (or frozen) and BN mode."""
        n_groups, known = len(self._backbone.groups), epochs or self._planned_epochs
        plans = [self.plan(e) for e in range(known or max(1, self.strategy.horizon(n_groups)))]
        status = self._last_fit.cache_status if self._last_fit is not None else feature_cache.DEFAULT_STATUS
        base_lr = self._compiled.lr if self._compiled else None
        restarts = self.strategy.schedule_restarts(n_groups)
        trains = [sum(p.numel() for p in ps) for ps in self._params_by_group]
        text = assembly.summary_text(self.spec, self.groups, plans, base_lr, self.strategy,
                                     self._norms_by_group, not known, restarts, status, self.history,
                                     trains=trains, checkpointing=self._checkpointing)  # fmt: skip
        return text + frozen_defaults.summary_line(self._augment_choice) + self._resizing_line(known)

    def _resizing_line(self, epochs: int | None) -> str:
        """compile(progressive_resizing=...)'s training size per epoch, at the model's input size."""
        resizing = self._compiled.progressive_resizing if self._compiled is not None else None
        if resizing is None:
            return ""
        full = (int(self.data_config.input_size[1]), int(self.data_config.input_size[2]))
        n = epochs or max(1, self.strategy.horizon(len(self._backbone.groups)))
        return f"\nprogressive resizing: {describe_sizes(resizing.sizes(n, full), full)}"

    def interpolate(self: T, alpha: float, bn_data: Any = None) -> T:
        """WiSE-FT: set the backbone to ``(1 - alpha) * pretrained + alpha * fine-tuned``; keep the head.
        alpha=1 restores the fine-tuned weights exactly; ``bn_data`` re-estimates BatchNorm statistics
        on those images for alpha < 1. See docs/failure_modes.md."""
        wise.interpolate(self, alpha, bn_data=bn_data)
        return self

    def sweep_interpolation(self, x: Any, y: Any = None, alphas: Sequence[float] = wise.DEFAULT_ALPHAS,
                            **kwargs: Any) -> wise.InterpolationSweep:  # fmt: skip
        """Validation metrics per WiSE-FT alpha; leaves the model fine-tuned (``leave_at="best"`` to pick)."""
        return wise.sweep_interpolation(self, x, y, alphas, **kwargs)

    def learning_curve(self, x: Any, y: Any, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                       **kwargs: Any) -> _lc.LearningCurve:  # fmt: skip
        """Fine-tune fresh copies (pretrained backbone, new head) on growing stratified fractions of
        ``(x, y)``; validation accuracy per fraction. ``self`` is not modified."""
        return _lc.learning_curve(self, x, y, fractions, **kwargs)

    def interpret(self, x: Any, y: Any = None, batch_size: int = 64) -> Interpretation:
        """Confusion matrix, most-confused pairs, top losses and a per-class report on labelled data."""
        from finetunekit.tools.interpret import interpret

        return interpret(self, x, y, batch_size=batch_size)

    def calibrate(self, x: Any, y: Any = None, batch_size: int = 64, n_bins: int = 15) -> CalibrationReport:
        """Fit the softmax temperature on held-out data (saved with the model, used by predict)."""
        from finetunekit.tools.calibrate import calibrate

        return calibrate(self, x, y, batch_size=batch_size, n_bins=n_bins)

    def export(self, path: str | os.PathLike[str], format: str = "onnx", preprocessing: bool = True,
               **kwargs: Any) -> ExportReport:  # fmt: skip
        """Write an ONNX / TorchScript / ExportedProgram file and check it against the eager model."""
        from finetunekit.tools.export import export

        return export(self, path, format=format, preprocessing=preprocessing, **kwargs)

    def save_for_hub(self, folder: str | os.PathLike[str], metrics: Mapping[str, float] | None = None) -> Any:
        """A timm-compatible folder (weights, config, model card) that ``timm.create_model`` loads."""
        from finetunekit.tools.hub import save_for_hub

        return save_for_hub(self, folder, metrics=metrics)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload :meth:`save_for_hub`'s folder to the Hugging Face Hub; returns the repo URL."""
        from finetunekit.tools.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)
