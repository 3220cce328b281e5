"""The OpenWebRX client.

Without a server: the accumulation fed with real encoder bytes split anywhere (the protocol
page's section 12 vector and random audio), the retry schedule, the registry's factory, the
politeness gate and the error it raises for a frequency outside the profile.  Against the
simulator (real sockets, no mocks): see the tests further down."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from dataclasses import replace
from typing import Any, Iterator, Literal

import numpy as np
import pytest

from sdrlab import timing
from sdrlab.acquire import capture_metrics
from sdrlab.capture import Capture, Receiver
from sdrlab.errors import ConfigError, ReceiverBusy, ReceiverCannotTune, ReceiverDown, ReceiverError, ReceiverStalled
from sdrlab.receivers import KiwiOptions, OwrxOptions, OwrxReceiver, make_receiver
from sdrlab.receivers import owrxwire as ow
from sdrlab.receivers._hooks import SessionGate
from sdrlab.receivers.owrxbuffers import AudioBuffer, Rows
from sdrlab.receivers.window import Window
from sdrlab.sim.owrx import Band, Emitter, OwrxConfig, OwrxFaults, OwrxSimServer, Profile
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
    ref = _reference(stream)
    assert np.array_equal(seg.samples, ref) and seg.n_samples == 36000
    assert dec.syncs == 18 and dec.jumps == 0 and dec.hunted == 0
    assert np.all(np.diff(seg.message_end) > 0) and seg.mode == "nfm"
    assert abs(seg.rate_hz / 12000 - 1) < 1e-3  # receipt times at the nominal rate
    # the encoder-exact reconstruction tracks the audio (ADPCM, not the input itself)
    assert np.corrcoef(seg.samples.astype(float), audio.astype(float))[0, 1] > 0.99


def _reference(stream: bytes) -> np.ndarray:
    """The reference decoding of one encoder's SYNC-framed stream (SYNC frames taken out)."""
    return np.concatenate([ow.decode_adpcm(stream[i + 8 : i + 8 + ow.SYNC_BLOCK],
                                           ow.AdpcmState(*np.frombuffer(stream[i + 4 : i + 8], "<i2").tolist()))[0]
                           for i in range(0, len(stream), ow.SYNC_SIZE + ow.SYNC_BLOCK)])


@pytest.mark.parametrize("resync", [False, True])
@pytest.mark.parametrize("inside", [None, 1, 4, 6, 7])  # a message boundary that many bytes into the restart's SYNC
def test_an_encoder_restart_mid_block_costs_nothing_with_resync(resync: bool, inside: int | None) -> None:
    rng = np.random.default_rng(3)
    audio = (8000 * np.sin(2 * np.pi * 700 * np.arange(12000) / 12000)).astype(np.int16)
    old, new = ow.AudioEncoder().encode(audio[:5000]), ow.AudioEncoder().encode(audio[5000:])  # 2500 B: mid-block
    stream = old + new
    cuts = {int(c) for c in rng.integers(1, len(stream), 60)} - set(range(len(old) + 1, len(old) + 8))
    if inside is not None:
        cuts.add(len(old) + inside)
    dec, out = ow.AudioDecoder(resync=resync), []
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)]):
        out.append(dec.feed(stream[a:b]))
    got = np.concatenate(out)
    want = np.concatenate([_reference(old), _reference(new)])
    if resync:
        assert np.array_equal(got, want) and dec.hunted == 0 and dec.jumps == 1
    else:  # the browser's way: the rest of the old block decoded from the restart's bytes, then a hunt
        assert got.size < want.size and not np.array_equal(got[5000:5100], want[5000:5100]) and dec.hunted > 0


def test_resync_holds_back_only_what_could_begin_a_sync_frame() -> None:
    audio = (3000 * np.sin(np.arange(4000) / 5)).astype(np.int16)
    stream = ow.AudioEncoder().encode(audio)
    ref = _reference(stream)
    for tail in (b"S", b"SY", b"SYNC\x10\x00", b"SYx"):  # ADPCM bytes that may begin a SYNC frame, or not
        dec = ow.AudioDecoder(resync=True)
        first = dec.feed(stream[:100] + tail)
        held = 0 if tail == b"SYx" else len(tail)
        assert first.size == 2 * (100 - 8 + len(tail) - held) and np.array_equal(first[:184], ref[:184])


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


