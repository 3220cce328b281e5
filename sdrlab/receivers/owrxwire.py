"""OpenWebRX wire format (``openwebrx-protocol.md`` section 4): binary frame types, the IMA ADPCM
codec of audio and FFT frames, SYNC framing, the uncompressed formats and the dB scale of FFT rows.

Pure code shared by the client and the simulator; the tests check it against the protocol page's
test vectors (taken from the real csdr codec and browser decoder) and a scalar transcription of
the algorithm, not against this module.

The codec is csdr's IMA/DVI ADPCM (``AdpcmCodec``): 4 bits per sample, two samples per byte,
**low nibble first**; encoder state = (step ``index`` 0..88, ``predictor`` int16), reset (0, 0).
Its per-sample recursion runs in C: the standard library's ``audioop`` (``audioop-lts`` from
Python 3.13) implements the same Stichting Mathematisch Centrum algorithm with the high nibble
first, so bytes are nibble-swapped on the way in and out (one ``bytes.translate``).  Measured
on this machine (2 busy cores): 3.4-4.5 ns per decoded sample, 13 ns with the SYNC framing of
:class:`AudioDecoder` fed 2 kB messages, against 1.4 us per sample for the same loop in Python
(the browser form below): 300 streams of 12 kHz audio cost ~50 ms of CPU per second, not 5 s.
An FFT row of 4096 bins decodes in 55 us.
The bytes are the encoder's exactly (section 12 vectors; a random-audio comparison with the
scalar transcription in the tests), which is why no other ADPCM library (they differ in nibble
order, block headers or rounding) would do.

Two decodings of the same bytes exist (section 4.2): the **reference** one (the encoder's own
reconstruction, for measurements) and the **browser** one, which latches the step size at the
end of each nibble, starts it at 0 on reset and does not reload it on SYNC (a +0.11 dB offset
on FFT rows, a DC offset after SYNC on audio).  The browser form runs per nibble in Python and
exists for parity tests only.

Units: audio samples int16 (32767 ~ full scale of the demodulated audio); FFT rows in dB as the
server computes them (section 4.5: relative to complex full scale, -70 dB offset, Hamming window).
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import ReceiverProtocolError

with warnings.catch_warnings():  # deprecated in 3.11-3.12, gone in 3.13 (then: audioop-lts)
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "COMPRESSIONS", "FFT_PAD", "FFT_SETTLE_BINS", "FRAME_AUDIO", "FRAME_FFT", "FRAME_HD_AUDIO", "FRAME_SECONDARY_FFT",
    "INDEX_ADJUST", "STEP_TABLE", "SYNC_BLOCK", "SYNC_MAGIC", "SYNC_SIZE", "AdpcmState", "AudioDecoder",
    "AudioEncoder", "BrowserState", "decode_adpcm", "decode_adpcm_browser", "decode_audio", "decode_fft",
    "encode_adpcm", "encode_fft", "fft_bin_frequencies", "fft_frame_bytes", "float_to_int16", "noise_density",
    "split_frame", "tone_db", "window_sums",
]

# ---- binary frames (section 4): one type byte, then the payload ------------------------------
FRAME_FFT = 0x01  # one spectrum row (or several, see decode_fft), fft_compression
FRAME_AUDIO = 0x02  # audio at output_rate, audio_compression
FRAME_SECONDARY_FFT = 0x03  # like 0x01 with secondary_fft_size bins
FRAME_HD_AUDIO = 0x04  # audio at hd_output_rate, same codec stream as 0x02
#: values of ``audio_compression`` / ``fft_compression`` in ``config``
COMPRESSIONS = ("adpcm", "none")

# ---- the codec tables (section 4.2, standard IMA) --------------------------------------------
INDEX_ADJUST = (-1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8)
STEP_TABLE = (
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66, 73, 80, 88, 97,
    107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449, 494, 544, 598, 658, 724, 796,
    876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871,
    5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500, 20350, 22385,
    24623, 27086, 29794, 32767,
)
MAX_INDEX = len(STEP_TABLE) - 1  # 88

# ---- audio SYNC framing (section 4.3, >= 1.2.0) ----------------------------------------------
SYNC_MAGIC = b"SYNC"
#: "SYNC" + int16 index + int16 predictor (little-endian)
SYNC_SIZE = 8
#: ADPCM bytes (2 samples each) between two SYNC frames
SYNC_BLOCK = 1001
_SYNC_STATE = struct.Struct("<hh")

# ---- FFT frames (section 4.4) -----------------------------------------------------------------
#: padding samples (equal to the first value) encoded before each ADPCM FFT row
FFT_PAD = 10
#: dB values travel as int16 hundredths of a dB (truncated toward zero)
FFT_SCALE = 100
#: bins at the start of every ADPCM row that carry the codec's start-up from (0, 0): the 10
#: padding samples do not absorb it (the step index overshoots to ~80 and decays one per sample),
#: so these bins (the low band edge) are off by up to several dB.  Measured with the exact
#: codec on flat rows from -160 to +20 dB: every bin from 38 on within 0.2 dB; on rows with
#: 0.45 dB bin-to-bin scatter the error settles to its steady 0.08 dB rms by bin 40.
FFT_SETTLE_BINS = 40
#: the server's cosmetic offset of FFT rows (section 4.4 step 3)
FFT_OFFSET_DB = -70.0

#: nibble swap: audioop packs the first sample in the high nibble, csdr in the low one
_SWAP = bytes(((b & 0x0F) << 4) | (b >> 4) for b in range(256))

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AdpcmState:
    """Codec state: step-table ``index`` (0..88) and ``predictor`` (the last reconstructed sample)."""

    index: int = 0
    predictor: int = 0


@dataclass(frozen=True)
class BrowserState:
    """The browser decoder's state: as :class:`AdpcmState` plus the latched ``step`` (0 after reset)."""

    index: int = 0
    predictor: int = 0
    step: int = 0


