"""One error hierarchy for sdrlab.

Every error sdrlab raises on purpose derives from :class:`SdrlabError`.  Receiver errors carry the
station they concern and, where data had already arrived, the partial capture (``partial``), so a
caller never loses what was acquired before the failure.
"""

from __future__ import annotations

from typing import Any

#: the longest quotation of an input in a message (a 10 MB file must not make a 10 MB message)
QUOTE_CHARS = 200
#: the most problems a :class:`CatalogError` message lists
MAX_PROBLEMS = 20


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters saying how much was left out."""
    text = value if isinstance(value, str) else None
    if text is not None and len(text) > limit:
        return f"{text[:limit]!r}... ({len(text) - limit} more characters)"
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown) - limit} more characters)"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class SdrlabError(Exception):
    """Base class of every sdrlab error."""


class ConfigError(SdrlabError):
    """A setting or parameter is invalid (bad URL, frequency out of range, negative duration...)."""


class CatalogError(SdrlabError):
    """The station catalogue is malformed or names an unknown station."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:  # the message stays readable (and bounded) however many problems there are
            shown = [f"  - {_cut(p, 2 * QUOTE_CHARS)}" for p in self.problems[:MAX_PROBLEMS]]
            if len(self.problems) > MAX_PROBLEMS:
                shown.append(f"  ... and {len(self.problems) - MAX_PROBLEMS} more")
            message = message + "\n" + "\n".join(shown)
        super().__init__(message)


class ReceiverError(SdrlabError):
    """A receiver could not deliver (what it delivered before failing is in ``partial``)."""

    #: retried by the client's policy (True) or fatal for that receiver (False)
    retryable: bool = False

    def __init__(self, message: str, *, station: str | None = None, partial: Any = None) -> None:
        self.station = station
        self.partial = partial
        self.detail = message
        prefix = f"{station}: " if station else ""
        super().__init__(prefix + message)

    def __reduce__(self) -> tuple[Any, ...]:  # keep keyword fields across pickling (dask)
        return (_rebuild_receiver_error, (type(self), self.detail, self.station, self.partial))


def _rebuild_receiver_error(
    cls: type[ReceiverError], detail: str, station: str | None, partial: Any
) -> ReceiverError:
    return cls(detail, station=station, partial=partial)


class ReceiverBusy(ReceiverError):
    """All channels of the receiver are in use (``too_busy``), after the configured retries."""

    retryable = True


class ReceiverUnreachable(ReceiverError):
    """TCP connect or WebSocket upgrade failed, after the configured retries."""

    retryable = True


class ReceiverProtocolError(ReceiverError):
    """The receiver sent something that is not its protocol (garbage, wrong sizes...)."""


class ReceiverAuthError(ReceiverError):
    """The receiver refused the login (``badp`` other than 0)."""


class ReceiverDown(ReceiverError):
    """The receiver is disabled, updating or in backup (``down``)."""


class ReceiverLimitError(ReceiverError):
    """The receiver's per-IP time limit was reached (``ip_limit``)."""


class ReceiverCannotTune(ReceiverError, ConfigError):
    """The receiver cannot serve the request as asked without changing something that is not the
    client's to change: a frequency outside its current profile (OpenWebRX: a profile change
    retunes the receiver for every listener), a mode it does not offer."""


class ReceiverStalled(ReceiverError):
    """The receiver stopped sending and reconnecting did not help."""

    retryable = True


class AcquisitionError(SdrlabError):
    """An acquisition as a whole failed (no station succeeded, bad parameters...)."""


class AnalysisRefused(SdrlabError):
    """The data cannot support the analysis asked of it (e.g. TDoA on receipt-timed captures):
    ``stations`` names the stations concerned, ``reason`` says why."""

    def __init__(self, message: str, *, stations: list[str] | None = None, reason: str = "") -> None:
        self.stations = list(stations or [])
        self.reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refused, (str(self), self.stations, self.reason))


def _rebuild_refused(message: str, stations: list[str], reason: str) -> AnalysisRefused:
    return AnalysisRefused(message, stations=stations, reason=reason)


class StorageError(SdrlabError):
    """The session store failed (unreachable, permission, corrupt session...)."""


class IndexStoreError(SdrlabError):
    """The metrics index failed (named so as not to shadow the builtin ``IndexError``)."""


class NotebookRunError(SdrlabError):
    """A cell of a notebook batch run (``sdrlab run``) failed.  ``result`` (a
    :class:`sdrlab.runs.RunResult`) names the cell; the partial output notebook is kept."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result
