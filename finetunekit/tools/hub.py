"""Share a fine-tuned model on the Hugging Face Hub in timm's own format.

``save_for_hub`` writes what timm's ``push_to_hf_hub`` writes (it calls timm's ``save_for_hf``):
``config.json`` with the architecture, ``pretrained_cfg`` (input size, mean/std, interpolation) and the
label names, ``model.safetensors`` with timm's native state dict, and a ``README.md`` model card with the
metrics and the fine-tuning strategy. So anyone can use it without finetunekit:
``timm.create_model("hf-hub:org/repo", pretrained=True)`` (or ``"local-dir:folder"``).

finetunekit resizes the whole image to the input size (no centre crop), so the card's config says
``crop_pct=1.0``: timm's eval transform then preprocesses the way the model was trained.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetunekit.errors import ConfigError, FineTuneKitError, MissingDependencyError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILES = ("config.json", "model.safetensors", "README.md")


class HubError(FineTuneKitError, RuntimeError):
    """The Hugging Face Hub refused or could not be reached."""


def _timm_model(ft: Any) -> Any:
    model = getattr(ft, "eval_model", ft.model)
    if not str(ft.spec).startswith("timm/") or not hasattr(model, "pretrained_cfg"):
        raise ConfigError(
            f"save_for_hub needs a timm backbone; this model is {ft.spec!r}. Expected 'timm/<name>' or "
            "'hf-hub:org/repo', which timm.create_model can rebuild. Fix: fine-tune a timm backbone, or "
            "share the ft.save() folder (FineTuner.load reads it)."
        )
    return model


def _metrics(ft: Any, metrics: Mapping[str, float] | None) -> dict[str, float]:
    """What the card reports: the given metrics, else the last epoch of the fit's History."""
    if metrics is not None:
        return {str(k): float(v) for k, v in metrics.items()}
    record = getattr(getattr(ft, "history", None), "history", None) or {}
    return {k: float(v[-1]) for k, v in record.items() if v and isinstance(v[-1], (int, float))}


def model_card(ft: Any, repo_name: str, metrics: Mapping[str, float]) -> str:
    """A README.md with Hub metadata, the base model, strategy, classes, metrics and usage."""
    strategy = json.dumps(ft.strategy.config(), sort_keys=True)
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()) or "| (none recorded) | |"
    size = "x".join(str(v) for v in ft.data_config.input_size[1:])
    names = ft.class_names or [str(i) for i in range(ft.num_classes)]
    return f"""---
tags:
- image-classification
- timm
- finetunekit
library_name: timm
---
# {repo_name}

An image classifier fine-tuned with [finetunekit](https://pypi.org/project/finetunekit/) from
`{ft.spec}` ({ft.num_classes} classes, {size} input).

- Fine-tuning strategy: `{strategy}`
- Softmax temperature (calibration): {float(getattr(ft, "temperature", 1.0)):.4f}
- Classes: {", ".join(f"`{n}`" for n in names)}

## Metrics

| metric | value |
|---|---|
{rows}

## Use it

```python
import timm, torch
model = timm.create_model("hf-hub:ORG/{repo_name}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
temperature = {float(getattr(ft, "temperature", 1.0)):.4f}  # calibrated; 1.0 = none
probabilities = torch.softmax(model(transform(image).unsqueeze(0)) / temperature, 1)
```

`config.json` holds the label names (`label_names`) in class order.
"""


def save_for_hub(
    ft: Any, folder: str | os.PathLike[str], *, metrics: Mapping[str, float] | None = None
) -> Path:
    """Write config.json, model.safetensors and README.md (timm's Hub layout) into ``folder``."""
    from timm.models import save_for_hf

    model = _timm_model(ft)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"folder={str(folder)!r} is a file; expected a folder path, e.g. 'hub/my_model'")
    names = ft.class_names or [str(i) for i in range(ft.num_classes)]
    data = ft.data_config
    extra = {"temperature": float(getattr(ft, "temperature", 1.0)), "strategy": ft.strategy.config(),
             "base_model": ft.spec}  # fmt: skip
    save_for_hf(
        model, str(folder), safe_serialization=True,
        model_config={"label_names": list(names), "finetunekit": extra},
        data_config={"input_size": tuple(data.input_size), "mean": tuple(data.mean), "std": tuple(data.std),
                     "interpolation": data.interpolation, "crop_pct": 1.0, "crop_mode": "center"},
    )  # fmt: skip
    card = model_card(ft, folder.resolve().name, _metrics(ft, metrics))
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def _check_push(repo_id: Any) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise ConfigError(
            f"repo_id={repo_id!r} is invalid; expected 'owner/name', e.g. 'my-org/digits-lite0'"
        )
    if importlib.util.find_spec("huggingface_hub") is None:
        raise MissingDependencyError('push_to_hub needs huggingface_hub. Fix: pip install "finetunekit[hub]"')
    from huggingface_hub import constants

    from finetunekit.backbones.hub_source import PROBE_TIMEOUT_S, hub_reachable

    fix = (
        "Fix: run it where the Hub is reachable, or write the folder with ft.save_for_hub(folder) and "
        f"upload it later with `hf upload {repo_id} folder`."
    )
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push {repo_id!r}: HF_HUB_OFFLINE is set, so the Hub is not contacted. {fix}")
    if not hub_reachable():
        raise HubError(
            f"cannot push {repo_id!r}: the Hub ({constants.ENDPOINT}) did not answer within "
            f"{PROBE_TIMEOUT_S:g} s. {fix}"
        )


def push_to_hub(
    ft: Any, repo_id: str, *, token: str | None = None, private: bool = False,
    commit_message: str = "Add model fine-tuned with finetunekit", metrics: Mapping[str, float] | None = None,
) -> str:  # fmt: skip
    """Create ``repo_id`` if needed and upload :func:`save_for_hub`'s folder; returns the commit URL."""
    _timm_model(ft)
    _check_push(repo_id)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name="finetunekit")
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_for_hub(ft, Path(tmp) / repo.split("/")[-1], metrics=metrics)
            info = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=commit_message)
    except HfHubHTTPError as e:
        raise HubError(
            f"the Hub refused the push to {repo_id!r} ({str(e).splitlines()[0][:200]}). Expected a token "
            "with write access to that namespace. Fix: `hf auth login`, or pass token=..."
        ) from e
    return str(getattr(info, "commit_url", info))