# ---- against the simulator: real client, real server, loopback sockets ------------------------
CENTER, RATE = 145_000_000, 2_400_000
TONE_HZ = 145_500_000  # NFM, 1 kHz tone, 2.5 kHz deviation
CARRIER_HZ = 144_700_000
SCENE = Band(-100.0, (Emitter(TONE_HZ, -62.0, "nfm", "tone", tone_hz=1000.0, deviation_hz=2500.0),
                      Emitter(CARRIER_HZ, -70.0)))
PROFILES = (
    Profile("rtlsdr", "2m", "RTL-SDR", "2m", CENTER, RATE, TONE_HZ, band=SCENE),
    Profile("rtlsdr", "2m-high", "RTL-SDR", "2m high", 146_000_000, RATE, 146_500_000, band=SCENE),
    Profile("rtlsdr", "70cm", "RTL-SDR", "70cm", 433_800_000, RATE, 433_500_000, band=Band(-96.0)),
)
#: one simulated receiver per test that changes or breaks it
RECEIVERS = ("owrx-a", "owrx-plus", "owrx-profile", "owrx-away", "owrx-full", "owrx-zombie", "owrx-fail",
             "owrx-restart", "owrx-double", "owrx-raw", "owrx-plus-old", "owrx-two-sdrs")
FAST = OwrxOptions(connect_spacing=0.0, backoff_delay=0.3, backoff_retries=1, config_timeout=1.0,
                   connect_delay=0.2, reconnect_delay=0.2)


def _config(rid: str) -> OwrxConfig:
    plus = rid.startswith("owrx-plus")
    version = "v1.2.121" if rid == "owrx-plus" else "v1.2.2"  # Plus 1.2.2: only its messages tell
    comp: Literal["adpcm", "none"] = "none" if rid == "owrx-raw" else "adpcm"
    profiles: tuple[Profile, ...] = PROFILES
    if rid == "owrx-two-sdrs":  # a second SDR on 2 m, centred elsewhere
        profiles += (Profile("airspy", "2m", "Airspy", "2m", 145_200_000, RATE, TONE_HZ, band=SCENE),)
    return OwrxConfig(id=rid, fork="plus" if plus else "upstream", version=version, name=f"Sim {rid}", lat=45.02,
                      lon=7.29, asl=600, profiles=profiles, audio_compression=comp, fft_compression=comp)


@pytest.fixture(scope="module")
def sim() -> Iterator[OwrxSimServer]:
    with OwrxSimServer([_config(r) for r in RECEIVERS]) as server:
        yield server


def _rx(sim: OwrxSimServer, rid: str, options: OwrxOptions = FAST) -> OwrxReceiver:
    return OwrxReceiver(rid, "127.0.0.1", sim.ports[rid], options=options)


def _capture(rx: OwrxReceiver, freq: float, seconds: float) -> Capture:
    return asyncio.run(rx.capture(freq, seconds))


def _session(sim: OwrxSimServer, rid: str) -> Any:
    """The truth of the receiver's last receiver session (what it was sent, its channel)."""
    return [s for s in sim.truth(rid).sessions if s.kind == "receiver"][-1]


def _tone_hz(x: np.ndarray, rate: float) -> float:
    spec = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / x.size)


def _blocks_db(x: np.ndarray, n: int = 32) -> np.ndarray:
    """Mean power of consecutive blocks of ``n`` bins, dB."""
    k = x.size // n * n
    return np.asarray(10 * np.log10(np.mean(10 ** (x[:k].reshape(-1, n) / 10), axis=1)))


