"""The OpenWebRX client.

Without a server: the accumulation fed with real encoder bytes split anywhere (the protocol
page's section 12 vector and random audio), the retry schedule, the registry's factory, the
politeness gate and the error it raises for a frequency outside the profile.  Against the
simulator (real sockets, no mocks): see the tests further down."""

from __future__ import annotations

import asyncio
import pickle
import time
from dataclasses import replace

import numpy as np
import pytest

from sdrlab.capture import Capture, Receiver
from sdrlab.errors import ConfigError, ReceiverCannotTune, ReceiverError
from sdrlab.receivers import KiwiOptions, OwrxOptions, OwrxReceiver, make_receiver
from sdrlab.receivers import owrxwire as ow
from sdrlab.receivers._hooks import SessionGate
from sdrlab.receivers.owrxbuffers import AudioBuffer, Rows
from sdrlab.stations import Station

STATION = Station(id="it-test", name="Test", host="127.0.0.1", port=1, latitude=45.0, longitude=7.0,
                  protocol="openwebrx")

#: protocol page section 12: audio in, bytes out of the real csdr encoder, the decoder's output
VECTOR_IN = [0, 1000, 2000, 3000, 4000, 3000, 2000, 1000, 0, -1000, -2000, -3000, -4000, -3000, -2000, -1000]
VECTOR_BYTES = bytes.fromhex("53594e430000000070777787becb3b34")
VECTOR_OUT = [0, 11, 41, 104, 240, 533, 1164, 1074, 5, -1014, -1941, -3024, -4043, -3116, -2033, -1014]


def _assemble(stream: bytes, cuts: list[int], rate: float = 12000.0) -> tuple[AudioBuffer, ow.AudioDecoder]:
    """Feed ``stream`` cut at ``cuts`` through one decoder into a buffer, as the client does
    (receipt times one message period apart)."""
    dec, buf = ow.AudioDecoder(), AudioBuffer(rate)
    t = 1_700_000_000 * 10**9
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        s = dec.feed(stream[a:b])
        if s.size:
            t += round(s.size / rate * 1e9)
            buf.add(s, t)
    return buf, dec


@pytest.mark.parametrize("cuts", [[], [1], [3, 6], [4, 5, 9, 10], list(range(1, 16))])
def test_section_12_vector_decodes_exactly_however_the_messages_split(cuts: list[int]) -> None:
    assert ow.AudioEncoder().encode(VECTOR_IN) == VECTOR_BYTES
    buf, _ = _assemble(VECTOR_BYTES, cuts)
    seg = buf.segment("complete", {})
    assert seg.samples.tolist() == VECTOR_OUT
    assert seg.message_end[-1] == len(VECTOR_OUT) and seg.message_end.size == seg.message_receipt_ns.size


def test_random_audio_split_anywhere_is_the_reference_decoding_with_one_entry_per_message() -> None:
    rng = np.random.default_rng(7)
    audio = (6000 * np.sin(2 * np.pi * 1000 * np.arange(36000) / 12000) + rng.normal(0, 500, 36000)).astype(np.int16)
    stream = ow.AudioEncoder().encode(audio)  # 18 SYNC frames
    cuts = sorted(set(rng.integers(1, len(stream), 400).tolist()))
    buf, dec = _assemble(stream, cuts)
    seg = buf.segment("complete", {"mode": "nfm"})
    # the reference decoding of the whole stream, SYNC frames taken out
    ref = np.concatenate([ow.decode_adpcm(stream[i + 8 : i + 8 + ow.SYNC_BLOCK],
                                          ow.AdpcmState(*np.frombuffer(stream[i + 4 : i + 8], "<i2").tolist()))[0]
                          for i in range(0, len(stream), ow.SYNC_SIZE + ow.SYNC_BLOCK)])
    assert np.array_equal(seg.samples, ref) and seg.n_samples == 36000
    assert dec.syncs == 18 and dec.jumps == 0 and dec.hunted == 0
    assert np.all(np.diff(seg.message_end) > 0) and seg.mode == "nfm"
    assert abs(seg.rate_hz / 12000 - 1) < 1e-3  # receipt times at the nominal rate
    # the encoder-exact reconstruction tracks the audio (ADPCM, not the input itself)
    assert np.corrcoef(seg.samples.astype(float), audio.astype(float))[0, 1] > 0.99