def split_frame(message: bytes) -> tuple[int, bytes]:
    """(type byte, payload) of a binary WebSocket message; unknown types are the caller's to ignore."""
    if not message:
        raise ReceiverProtocolError("empty binary frame (no type byte)")
    return message[0], bytes(message[1:])


# ---- the codec ---------------------------------------------------------------------------------
def encode_adpcm(samples: npt.ArrayLike, state: AdpcmState = AdpcmState()) -> tuple[bytes, AdpcmState]:
    """ADPCM bytes of an even number of int16 samples, and the state after them (csdr's
    ``encodeSample``: three comparisons against step, step/2, step/4, then the encoder's own
    decoding updates the state)."""
    x = np.ascontiguousarray(samples, dtype="<i2")
    if x.size % 2:
        raise ValueError(f"ADPCM packs two samples per byte: {x.size} samples is odd")
    if x.size == 0:
        return b"", state
    raw, (pred, index) = audioop.lin2adpcm(x.tobytes(), 2, (state.predictor, state.index))
    return raw.translate(_SWAP), AdpcmState(int(index), int(pred))


def decode_adpcm(data: bytes, state: AdpcmState = AdpcmState()) -> tuple[I16, AdpcmState]:
    """The reference (encoder-exact) decoding: two int16 samples per byte, low nibble first, and
    the state after them."""
    if not data:
        return np.zeros(0, np.int16), state
    raw, (pred, index) = audioop.adpcm2lin(bytes(data).translate(_SWAP), 2, (state.predictor, state.index))
    out: I16 = np.frombuffer(raw, dtype=np.int16).copy()
    return out, AdpcmState(int(index), int(pred))


def decode_adpcm_browser(data: bytes, state: BrowserState = BrowserState()) -> tuple[I16, BrowserState]:
    """The browser's decoding (U JS ``AudioEngine.js``): per nibble, update the index, take the
    difference from the step latched at the end of the previous nibble, update the predictor,
    latch the new step.  Equal to :func:`decode_adpcm` once a nibble has latched the step; per
    nibble in Python (about 1 us a sample): for parity tests, not for data."""
    index, pred, step = state.index, state.predictor, state.step
    out = np.empty(2 * len(data), dtype=np.int16)
    k = 0
    for byte in bytes(data):
        for code in (byte & 0x0F, byte >> 4):
            index = min(max(index + INDEX_ADJUST[code], 0), MAX_INDEX)
            diff = step >> 3
            if code & 1:
                diff += step >> 2
            if code & 2:
                diff += step >> 1
            if code & 4:
                diff += step
            pred = min(max(pred - diff if code & 8 else pred + diff, -32768), 32767)
            step = STEP_TABLE[index]
            out[k] = pred
            k += 1
    return out, BrowserState(index, pred, step)


