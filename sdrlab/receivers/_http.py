"""One plain HTTP GET of a receiver's status page, shared by the protocols' status readers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

__all__ = ["get_page"]


def get_page(url: str, timeout: float, max_bytes: int) -> tuple[str | None, float, str | None]:
    """(text or None, latency ms, error or None) of ``url``: at most ``max_bytes`` read, decoded
    as UTF-8 (bad bytes replaced); an unreachable or failing page is its error in one short line."""
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http to a receiver)
            text = r.read(max_bytes).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, 1e3 * (time.perf_counter() - t), f"{type(exc).__name__}: {reason}"[:300]
    return text, 1e3 * (time.perf_counter() - t), None
