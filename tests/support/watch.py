"""Watching a session grow in the store while it records."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import xarray as xr


@dataclass
class Watched:
    #: what ``look`` returned for each view of the recording session
    seen: list[Any] = field(default_factory=list)
    #: why a look failed (before the first chunk or piece is stored, for example)
    errors: list[str] = field(default_factory=list)


@contextmanager
def watching_recording(store: Any, look: Callable[[xr.Dataset], Any], every_s: float = 0.3) -> Iterator[Watched]:
    """While the block runs, every ``every_s`` open the store's newest session when it lists as
    ``recording`` and keep ``look(dataset)``; the thread is joined when the block ends."""
    out = Watched()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                listed = store.sessions()
                if len(listed) and listed["status"].iloc[-1] == "recording":
                    out.seen.append(look(store.open(listed.index[-1])))
            except Exception as exc:  # nothing stored yet
                out.errors.append(str(exc))
            time.sleep(every_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield out
    finally:
        done.set()
        watcher.join()
