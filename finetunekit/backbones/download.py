"""Registry weights without a network: fail in seconds with the fix, not after a minute of retries.

Offline, ``timm.create_model(..., pretrained=True)`` asks the Hugging Face Hub for each candidate file
with five retries and exponential back-off (about 50 s) before it gives up, and a cached copy is only
used after that. So before a download we ask once, with a short timeout, whether the server (or the
proxy in ``HTTPS_PROXY``) accepts a connection. When it does not, or ``HF_HUB_OFFLINE=1`` is set,
huggingface_hub runs in its offline mode for the call: cached weights load at once, missing ones fail
at once, and the error says what to do.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

PROBE_TIMEOUT = 3.0  # seconds: a reachable server answers a TCP connect far sooner
_TRUE = {"1", "on", "yes", "true"}


def short_cause(error: BaseException, limit: int = 160) -> str:
    """``"OSError: first line of the message"``, cut at a word boundary (with "...") past ``limit``."""
    text = " ".join(str(error).split()) or "no message"
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
        text = cut.rstrip(",;:") + " ..."
    return f"{type(error).__name__}: {text}"


def hub_offline_env() -> bool:
    """Whether the user asked huggingface_hub to stay offline (``HF_HUB_OFFLINE=1``)."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _connect_target(url: str) -> tuple[str, int]:
    """Where a request for ``url`` connects first: the proxy from the environment, else the server."""
    proxy = urllib.request.getproxies().get(urlsplit(url).scheme)
    parts = urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when a TCP connection to ``url``'s server (or proxy) opens within ``timeout``; else why."""
    host, port = _connect_target(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:  # DNS failure, refused, unreachable network, timeout
        return f"{host}:{port} is unreachable ({short_cause(e, 80)})"


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return "https://huggingface.co"


@contextmanager
def hub_access() -> Iterator[str | None]:
    """Yield why the Hub cannot be used (None when it can); while it cannot, huggingface_hub is in
    offline mode, so cached files load without a network round trip and missing ones fail at once."""
    reason = "HF_HUB_OFFLINE=1 is set" if hub_offline_env() else unreachable(hub_endpoint())
    if reason is None:
        yield None
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield reason
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # what HF_HUB_OFFLINE=1 sets, for this call only
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved


def torch_hub_cached(url: str) -> bool:
    """Whether torch.hub already holds the file ``url`` downloads (torchvision's weights)."""
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)).is_file()