# ---- audio: SYNC framing --------------------------------------------------------------------
class AudioEncoder:
    """The server's audio encoder (csdr ``AdpcmEncoder``): with ``sync``, a SYNC frame carrying
    the state before every 1001st byte, the first one before the very first byte.  Samples may
    come in any number; an odd one waits for its partner."""

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.state = AdpcmState()
        self._counter = 0  # bytes left in the current block; 0: a SYNC frame is due
        self._pending = np.zeros(0, np.int16)

    def encode(self, samples: npt.ArrayLike) -> bytes:
        x = np.concatenate([self._pending, np.asarray(samples, dtype=np.int16).ravel()])
        even = x.size & ~1
        self._pending = x[even:]
        out = bytearray()
        pos, n_bytes = 0, even // 2
        while pos < n_bytes:
            if self.sync and self._counter <= 0:
                out += SYNC_MAGIC + _SYNC_STATE.pack(self.state.index, self.state.predictor)
                self._counter = SYNC_BLOCK
            take = min(self._counter, n_bytes - pos) if self.sync else n_bytes - pos
            raw, self.state = encode_adpcm(x[2 * pos : 2 * (pos + take)], self.state)
            out += raw
            pos += take
            self._counter -= take
        return bytes(out)


_HUNT, _HEADER, _DATA = 0, 1, 2