def _measured_rate(seg: Any, edge_s: float = 1.0) -> float:
    """Audio samples per second of receipt time between the most punctual message of the first and
    of the last ``edge_s`` (the server sends in bursts ~0.1 s late at random: a least-squares fit
    over 4 s scatters by 1.5 %; the earliest arrivals bound the sample clock from below)."""
    t = (seg.message_receipt_ns - seg.message_receipt_ns[0]) / 1e9
    n = seg.message_end.astype(float)
    late = t - n / seg.nominal_rate_hz
    first, last = t < edge_s, t > t[-1] - edge_s
    a = np.flatnonzero(first)[np.argmin(late[first])]
    b = np.flatnonzero(last)[np.argmin(late[last])]
    return float((n[b] - n[a]) / (t[b] - t[a]))


@pytest.mark.parametrize("rid, hw", [("owrx-a", "OpenWebRX v1.2.2"), ("owrx-plus", "OpenWebRX+ v1.2.121")])
def test_nfm_capture_matches_the_scene(sim: OwrxSimServer, rid: str, hw: str) -> None:
    t0 = time.monotonic()
    cap = _capture(_rx(sim, rid), TONE_HZ, 4.0)
    took = time.monotonic() - t0
    truth = _session(sim, rid)
    # the receiver was tuned as asked: integer offset, the mode's passband from `modes`
    assert (truth.offset_freq, truth.mod, truth.low_cut, truth.high_cut) == (500_000, "nfm", -4000, 4000)
    assert (cap.kind, cap.protocol, cap.hw, cap.timing) == ("audio", "openwebrx", hw, "receipt")
    assert cap.info is not None and cap.info.name == f"Sim {rid}" and cap.info.position == (45.02, 7.29)
    assert cap.info.altitude == 600 and cap.info.sample_rate == 12000 and (cap.low_cut, cap.high_cut) == (-4000, 4000)
    assert len(cap.audio) == 1 and cap.events == [] and cap.bad_frames == 0
    seg = cap.audio[0]
    assert (seg.frequency_hz, seg.center_freq_hz, seg.profile, seg.end_reason) == (TONE_HZ, CENTER, "rtlsdr|2m",
                                                                                   "complete")
    # audio: 4 s of samples at 12 kHz by the receipt clock (within 1 %), the tone at 1 kHz
    rate = _measured_rate(seg)
    assert abs(rate / 12000 - 1) < 0.01, rate
    assert abs(seg.n_samples / 12000 - 4.0) < 0.15 and took < 6.0
    assert abs(_tone_hz(seg.samples[2400:].astype(float), 12000.0) - 1000.0) < 1.0  # the SDR clock, not receipt
    # S-meter: the values sent, in order, and their mean within 1 dB of the channel's true power
    assert cap.smeter is not None and cap.smeter.n >= 12
    sent = truth.smeter
    i = sent.index(cap.smeter.power[0])
    assert sent[i : i + cap.smeter.n] == cap.smeter.power.tolist()
    assert abs(10 * np.log10(np.mean(cap.smeter.power)) - 10 * np.log10(truth.truth_power)) < 1.0
    # FFT rows: ~9 a second, tagged with the profile; each is exactly the reference decoding of a row
    # the server made, and within 0.2 dB of it over any 32 bins away from narrow peaks (the
    # ADPCM error per bin is 0.08 dB rms: single bins of noise rows stray further)
    spec = cap.spectrum
    assert spec is not None and 30 <= spec.n_rows <= 40
    assert set(spec.center_freq_hz) == {CENTER} and set(spec.samp_rate_hz) == {RATE} and set(spec.fft_size) == {4096}
    freqs = ow.fft_bin_frequencies(CENTER, RATE, 4096)
    away = np.ones(4096, bool)
    away[: ow.FFT_SETTLE_BINS] = False
    for f in (TONE_HZ, CARRIER_HZ):  # narrow peaks: ADPCM slope overload (protocol page 11.3)
        away &= np.abs(freqs - f) > 10_000
    made = {ow.decode_fft(ow.encode_fft(r), 4096)[0].tobytes(): r for r in truth.fft_rows}
    # what the data model and metrics make of it (uncalibrated, relative): the scene's levels
    m, _ = capture_metrics(cap, replace(STATION, id=rid))
    assert abs(m["noise_floor_dbfs_hz"] - SCENE.noise_dbfs_hz) < 0.5
    assert abs(m["signal_power_dbfs"] - (-62.0)) < 1.0
    assert abs(m["channel_power_fft_dbfs"] - 10 * np.log10(truth.truth_power)) < 1.0
    for row in spec.db[-5:]:
        sent_row = made[row.tobytes()]  # KeyError: not a row the server made, decoded exactly
        err = row - sent_row
        assert np.sqrt(np.mean(err[away] ** 2)) < 0.1
        assert np.max(np.abs(_blocks_db(row[away]) - _blocks_db(sent_row[away]))) < 0.2


