"""``FineTuner.save`` / ``load`` / ``load_adapters``: one model folder writer (finetunekit.saving)."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
from torch import nn

from finetunekit import _assembly as assembly
from finetunekit._facade.base import TunerBase
from finetunekit.backbones.snapshot import backbone_state
from finetunekit.saving import model_folder as saving
from finetunekit.strategies import lora, resolve_strategy
from finetunekit.tasks import resolve_task
from finetunekit.tools.calibrate import check_temperature
from finetunekit.training import fsdp
from finetunekit.training.distributed import run_for
from finetunekit.validation import resolve_device

T = TypeVar("T", bound=TunerBase)


class PersistenceMethods(TunerBase):
    """Saving and loading model folders."""

    def save(self, path: str | os.PathLike[str], *, adapters_only: bool = False) -> None:
        """Write ``path/model.safetensors``, ``config.json`` and ``manifest.json`` atomically; no pickle.
        With LoRA the adapters are merged (a plain model folder, loadable without peft);
        ``adapters_only=True`` writes just the adapters and the head (``load_adapters`` reads them).

        Under DDP call it on every rank: rank 0 writes, the others wait until the files are complete
        (and raise if rank 0 could not write), so a ``load`` right after sees them."""
        extra: dict[str, Any] = {}
        if fsdp.is_sharded(self.model):  # [distributed] every rank gathers, rank 0 writes
            state = fsdp.full_state_dict(self.model)
        else:
            state, extra = lora.state_to_save(self.eval_model, self._backbone.head_path, adapters_only)
        config = {**self._model_config(), **extra}
        write = lambda: saving.save_model_folder(path, state, config)  # noqa: E731
        run_for(self).run_on_main(write, "save")  # [distributed] rank 0 writes, every rank waits

    def load_adapters(self: T, path: str | os.PathLike[str]) -> T:
        """Load a ``save(path, adapters_only=True)`` folder into this FineTuner's LoRA adapters and head."""
        state, _ = saving.load_model_folder(path)
        lora.load_adapters(self.model, self._backbone.head_path, state, str(path))
        return self

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str], *, device: str | torch.device = "auto",
             model: nn.Module | None = None, distributed: bool | str | None = None,
             verify: bool = True) -> T:  # fmt: skip
        """Rebuild a saved FineTuner without network. ``model=`` supplies the module for custom backbones.
        ``verify=False`` loads a folder without a manifest (values are still checked; docs/reliability.md)."""
        built, state, config = assembly.backbone_from_folder(path, model, verify=verify)
        self = cls.__new__(cls)
        self.seed, self.distributed, self.sync_bn = None, distributed, False  # [distributed]
        self.device, self.strategy = resolve_device(device), resolve_strategy(None)
        self._init_from_backbone(built, int(config["num_classes"]), int(config["in_chans"]),
                                 config.get("class_names"))  # fmt: skip
        assembly.load_weights(self.model, state, path, config)
        self._pretrained_state = backbone_state(self.model, built.head_path)  # the loaded starting point
        self._head_at_init = None  # [persist] a loaded model counts as trained
        self.temperature = check_temperature(config.get("temperature", 1.0))
        self.task, self._task_given = resolve_task(config.get("task"), False), True
        self.threshold = config.get("threshold", 0.5)
        return self
