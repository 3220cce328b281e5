"""What an OpenWebRX capture accumulates as messages arrive, and how it becomes the neutral
types of :mod:`sdrlab.capture`: the open audio segment (one int16 array per message with its
receipt time, unix ns) and the capture's FFT rows and S-meter readings (each tagged with the
profile in force at receipt).  Arrays are joined once, when a segment or the capture ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..capture import AudioSegment, SmeterReadings, SpectrumRows
from . import owrxwire as ow

__all__ = ["AudioBuffer", "Rows"]


class AudioBuffer:
    """The audio of the open segment: one array per message with its receipt time."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.chunks: list[ow.I16] = []
        self.receipts: list[int] = []
        self.n = 0
        #: samples already handed to a streaming sink (:meth:`take`)
        self.spilled = 0

    def add(self, samples: ow.I16, receipt_ns: int) -> None:
        self.chunks.append(samples)
        self.receipts.append(receipt_ns)
        self.n += int(samples.size)

    def drop_before(self, t_ns: int) -> None:
        k = sum(1 for r in self.receipts if r < t_ns)
        if k:
            del self.chunks[:k], self.receipts[:k]
            self.n = sum(int(c.size) for c in self.chunks)

    def take(self, reason: str, tune: dict[str, Any]) -> AudioSegment:
        """Streaming: the samples held so far as a part of the segment (``reason`` ``continues``
        while it goes on), and let go of them."""
        part = self.segment(reason, tune)
        self.spilled += self.n
        self.chunks, self.receipts, self.n = [], [], 0
        return part

    def segment(self, reason: str, tune: dict[str, Any]) -> AudioSegment:
        sizes = np.array([c.size for c in self.chunks], dtype=np.int64)
        samples = np.concatenate(self.chunks).astype(np.int16) if self.chunks else np.zeros(0, np.int16)
        return AudioSegment(samples=samples, nominal_rate_hz=float(self.rate), message_end=np.cumsum(sizes),
                            message_receipt_ns=np.array(self.receipts, dtype=np.int64), end_reason=reason, **tune)


@dataclass
class Rows:
    """FFT rows and S-meter readings of the whole capture (all connections)."""

    db: list[ow.F32] = field(default_factory=list)
    receipt: list[int] = field(default_factory=list)
    center: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    smeter: list[float] = field(default_factory=list)
    smeter_receipt: list[int] = field(default_factory=list)

    def drop_before(self, t_ns: int, since_row: int, since_smeter: int) -> None:
        """Drop what arrived before ``t_ns`` among the rows / readings from the given indices on."""
        k = since_row + sum(1 for r in self.receipt[since_row:] if r < t_ns)
        for lst in (self.db, self.receipt, self.center, self.rate, self.size):
            del lst[since_row:k]
        k = since_smeter + sum(1 for r in self.smeter_receipt[since_smeter:] if r < t_ns)
        del self.smeter[since_smeter:k], self.smeter_receipt[since_smeter:k]

    def spectrum(self) -> SpectrumRows | None:
        if not self.db:
            return None
        bins = max(self.size)
        out = np.full((len(self.db), bins), np.nan, dtype=np.float32)
        for i, row in enumerate(self.db):
            out[i, : row.size] = row
        return SpectrumRows(db=out, receipt_ns=np.array(self.receipt, np.int64),
                            center_freq_hz=np.array(self.center, np.float64),
                            samp_rate_hz=np.array(self.rate, np.float64), fft_size=np.array(self.size, np.int64))

    def take(self) -> tuple[SpectrumRows | None, SmeterReadings | None]:
        """Streaming: the rows and readings held so far, and let go of them."""
        out = self.spectrum(), self.readings()
        for lst in (self.db, self.receipt, self.center, self.rate, self.size, self.smeter, self.smeter_receipt):
            lst.clear()
        return out

    def readings(self) -> SmeterReadings | None:
        if not self.smeter:
            return None
        return SmeterReadings(power=np.array(self.smeter, np.float64),
                              receipt_ns=np.array(self.smeter_receipt, np.int64))
