"""The Hugging Face hub as both loaders see it (base models in ``bases``, GLUE in ``data.glue``): whether an
environment flag is on, and whether the hub answers now, so a missing model or data set fails at once.

It imports nothing from mergecore: the loading layer's lowest piece (``bases`` is at its 300-line limit)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlsplit

TRUE = ("1", "true", "yes", "on")  # what an environment flag (HF_HUB_OFFLINE, ...) says to be on


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers at once: False when HF_HUB_OFFLINE is set or its host (or the HTTPS
    proxy) takes no connection within ``timeout`` s, so a missing model or data set fails now, not after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE:
        return False
    url = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("HF_ENDPOINT")
           or "https://huggingface.co")
    where = urlsplit(url if "://" in url else f"http://{url}")
    if not where.hostname:
        return False
    address, ok = (where.hostname, where.port or (443 if where.scheme == "https" else 80)), []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
            ok.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # a name lookup that hangs counts as unreachable
    return any(ok)
