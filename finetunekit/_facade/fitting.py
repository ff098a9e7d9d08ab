"""``FineTuner.fit``: checks the arguments, prepares the data and runs one per-fit Trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finetunekit._facade.base import TunerBase
from finetunekit.callbacks import Callback, History
from finetunekit.callbacks.interrupt import report_interrupt
from finetunekit.data.weights import Imbalance
from finetunekit.distributed.failure import guard
from finetunekit.training import feature_cache, fit_options, frozen_defaults, preflight, setup
from finetunekit.training.determinism import deterministic_mode, seed_everything
from finetunekit.training.distributed import run_for
from finetunekit.validation import check_fit_args


class FitMethods(TunerBase):
    """Keras' ``fit``."""

    @guard  # [distributed] one rank failing stops all, naming the cause
    def fit(self, x: Any = None, y: Any = None, batch_size: int = 32, epochs: int = 1,
            verbose: int | str = "auto", callbacks: Sequence[Callback] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
            initial_epoch: int = 0, augment: Any = True, deterministic: bool = False,
            num_workers: int | None = None, cache_features: bool = True, steps_per_epoch: int | None = None,
            validation_freq: int | Sequence[int] = 1, class_weight: Any = None, sample_weight: Any = None,
            sampling_weights: Any = None) -> History:  # fmt: skip
        """Train for ``epochs`` epochs (Keras semantics) and return the History. Event order::

            restore (a BackupAndRestore holding a backup: every registered part of the training state)
            on_train_begin
            for epoch: plan applied (requires_grad, BN modes); on_epoch_begin (not for an epoch resumed
                mid-way); per batch: on_train_batch_begin, LR write, step (skipped for a non-finite
                loss), on_train_batch_end; validation (on_test_begin / on_test_end); on_epoch_end(logs
                with val_ keys)
            on_train_end

        Checkpointing callbacks run after all others in each hook. ``deterministic=True`` turns on
        torch's deterministic algorithms for this fit only. ``num_workers``: DataLoader workers (None:
        in-process for in-memory data, a few for image files); augmentation is seeded per sample, so it
        does not change results. ``cache_features``: while the bottom groups stay frozen and nothing is
        augmented, run them once and train the rest on cached outputs (docs/performance.md).
        ``augment=True`` while only the head trains in every epoch (FrozenBackbone) trains it on
        un-augmented, cached features (the linear-probe choice; said in the log and summary());
        ``augment="always"`` augments every epoch, frozen or not. ``steps_per_epoch``: train each epoch
        on the first N batches of its (reshuffled) pass, as Keras;
        ``validation_freq``: validate every N epochs, or after the listed 1-based epochs.

        Data and tasks (docs/data.md, docs/tasks.md): ``augment`` is True/False, a preset ("light",
        "randaugment", "trivialaugment", "autoaugment"), a timm auto_augment string ("rand-m9-mstd0.5"),
        ``finetunekit.data.augment.Augment(...)`` (random erasing) or a torchvision v2 transform.
        ``class_weight`` ("balanced" or {class: weight}) or ``sample_weight`` (one per sample) weight the
        training loss per sample (Keras semantics); ``sampling_weights`` ("balanced" or one per sample)
        draws training samples by weight instead, seeded by (seed, epoch)."""
        verbose = check_fit_args(batch_size, epochs, initial_epoch, validation_split, verbose)
        freq = fit_options.check_validation_freq(validation_freq)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None and self.optimizer is not None and self._compute is not None
        if self.seed is not None:
            seed_everything(self.seed)
        dist = run_for(self)  # [distributed] DDP / sharding when launched by torchrun; else pass-through
        imbalance = Imbalance(class_weight, sample_weight, sampling_weights, self.num_classes, self.task)
        self._augment_choice = self._choose_augment(augment, x, initial_epoch, epochs, cache_features,
                                                    dist.active, sample_weight, steps_per_epoch)  # fmt: skip
        frozen_defaults.announce(self._augment_choice, verbose)
        train, val = setup.fit_data(self._prepare, x, y, validation_split=validation_split,
                                    validation_data=validation_data, augment=self._augment_choice.augment,
                                    split_seed=lambda: dist.shared_seed(self.seed),
                                    attach=imbalance.attach)  # fmt: skip
        self._compiled.metrics.threshold = self._threshold
        if self.class_names is None and train.class_names is not None:
            self.class_names = list(train.class_names)
        args = setup.FitArgs(batch_size, epochs, verbose, list(callbacks or []), shuffle, num_workers,
                             cache_features, steps_per_epoch, freq,
                             imbalance.loss_weighting(train, self._compiled.loss_fn))  # fmt: skip
        trainer = setup.build_trainer(
            self, view=self._model_view(), optimizer=self.optimizer, compiled=self._compiled,
            compute=self._compute, ema=self._ema, seed=self.seed, num_classes=self.num_classes,
            spec=self.spec, model_config=self._model_config(), train=train, val=val, dist=dist, args=args,
            bn_training=preflight.training_norms(self.strategy, self._norms_by_group, epochs),
        )  # fmt: skip
        self._planned_epochs, self.stop_training, self._trainer = epochs, False, trainer
        try:
            with deterministic_mode(deterministic):
                trainer.fit(initial_epoch)
        except KeyboardInterrupt:  # keep the completed epochs, say how to resume
            self.history = trainer.callbacks.history
            loop = trainer.loop
            report_interrupt(trainer.callbacks, loop.epoch, loop.step if loop.tracker is not None else None,
                             epochs, trainer.steps_per_epoch)  # fmt: skip
            raise
        finally:
            self._trainer, self._last_fit = None, trainer.outcome()
        self.history = trainer.callbacks.history
        return trainer.callbacks.history

    def _choose_augment(self, augment: Any, x: Any, first: int, epochs: int, cache_features: bool,
                        ddp: bool, sample_weight: Any, steps_per_epoch: int | None) -> Any:  # fmt: skip
        """fit's augmentation: ``augment=True`` while only the head trains means cached, un-augmented
        features when the cache can run (training.frozen_defaults)."""
        assert self._compiled is not None
        mixing = bool(self._compiled.mixup or self._compiled.cutmix)
        resizing = self._compiled.progressive_resizing is not None
        cache_off = feature_cache.disabled_reason(cache_features, ddp, mixing, resizing)
        if sample_weight is not None or steps_per_epoch is not None:
            cache_off = cache_off or "per-sample weights or a partial pass"
        plans = [self.plan(e) for e in range(first, epochs)]
        return frozen_defaults.choose_augment(augment, plans, x, cache_off=cache_off,
                                              train_bn=self.strategy.train_bn)  # fmt: skip