def test_a_frequency_outside_the_current_profile_is_refused_without_retuning(sim: OwrxSimServer) -> None:
    with pytest.raises(ReceiverCannotTune, match=r"435 MHz .* outside the current profile rtlsdr\|2m "
                                                 r"\(143.8-146.2 MHz") as err:
        _capture(_rx(sim, "owrx-a"), 435_000_000, 2.0)
    assert isinstance(err.value, ConfigError) and err.value.partial.info.name == "Sim owrx-a"
    truth = _session(sim, "owrx-a")
    assert truth.offset_freq is None and not truth.started  # nothing was sent to the receiver
    assert sim.truth("owrx-a").profiles == {"rtlsdr": "rtlsdr|2m"}


def _later(seconds: float, action: Any) -> threading.Thread:
    """Run ``action`` in ``seconds`` from another thread (as another listener would)."""
    def run() -> None:
        time.sleep(seconds)
        action()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_a_profile_change_ends_the_segment_and_retunes_inside_the_new_one(sim: OwrxSimServer) -> None:
    th = _later(2.0, lambda: sim.change_profile("owrx-profile", "rtlsdr|2m-high"))
    cap = _capture(_rx(sim, "owrx-profile"), TONE_HZ, 4.5)
    th.join()
    assert len(cap.audio) == 2, cap.events
    a, b = cap.audio
    assert "profile changed by another listener" in a.end_reason and "center_freq 145000000 -> 146000000" in a.end_reason
    assert any("profile changed" in e for e in cap.events)
    assert (a.center_freq_hz, a.profile, b.center_freq_hz, b.profile) == (CENTER, "rtlsdr|2m", 146e6, "rtlsdr|2m-high")
    assert a.frequency_hz == b.frequency_hz == TONE_HZ and b.end_reason == "complete"
    assert 1.5 < a.n_samples / 12000 < 2.5 and b.n_samples / 12000 > 1.5  # the audio before the change is kept
    assert _session(sim, "owrx-profile").offset_freq == -500_000  # retuned to the same frequency
    assert abs(_tone_hz(b.samples[2400:].astype(float), 12000.0) - 1000.0) < 2.0
    spec = cap.spectrum
    assert spec is not None and set(spec.center_freq_hz) == {CENTER, 146e6}
    # no row within two frame periods after the change (they mix the two spectra)
    first_new = spec.receipt_ns[np.argmax(spec.center_freq_hz == 146e6)]
    last_old = spec.receipt_ns[spec.center_freq_hz == CENTER][-1]
    assert first_new - last_old >= 2 * 1e9 / 9


def test_a_profile_change_away_from_the_frequency_ends_the_capture_keeping_what_arrived(sim: OwrxSimServer) -> None:
    th = _later(1.5, lambda: sim.change_profile("owrx-away", "rtlsdr|70cm"))
    t0 = time.monotonic()
    cap = _capture(_rx(sim, "owrx-away"), TONE_HZ, 5.0)
    th.join()
    assert time.monotonic() - t0 < 3.5
    assert len(cap.audio) == 1 and "profile changed" in cap.audio[0].end_reason
    assert 1.0 < cap.audio[0].n_samples / 12000 < 2.0
    assert any("outside the new profile rtlsdr|70cm" in e for e in cap.events)
    assert cap.spectrum is not None and set(cap.spectrum.center_freq_hz) == {CENTER}


