"""``FineTuner.evaluate`` / ``predict`` / ``tune_thresholds``: the eval model through the one compute path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetunekit._facade.base import TunerBase
from finetunekit.callbacks import Callback
from finetunekit.callbacks.progbar import resolve_verbose
from finetunekit.data.files import with_paths
from finetunekit.distributed.failure import guard
from finetunekit.tasks import check_tta, output_activation
from finetunekit.tools.calibrate import with_temperature
from finetunekit.training import inference, preflight
from finetunekit.training.distributed import run_for
from finetunekit.validation import check_positive_int


class InferenceMethods(TunerBase):
    """Keras' ``evaluate`` / ``predict``, and the multi-label threshold tuner."""

    @guard  # [distributed]
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int = 32, verbose: int | str = 0,
                 callbacks: Sequence[Callback] | None = None,
                 tta: bool = False) -> dict[str, float]:  # fmt: skip
        """Loss and metrics on labelled data, as Python floats. ``tta=True`` averages the probabilities
        of each image and its horizontal mirror (the loss is that of the averaged prediction)."""
        check_positive_int("batch_size", batch_size)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None
        check_tta(tta, self.task)
        self._compiled.metrics.threshold = self._threshold
        data = self._prepare(x, y, augment=False, what="x")
        self._head_at_init = preflight.warn_if_untrained(self.model, self._head_at_init, "evaluate()")
        return inference.evaluate(self.eval_model, data, run_for(self), batch_size, owner=self,
                                  compute=self._compute_path(), loss_fn=self._compiled.loss_fn,
                                  metrics=self._compiled.metrics, callbacks=callbacks or [],
                                  tta=tta, verbose=resolve_verbose("evaluate", verbose))  # fmt: skip

    @guard  # [distributed]
    def predict(self, x: Any, batch_size: int = 32, verbose: int | str = 0,
                callbacks: Sequence[Callback] | None = None, tta: bool = False,
                return_paths: bool = False) -> Any:  # fmt: skip
        """Class probabilities (N, num_classes) in input order: softmax, per-class sigmoid for
        multi_label, raw outputs for regression (finetunekit.tasks). ``tta=True`` averages them over the
        image and its mirror. ``x`` may also be an image file, a flat folder, a list of paths, a PIL image
        or a list of arrays of any sizes; ``return_paths=True`` returns ``(rows, file names)``."""
        check_positive_int("batch_size", batch_size)
        check_tta(tta, self.task)
        data = self._prepare(x, None, augment=False, what="x", require_labels=False)
        self._head_at_init = preflight.warn_if_untrained(self.model, self._head_at_init, "predict()")
        model = with_temperature(self.eval_model, self.temperature)  # calibrate()'s temperature
        rows = inference.predict(model, data, run_for(self), batch_size, owner=self,
                                 compute=self._compute_path(), num_classes=self.num_classes,
                                 callbacks=callbacks or [], tta=tta,
                                 verbose=resolve_verbose("predict", verbose),
                                 activation=lambda out: output_activation(self.task, out))  # fmt: skip
        return with_paths(rows, data, return_paths)

    def tune_thresholds(self, x: Any, y: Any = None, per_class: bool = True, batch_size: int = 32) -> Any:
        """Set :attr:`threshold` to the per-class (or one global) threshold maximizing F1 on validation
        data ``(x, y)``; returns it. Metrics and ``save`` use it from then on (docs/tasks.md)."""
        from finetunekit.tools.thresholds import tune_thresholds

        self.threshold = tune_thresholds(self, x, y, per_class, batch_size)
        return self._threshold