def test_held_data_before_a_window_start_is_dropped_by_receipt_time() -> None:
    buf = AudioBuffer(12000.0)
    for k in range(10):
        buf.add(np.full(100, k, np.int16), 1000 + k)
    buf.drop_before(1004)
    seg = buf.segment("complete", {})
    assert seg.n_samples == 600 and seg.samples[0] == 4 and seg.message_receipt_ns[0] == 1004
    rows = Rows()
    for k in range(6):
        rows.db.append(np.full(8, -k, np.float32))
        rows.receipt.append(100 + k)
        rows.center.append(145e6)
        rows.rate.append(2.4e6)
        rows.size.append(8)
        rows.smeter.append(k)
        rows.smeter_receipt.append(100 + k)
    rows.drop_before(103, 1, 2)  # only what came from index 1 (rows) / 2 (readings) on is held
    spec, sm = rows.spectrum(), rows.readings()
    assert spec is not None and sm is not None
    assert spec.receipt_ns.tolist() == [100, 103, 104, 105] and sm.receipt_ns.tolist() == [100, 101, 103, 104, 105]


def test_backoff_waits_at_least_the_base_doubling_to_the_cap() -> None:
    opt = OwrxOptions()
    for attempt, low in ((1, 32), (2, 64), (3, 128), (5, 512), (9, 512)):
        d = [opt.backoff(attempt) for _ in range(50)]
        assert low <= min(d) and max(d) <= 1.25 * low
    assert 0.1 <= OwrxOptions(backoff_delay=0.1).backoff(1) <= 0.125


def test_registry_gives_an_owrx_client_with_default_options_for_another_protocols() -> None:
    rx = make_receiver(STATION, KiwiOptions(low_cut=-3000.0))
    assert isinstance(rx, OwrxReceiver) and isinstance(rx, Receiver) and rx.protocol == "openwebrx"
    assert rx.options == OwrxOptions() and rx.url == "ws://127.0.0.1:1/ws/"
    own = OwrxOptions(mode="am", low_cut=-5000, high_cut=5000)
    assert make_receiver(STATION, own).options is own  # type: ignore[attr-defined]
    assert make_receiver(STATION).options == OwrxOptions()  # type: ignore[attr-defined]
    assert OwrxReceiver("x", "::1", 8073, path_prefix="/sdr/").url == "ws://[::1]:8073/sdr/ws/"


def test_cannot_tune_is_a_config_error_that_keeps_the_partial_capture_across_pickling() -> None:
    cap = Capture("it-test", 435e6, -4000, 4000, 5.0, kind="audio", protocol="openwebrx")
    err = ReceiverCannotTune("outside the profile", station="it-test", partial=cap)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ConfigError) and isinstance(back, ReceiverError)
    assert back.partial.frequency_hz == 435e6 and str(back) == "it-test: outside the profile"


def test_session_gate_spaces_connections_and_caps_them() -> None:
    gate = SessionGate()

    async def main() -> list[float]:
        starts: list[float] = []
        t0 = time.monotonic()

        async def one() -> None:
            async with gate.hold("h", 1, 2, 0.2, lambda: False) as ok:
                assert ok
                starts.append(time.monotonic() - t0)
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one() for _ in range(3)))
        return sorted(starts)

    s = asyncio.run(main())
    assert s[0] < 0.1 and 0.2 <= s[1] < 0.4  # spaced
    assert s[2] >= 0.5  # the third waited for a session to end (limit 2)