class AudioDecoder:
    """The client's audio decoder for type 0x02 and 0x04 payloads (one instance for both: they
    are one codec stream).  With ``sync`` (servers >= 1.2.0) it follows the browser's state
    machine byte for byte, so a SYNC frame may be split anywhere across messages: hunt ``S``,
    ``Y``, ``N``, ``C`` (a mismatching byte is dropped and the match restarts at the next one),
    collect the 4 state bytes and load them, decode 1001 bytes, hunt again.  Bytes seen while
    hunting or in a header give no samples.  ``browser``: decode as the browser does (parity
    tests) instead of the encoder-exact reference.

    ``resync`` (not the browser's behaviour): a SYNC frame inside a block's data is taken as an
    encoder restart mid-block (a DSP rebuilt on the server): decoding switches to the new
    encoder's state there, instead of decoding its SYNC and what follows with the old state until
    the block count runs out and then hunting (up to one block of wrong samples and one block
    dropped).  So that a SYNC frame split across messages is seen too, the last bytes of a message
    that could begin one (``S``, ``SY``... up to 7 bytes) wait for the next message.  A false match
    needs "SYNC" and a valid step index (0..88) among random ADPCM bytes: about once in 2^41 bytes.

    Counters for the record: ``syncs`` (SYNC frames applied), ``hunted`` (bytes dropped while
    hunting), ``jumps`` (SYNC frames whose state differed from the decoder's own: the encoder
    restarted or bytes were lost), ``samples``.
    """

    def __init__(self, sync: bool = True, *, browser: bool = False, resync: bool = False) -> None:
        self.sync = sync
        self.browser = browser
        self.resync = resync
        self.reset()

    def reset(self) -> None:
        self._state = BrowserState()
        self._phase = _HUNT if self.sync else _DATA
        self._matched = 0
        self._header = bytearray()
        self._left = 0
        self._decoded_any = False
        self._carry = b""
        self.syncs = self.hunted = self.jumps = self.samples = 0

    @property
    def state(self) -> AdpcmState:
        return AdpcmState(self._state.index, self._state.predictor)

    def _decode(self, data: bytes) -> I16:
        if self.browser:
            out, self._state = decode_adpcm_browser(data, self._state)
        else:
            out, st = decode_adpcm(data, AdpcmState(self._state.index, self._state.predictor))
            self._state = BrowserState(st.index, st.predictor, STEP_TABLE[st.index])
        self._decoded_any = True
        self.samples += out.size
        return out

    def _restart_in(self, data: bytes, pos: int, take: int) -> int:
        """``resync``: the bytes of this block to decode before an encoder restart inside it (then
        the block ends there and the restart's SYNC is read next), else ``take``."""
        q = _restart_at(data, pos, pos + take)
        if q < 0:
            return take
        self._left = q - pos  # the block ends at the restart: hunt finds its SYNC at once
        return q - pos

    def feed(self, payload: bytes) -> I16:
        """The samples of one message's payload (possibly none)."""
        data = bytes(payload)
        if not self.sync:
            return self._decode(data)
        if self._carry:
            data, self._carry = self._carry + data, b""
        parts: list[I16] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._phase == _HUNT:
                want = SYNC_MAGIC[self._matched :]
                if data.startswith(want, pos):  # the usual case: the magic right here
                    pos += len(want)
                    self._matched = 4
                elif data[pos] == SYNC_MAGIC[self._matched]:
                    self._matched += 1
                    pos += 1
                else:
                    self.hunted += self._matched + 1
                    self._matched = 0
                    pos += 1
                if self._matched == 4:
                    self._phase, self._matched = _HEADER, 0
                    self._header.clear()
            elif self._phase == _HEADER:
                take = min(4 - len(self._header), n - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) == 4:
                    index, pred = _SYNC_STATE.unpack(bytes(self._header))
                    if not 0 <= index <= MAX_INDEX:
                        raise ReceiverProtocolError(f"audio SYNC frame with step index {index} (0..88)")
                    if self._decoded_any and (index, pred) != (self._state.index, self._state.predictor):
                        self.jumps += 1
                    self._state = BrowserState(index, pred, self._state.step)  # the step is not reloaded
                    self.syncs += 1
                    self._phase, self._left = _DATA, SYNC_BLOCK
            else:
                take = min(self._left, n - pos)
                if self.resync:
                    take = self._restart_in(data, pos, take)
                    if pos + take == n and self._left > take:  # the message ends inside the block
                        hold = _sync_prefix(data, pos, n)
                        self._carry = data[n - hold :]
                        take -= hold
                        n -= hold
                parts.append(self._decode(data[pos : pos + take]))
                pos += take
                self._left -= take
                if self._left == 0:
                    self._phase = _HUNT
        if not parts:
            return np.zeros(0, np.int16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _restart_at(data: bytes, pos: int, end: int) -> int:
    """Where in ``data[pos:end]`` a whole SYNC frame with a valid step index starts, or -1."""
    q = data.find(SYNC_MAGIC, pos, end)
    while q >= 0:
        if q + SYNC_SIZE <= len(data) and 0 <= _SYNC_STATE.unpack_from(data, q + 4)[0] <= MAX_INDEX:
            return q
        q = data.find(SYNC_MAGIC, q + 1, end)
    return -1


def _sync_prefix(data: bytes, start: int, end: int) -> int:
    """How many bytes at the end of ``data[start:end]`` (at most 7) could begin a SYNC frame."""
    for k in range(min(SYNC_SIZE - 1, end - start), 0, -1):
        tail = data[end - k : end]
        if not SYNC_MAGIC.startswith(tail[:4]):
            continue
        if k >= 6 and not 0 <= _SYNC_STATE.unpack_from(tail + b"\0\0", 4)[0] <= MAX_INDEX:
            continue
        return k
    return 0


def decode_audio(payload: bytes, compression: str, decoder: AudioDecoder | None = None) -> I16:
    """One audio message's samples: ``adpcm`` through ``decoder`` (which keeps the stream's
    state), ``none``: int16 PCM as sent (little-endian)."""
    if compression == "none":
        if len(payload) % 2:
            raise ReceiverProtocolError(f"uncompressed audio of {len(payload)} bytes (int16 samples)")
        return np.frombuffer(payload, dtype="<i2").astype(np.int16)
    if compression != "adpcm":
        raise ReceiverProtocolError(f"unknown audio_compression {compression!r} (known: adpcm, none)")
    if decoder is None:
        raise ValueError("ADPCM audio needs the stream's AudioDecoder")
    return decoder.feed(payload)


def float_to_int16(x: npt.ArrayLike) -> I16:
    """The server's audio float -> int16 (section 4.1): limited to +-1, times 32767, truncated."""
    y = np.trunc(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0) * np.float32(32767.0))
    out: I16 = y.astype(np.int16)
    return out