def test_a_full_receiver_gives_receiver_busy_after_the_backoffs(sim: OwrxSimServer) -> None:
    sim.set_faults("owrx-full", OwrxFaults(full=True))
    t0 = time.monotonic()
    with pytest.raises(ReceiverBusy, match=r"backoff \(Too many clients\); gave up after 2 attempts") as err:
        _capture(_rx(sim, "owrx-full"), TONE_HZ, 2.0)
    assert 0.3 <= time.monotonic() - t0 < 3.0  # one wait of backoff_delay (0.3-0.375 s) between the attempts
    part = err.value.partial
    assert part.info.name == "Sim owrx-full" and part.hw == "OpenWebRX v1.2.2" and len(part.events) == 2
    assert sim.truth("owrx-full").arrivals >= 2


def test_a_silent_receiver_after_receiver_details_gives_a_named_error(sim: OwrxSimServer) -> None:
    sim.set_faults("owrx-zombie", OwrxFaults(zombie=True))
    t0 = time.monotonic()
    with pytest.raises(ReceiverStalled, match="silent after receiver_details: no config within 1 s") as err:
        _capture(_rx(sim, "owrx-zombie"), TONE_HZ, 2.0)
    assert 2.0 <= time.monotonic() - t0 < 5.0
    assert err.value.partial.info.name == "Sim owrx-zombie" and not err.value.partial.has_data
    assert sim.users("owrx-zombie") == 0  # both silent connections were closed


def test_sdr_failure_gives_receiver_down_keeping_the_audio(sim: OwrxSimServer) -> None:
    th = _later(1.5, lambda: sim.fail_sdr("owrx-fail"))
    with pytest.raises(ReceiverDown, match="No SDR Devices available") as err:
        _capture(_rx(sim, "owrx-fail"), TONE_HZ, 4.0)
    th.join()
    part = err.value.partial
    assert len(part.audio) == 1 and 1.0 < part.audio[0].n_samples / 12000 < 2.0
    assert part.spectrum is not None and part.smeter is not None and part.has_data


def test_a_failed_sdr_moves_the_capture_to_the_next_one_as_a_new_segment(sim: OwrxSimServer) -> None:
    th = _later(1.5, lambda: sim.fail_sdr("owrx-two-sdrs", "rtlsdr"))
    cap = _capture(_rx(sim, "owrx-two-sdrs"), TONE_HZ, 3.5)
    th.join()
    assert any('receiver says: SDR device "RTL-SDR" has failed' in e for e in cap.events), cap.events
    assert len(cap.audio) == 2 and "sdr_id rtlsdr -> airspy" in cap.audio[0].end_reason
    a, b = cap.audio
    assert (a.profile, b.profile, b.center_freq_hz, b.frequency_hz) == ("rtlsdr|2m", "airspy|2m", 145.2e6, TONE_HZ)
    assert _session(sim, "owrx-two-sdrs").offset_freq == 300_000  # retuned on the new SDR
    assert b.n_samples / 12000 > 1.5 and abs(_tone_hz(b.samples[-12000:].astype(float), 12000.0) - 1000.0) < 2.0


def test_an_encoder_restart_mid_block_is_survived(sim: OwrxSimServer) -> None:
    th = _later(1.5, lambda: sim.restart_encoders("owrx-restart"))
    cap = _capture(_rx(sim, "owrx-restart"), TONE_HZ, 3.0)
    th.join()
    # decoding follows the new encoder from its SYNC frame (split across messages or not): nothing dropped
    assert len(cap.audio) == 1 and abs(cap.audio[0].n_samples / 12000 - 3.0) < 0.15
    x = cap.audio[0].samples[-12000:].astype(float)
    assert abs(_tone_hz(x, 12000.0) - 1000.0) < 2.0
    assert any("1 with a state jump" in e and " 0 bytes dropped" in e for e in cap.events), cap.events


def test_a_stop_request_ends_the_capture_at_once_keeping_what_arrived(sim: OwrxSimServer) -> None:
    rx = _rx(sim, "owrx-a")
    t0 = time.monotonic()
    rx.should_stop = lambda: time.monotonic() - t0 > 1.0
    cap = _capture(rx, TONE_HZ, 10.0)
    assert rx.stopped and time.monotonic() - t0 < 2.0 and "stopped by request" in cap.events
    assert 0.5 < cap.n_samples / 12000 < 1.5


