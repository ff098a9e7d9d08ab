"""MLflowLogger: the run's hyperparameters, per-epoch metrics (and optionally per-batch) and layer-group
LRs in an MLflow run. Needs the ``mlflow`` extra (``mlflow-skinny``); only rank 0 writes.

It talks to the tracking store through ``MlflowClient`` (never MLflow's global "active run"), so it
cannot end or overwrite a run the user's own code has open. Resume: the run id is part of the
callback's state, so a run resumed by BackupAndRestore continues the same MLflow run; steps the store
already holds (written before the interruption) are not written again. finetunekit's resume is exact,
so they would have the same values.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.tensorboard import check_update_freq, lr_by_group, run_hparams
from finetunekit.distributed.env import is_main_process
from finetunekit.errors import MissingDependencyError


class MLflowLogger(Callback):
    """Log a fit to MLflow.

    ``tracking_uri``: where runs go (None: MLflow's own default, ``MLFLOW_TRACKING_URI``).
    ``experiment_name`` is created when missing. ``update_freq``: "epoch", "batch" or N batches
    (``batch_<metric>`` at step = global batch). ``params`` / ``tags`` are added to the automatic
    params (backbone, strategy, optimizer, lr, epochs).
    """

    def __init__(
        self, experiment_name: str = "finetunekit", *, tracking_uri: str | None = None,
        run_name: str | None = None, update_freq: str | int = "epoch", log_lr: bool = True,
        params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.update_freq = check_update_freq("MLflowLogger", update_freq)
        self.log_lr = bool(log_lr)
        self.extra_params = dict(params or {})
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.run_id: str | None = None
        self._client: Any = None
        self._epoch = 0
        self._resumed = False
        self._done = {"epoch": -1, "batch": -1}  # last step the store already holds, on resume

    def _mlflow(self) -> Any:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise MissingDependencyError(
                'MLflowLogger needs mlflow. Fix: pip install "finetunekit[mlflow]" (mlflow-skinny)'
            ) from e
        return MlflowClient(tracking_uri=self.tracking_uri)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if not is_main_process():
            return
        self._client = self._mlflow()
        if self._resumed and self.run_id is not None:
            self._client.update_run(self.run_id, status="RUNNING")
            self._done = {"epoch": self._last_step("loss"), "batch": self._last_step("batch_loss")}
            return
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment else self._client.create_experiment(self.experiment_name)
        )
        run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self._done = {"epoch": -1, "batch": -1}
        params = run_hparams(self.tuner, self.params, self.extra_params)
        self._client.log_batch(self.run_id, params=[_param(k, v) for k, v in params.items()])

    def _last_step(self, key: str) -> int:
        history = self._client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def _log(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}{k}", float(v), now, step) for k, v in values.items()
                   if isinstance(v, (int, float)) and k not in ("batch", "size")]  # fmt: skip
        if self.log_lr:
            metrics += [
                Metric(f"{prefix}group_lr/{name}", lr, now, step)
                for name, lr in lr_by_group(self.tuner).items()
            ]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        step = self._epoch * int(self.params.get("steps") or 0) + batch
        if self.update_freq is None or (step + 1) % self.update_freq or self._client is None:
            return
        if step > self._done["batch"]:
            self._log(logs or {}, step, prefix="batch_")

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._client is not None and epoch > self._done["epoch"]:
            self._log(logs or {}, epoch)

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._client is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id, "FINISHED")
        self._client, self._resumed = None, False

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "epoch": self._epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        run_id = state.get("run_id")
        self.run_id = str(run_id) if run_id is not None else None
        self._epoch = int(state.get("epoch", 0))
        self._resumed = self.run_id is not None


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value))