# ---- FFT rows (section 4.4) ---------------------------------------------------------------------
def fft_frame_bytes(fft_size: int, compression: str = "adpcm") -> int:
    """Payload bytes of one row: (N + 10) / 2 with ADPCM, 4 N uncompressed."""
    return (fft_size + FFT_PAD) // 2 if compression == "adpcm" else 4 * fft_size


def encode_fft(db: npt.ArrayLike) -> bytes:
    """One ADPCM FFT row as the server sends it: codec reset, values as int16 hundredths of a dB
    truncated toward zero, 10 padding samples equal to the first value, then the N values."""
    v = np.asarray(db, dtype=np.float32).ravel()
    if v.size % 2 or v.size == 0:
        raise ValueError(f"an FFT row has an even number of bins, got {v.size}")
    h = np.clip(np.trunc(v * np.float32(FFT_SCALE)), -32768, 32767).astype(np.int16)
    raw, _ = encode_adpcm(np.concatenate([np.full(FFT_PAD, h[0], np.int16), h]))
    return raw


def decode_fft(payload: bytes, fft_size: int, compression: str = "adpcm", *, browser: bool = False) -> F32:
    """The rows of one FFT message, shape (rows, fft_size), dB.  A message normally holds one row
    but may hold several (a lagging server); any other length is a protocol error.  ADPCM rows:
    decoder reset per row, 10 padding samples dropped, /100 (``browser``: the browser's decoding,
    0.11 dB high on typical rows).  The first :data:`FFT_SETTLE_BINS` bins of an ADPCM row carry
    the codec's start-up and should be masked by whoever measures on them."""
    if fft_size <= 0 or fft_size % 2:
        raise ValueError(f"fft_size must be a positive even number, got {fft_size}")
    size = fft_frame_bytes(fft_size, compression)
    if compression not in COMPRESSIONS:
        raise ReceiverProtocolError(f"unknown fft_compression {compression!r} (known: adpcm, none)")
    if not payload or len(payload) % size:
        raise ReceiverProtocolError(f"FFT frame of {len(payload)} bytes is not a multiple of {size} "
                                    f"(fft_size {fft_size}, {compression})")
    rows = len(payload) // size
    if compression == "none":
        out: F32 = np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(rows, fft_size)
        return out
    res = np.empty((rows, fft_size), dtype=np.float32)
    for r in range(rows):
        chunk = payload[r * size : (r + 1) * size]
        s = decode_adpcm_browser(chunk)[0] if browser else decode_adpcm(chunk)[0]
        res[r] = s[FFT_PAD:] / np.float32(FFT_SCALE)
    return res


def fft_bin_frequencies(center_freq: float, samp_rate: float, fft_size: int) -> npt.NDArray[np.float64]:
    """Absolute frequency (Hz) of each row bin: ``center - samp_rate/2 + k samp_rate / N`` (DC at N/2)."""
    k = np.arange(fft_size, dtype=np.float64)
    return np.asarray(center_freq - samp_rate / 2 + k * (samp_rate / fft_size), dtype=np.float64)


def window_sums(fft_size: int) -> tuple[float, float]:
    """(sum w, sum w^2) of the server's symmetric Hamming window 0.54 - 0.46 cos(2 pi i / (N - 1))."""
    i = np.arange(fft_size)
    w = 0.54 - 0.46 * np.cos(2 * np.pi * i / (fft_size - 1))
    return float(w.sum()), float((w * w).sum())


def tone_db(amplitude: float, fft_size: int) -> float:
    """Row value (dB) of a complex tone of ``amplitude`` (1 = full scale) exactly on a bin:
    20 log10(A sum w) - 70 (section 4.5)."""
    return 20.0 * math.log10(amplitude * window_sums(fft_size)[0]) + FFT_OFFSET_DB


def noise_density(db: npt.ArrayLike, samp_rate: float, fft_size: int) -> npt.NDArray[np.float64]:
    """Noise density (full scale^2 / Hz) that a bin value of ``db`` means for white noise:
    10^((dB + 70) / 10) / (samp_rate sum w^2) (section 4.5)."""
    return np.asarray(10.0 ** ((np.asarray(db, dtype=np.float64) - FFT_OFFSET_DB) / 10.0)) / (
        samp_rate * window_sums(fft_size)[1])