def test_two_fft_rows_in_one_message_are_both_kept(sim: OwrxSimServer) -> None:
    sim.set_faults("owrx-double", OwrxFaults(double_fft=True))
    cap = _capture(_rx(sim, "owrx-double"), TONE_HZ, 2.0)
    spec = cap.spectrum
    assert spec is not None and cap.bad_frames == 0 and 14 <= spec.n_rows <= 22
    assert np.count_nonzero(np.diff(spec.receipt_ns) == 0) >= spec.n_rows // 2 - 1  # pairs share a receipt time


def test_the_sessions_window_decides_the_span_by_receipt_time(sim: OwrxSimServer) -> None:
    rx = _rx(sim, "owrx-a")
    rx.window = Window(2.0, [rx.station])
    holder: list[int] = []

    def start() -> None:
        holder.append(timing.gps_now_ns())
        rx.window.set_start(holder[0])

    th = _later(1.5, start)  # data arrives and is held for about a second before the start is known
    cap = _capture(rx, TONE_HZ, 10.0)
    th.join()
    start_unix = holder[0] + (timing.GPS_EPOCH_UNIX_S - timing.DEFAULT_GPS_UTC_OFFSET_S) * 10**9
    seg = cap.audio[0]
    assert len(cap.audio) == 1 and seg.message_receipt_ns[0] >= start_unix
    assert seg.message_receipt_ns[-1] < start_unix + 2 * 10**9
    assert abs(seg.n_samples / 12000 - 2.0) < 0.1
    assert cap.spectrum is not None and cap.spectrum.receipt_ns.min() >= start_unix
    assert cap.smeter is not None and cap.smeter.receipt_ns.min() >= start_unix


def test_uncompressed_audio_and_rows_arrive_exactly(sim: OwrxSimServer) -> None:
    cap = _capture(_rx(sim, "owrx-raw"), TONE_HZ, 2.0)
    truth = _session(sim, "owrx-raw")
    assert len(cap.audio) == 1 and abs(cap.audio[0].n_samples / 12000 - 2.0) < 0.15
    assert abs(_tone_hz(cap.audio[0].samples[2400:].astype(float), 12000.0) - 1000.0) < 1.0
    spec = cap.spectrum
    assert spec is not None and spec.n_rows >= 14
    sent = {np.asarray(r, np.float32).tobytes() for r in truth.fft_rows}
    assert all(row.tobytes() in sent for row in spec.db[-5:])  # float32 as made, bin for bin


def test_an_early_openwebrx_plus_is_told_by_its_own_messages(sim: OwrxSimServer) -> None:
    cap = _capture(_rx(sim, "owrx-plus-old"), TONE_HZ, 1.0)
    assert cap.hw == "OpenWebRX+ v1.2.2" and cap.info is not None and cap.info.version == "v1.2.2"


def test_audio_is_the_reference_decoding_of_the_bytes_the_server_sent(sim: OwrxSimServer) -> None:
    """End to end over the socket: the capture's audio is, sample for sample, the encoder-exact
    reference decoding of the ADPCM stream the server sent (its messages split anywhere, SYNC
    frames included), not an approximation of it."""
    cap = _capture(_rx(sim, "owrx-a"), TONE_HZ, 3.0)
    wire = bytes(_session(sim, "owrx-a").audio_wire)
    assert wire[:4] == ow.SYNC_MAGIC
    ref = _reference(wire)
    [seg] = cap.audio
    got = seg.samples
    assert got.size > 0.8 * 3.0 * 12000
    # the capture starts where its window does: find its first samples in the reference stream
    head = got[:256]
    starts = [k for k in range(ref.size - head.size) if ref[k] == head[0] and np.array_equal(ref[k:k + head.size], head)]
    assert starts, "the capture's first samples are not in the reference decoding of what was sent"
    k = starts[0]
    np.testing.assert_array_equal(got, ref[k:k + got.size])
