"""timm's Hub and folder sources as backbones: ``"hf-hub:org/repo"`` and ``"local-dir:/path"``.

``timm.is_model`` is False for such names, yet ``timm.create_model`` loads them (their config.json names
the architecture). Without a network, huggingface_hub retries for about half a minute before it fails;
we check once, with a short timeout, whether the Hub answers, and then either use the local cache
(offline mode for this call) or fail at once with the fixes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, FineTuneKitError, PretrainedWeightsUnavailableError
from .base import Backbone

PREFIXES = ("hf-hub:", "local-dir:")
PROBE_TIMEOUT_S = 3.0


def hub_name(spec: str) -> str | None:
    """The timm name (``hf-hub:...`` / ``local-dir:...``) of a spec, with or without ``timm/``; else None."""
    name = spec.removeprefix("timm/")
    return name if name.startswith(PREFIXES) else None


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``) opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode for one call: cached files are used without HEAD requests."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _unavailable(name: str, why: str) -> PretrainedWeightsUnavailableError:
    repo = name.removeprefix("hf-hub:")
    return PretrainedWeightsUnavailableError(
        f"backbone {name!r}: {why}. Expected network access to the Hugging Face Hub or a cached copy. "
        f"Fix: on a connected machine run `hf download {repo} --local-dir DIR` and use 'local-dir:DIR', "
        "or set HF_HUB_OFFLINE=1 with the repo in the Hugging Face cache."
    )


def _check_local(name: str) -> None:
    folder = Path(name.removeprefix("local-dir:")).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"backbone {name!r}: {str(folder)!r} has no config.json; expected a folder written by "
            "ft.save_for_hub() or timm's save_for_hf (config.json + model.safetensors). Fix the path."
        )


def _hub_context(name: str) -> contextlib.AbstractContextManager[None]:
    """Offline mode when the Hub cannot be reached but the repo's config is cached; else fail fast."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or hub_reachable():
        return contextlib.nullcontext()
    cached = try_to_load_from_cache(name.removeprefix("hf-hub:"), "config.json")
    if isinstance(cached, str) and os.path.isfile(cached):
        return offline_mode()
    raise _unavailable(name, f"the Hub ({constants.ENDPOINT}) did not answer within {PROBE_TIMEOUT_S:g} s "
                             "and the repo is not in the local cache")  # fmt: skip


def build_hub(name: str, build_timm: Callable[..., Backbone], num_classes: int, **kwargs: Any) -> Backbone:
    """``build_timm`` for a Hub or folder source; ``build_kwargs`` then name the architecture, so
    ``FineTuner.load`` rebuilds it offline before loading the saved weights over it."""
    if name.startswith("local-dir:"):
        _check_local(name)
        context: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        context = _hub_context(name)
    try:
        with context:
            backbone = build_timm(name, num_classes, **kwargs)
    except FineTuneKitError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise _unavailable(name, f"timm could not load it ({type(e).__name__}: {str(e)[:200]})") from e
    model = backbone.model
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if architecture:
        backbone.build_kwargs["name"] = architecture
        backbone.build_kwargs["source"] = name
        if backbone.build_kwargs.get("image_size") is None:  # sizes the Hub config gave (ViT img_size)
            backbone.build_kwargs["image_size"] = list(backbone.data_config.input_size[1:])
    return backbone
