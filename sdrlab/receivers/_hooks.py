"""What every receiver client shares around its protocol: the acquisition's stop request polled
safely, pauses between attempts that a stop cuts short, and retry delays spread so that clients
that failed together do not come back in lockstep."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["StopHooks", "jitter"]


def jitter(seconds: float) -> float:
    """A retry delay spread over +-25 %: captures that lost their receivers together (an
    overloaded host, a network blip) must not come back in lockstep and overload it again."""
    return seconds * random.uniform(0.75, 1.25)


class StopHooks:
    """``should_stop`` (set by the acquisition, polled) and ``stopped`` (True once a stop ended
    the capture) of the :class:`~sdrlab.capture.Receiver` protocol."""

    should_stop: Callable[[], bool] | None = None
    stopped: bool = False

    def stop_requested(self) -> bool:
        """Whether to stop now; an exception in ``should_stop`` counts as "go on"."""
        if self.stopped:
            return True
        if self.should_stop is None:
            return False
        try:
            self.stopped = bool(self.should_stop())
        except Exception:
            log.debug("should_stop failed", exc_info=True)
        return self.stopped

    async def _pause(self, seconds: float) -> bool:
        """Sleep between attempts; False when a stop was requested meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.stop_requested():
            left = end - loop.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.25))
        return False
