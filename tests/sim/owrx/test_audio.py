"""Audio of the simulated receivers: real demodulators (NFM, AM, USB) into ADPCM with SYNC frames
split across messages, at the client's output rate, squelch as section 5 says, uncompressed too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdrlab.receivers import owrxwire as W
from sdrlab.sim.owrx import OwrxSimServer

from .helpers import AM_HZ, CENTER, FM_CENTER, FM_HZ, START, TONE_HZ, USB_HZ, Recording, align_rows, burst_counts, dsp, run_record


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    x = audio.astype(np.float64) * np.hanning(audio.size)
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(audio.size, 1.0 / rate)[int(np.argmax(spec))])


def _rate(rec: Recording, skip_s: float = 0.5) -> float:
    """Samples per wall second from the block boundaries' receipt times after ``skip_s``.  A busy
    loop delays messages, never hurries them: the slope between the most punctual boundary of the
    first and of the last fifth (a fit through all of them follows a loaded machine's stalls)."""
    _, counts = rec.audio()
    t0 = counts[0][0]
    pts = np.array([(n, t - t0) for t, n in burst_counts(counts) if t - t0 > skip_s])
    n, t = pts[:, 0], pts[:, 1]
    late = t - n * (t[-1] - t[0]) / (n[-1] - n[0])  # against a first estimate of the rate
    edge = (t[-1] - t[0]) / 5
    first, last = np.flatnonzero(t <= t[0] + edge), np.flatnonzero(t >= t[-1] - edge)
    a, b = first[np.argmin(late[first])], last[np.argmin(late[last])]
    return float((n[b] - n[a]) / (t[b] - t[a]))


def test_nfm_tone_rate_and_sync_framing(sim: OwrxSimServer) -> None:
    rec = run_record(sim.ws_url("sim-up"), 4.0, [dsp(TONE_HZ - CENTER), START])
    audio, counts = rec.audio()
    truth = [s for s in sim.truth("sim-up").sessions if s.started][-1]
    assert 0 <= truth.audio_samples - audio.size <= 2048  # the server ran on after the client stopped
    assert _rate(rec) == pytest.approx(12000, rel=0.01)
    assert _peak_hz(audio[6000:], 12000) == pytest.approx(1000.0, abs=3.0)
    assert np.sqrt(np.mean(audio[6000:].astype(float) ** 2)) > 3000  # the AGC brought it up
    stream = b"".join(p for _, p in rec.frames(W.FRAME_AUDIO))
    syncs = [i for i in range(len(stream)) if stream.startswith(b"SYNC", i)]
    assert syncs[:4] == [0, 1009, 2018, 3027] and all(b - a == 1009 for a, b in zip(syncs, syncs[1:]))
    bounds = np.cumsum([len(p) for _, p in rec.frames(W.FRAME_AUDIO)])
    split = [s for s in syncs if np.any((bounds > s) & (bounds < s + W.SYNC_SIZE))]
    assert split, "no SYNC frame split across messages"
    dec = W.AudioDecoder()
    for _, p in rec.frames(W.FRAME_AUDIO):
        dec.feed(p)
    assert dec.jumps == 0 and dec.hunted == 0 and dec.syncs == len(syncs)
    assert audio.size == 2 * (len(stream) - W.SYNC_SIZE * len(syncs))  # nothing lost: SYNC came first


@pytest.mark.parametrize("freq,mod,low,high,tone", [(AM_HZ, "am", -4000, 4000, 700.0),
                                                    (TONE_HZ, "nfm", -4000, 4000, 1000.0)])
def test_plus_output_rate_and_am(sim: OwrxSimServer, freq: int, mod: str, low: int, high: int, tone: float) -> None:
    props = json.dumps({"type": "connectionproperties", "params": {"output_rate": 11025}})
    rec = run_record(sim.ws_url("sim-plus"), 3.0, [props, dsp(freq - CENTER, mod, low, high), START])
    audio, _ = rec.audio()
    assert _rate(rec) == pytest.approx(11025, rel=0.01)
    assert _peak_hz(audio[5000:], 11025) == pytest.approx(tone, abs=3.0)


def test_usb_voice_is_speech_band(sim: OwrxSimServer) -> None:
    rec = run_record(sim.ws_url("sim-up"), 3.0, [dsp(USB_HZ - CENTER, "usb", 300, 3000), START])
    audio, _ = rec.audio()
    x = audio[6000:].astype(np.float64)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / 12000)
    assert spec[(f > 300) & (f < 3000)].sum() / spec.sum() > 0.95
    # voice, not a tone: the energy spreads over many harmonics, and the level varies (syllables)
    assert np.sum(spec > spec.max() / 10) > 20
    env = np.array([np.sqrt(np.mean(x[i : i + 600] ** 2)) for i in range(0, x.size - 600, 600)])
    assert env.max() > 3 * np.percentile(env, 10)


@pytest.mark.parametrize("rid,block,hang", [("sim-up", 1024, 0), ("sim-plus", 750, 2)])
def test_squelch_flushes_then_silence(sim: OwrxSimServer, rid: str, block: int, hang: int) -> None:
    reopen = json.dumps({"type": "dspcontrol", "params": {"squelch_level": -150}})
    rec = run_record(sim.ws_url(rid), 1.5, [dsp(TONE_HZ - CENTER, squelch=-30), START])
    audio, _ = rec.audio()
    assert audio.size == (hang + 5) * block  # hang blocks of audio, 5 of zeros, then nothing
    # the zeros decode to 0 once ADPCM's step has come down (a few dozen samples)
    assert np.max(np.abs(audio[hang * block + 200 :])) <= 8 and np.all(audio[-block:] == 0)
    assert hang == 0 or np.std(audio[: hang * block]) > 1000
    assert len(rec.values("smeter")) >= 4  # readings continue while squelched
    rec = run_record(sim.ws_url(rid), 2.0, [dsp(TONE_HZ - CENTER, squelch=-30), START, reopen])
    assert rec.audio()[0].size > 12000


def test_uncompressed_audio_and_fft(sim: OwrxSimServer) -> None:
    rec = run_record(sim.ws_url("sim-raw"), 2.0, [dsp(TONE_HZ - CENTER), START])
    config = rec.values("config")[0]
    assert config["audio_compression"] == "none" and config["fft_compression"] == "none"
    payloads = [p for _, p in rec.frames(W.FRAME_AUDIO)]
    assert all(len(p) % 2 == 0 for p in payloads) and len({len(p) for p in payloads}) > 3
    audio, _ = rec.audio("none")
    assert _peak_hz(audio[6000:], 12000) == pytest.approx(1000.0, abs=3.0)
    truth = [s for s in sim.truth("sim-raw").sessions if s.started][-1]
    rows = np.concatenate([W.decode_fft(p, 4096, "none") for _, p in rec.frames(W.FRAME_FFT)])
    sent = align_rows(rows, np.array(truth.fft_rows).astype(np.float32))
    assert np.array_equal(rows, sent)


def test_wfm_is_hd_audio(sim: OwrxSimServer) -> None:
    rec = run_record(sim.ws_url("sim-fm"), 3.0, [dsp(FM_HZ - FM_CENTER, "wfm", -75000, 75000), START])
    assert not rec.frames(W.FRAME_AUDIO)
    dec = W.AudioDecoder()
    parts = [dec.feed(p) for _, p in rec.frames(W.FRAME_HD_AUDIO)]
    audio = np.concatenate(parts)
    assert dec.jumps == 0 and _peak_hz(audio[24000:], 48000) == pytest.approx(1000.0, abs=3.0)
    hd = Recording(texts=rec.texts, binary=[(t, bytes([W.FRAME_AUDIO]) + b[1:]) for t, b in rec.binary
                                          if b[0] == W.FRAME_HD_AUDIO])
    assert _rate(hd) == pytest.approx(48000, rel=0.01)
    times = [t for t, m in rec.json() if m["type"] == "smeter"]
    assert np.median(np.diff(times)) == pytest.approx(49 * 1024 / 200_000, rel=0.15)  # 5 ms windows every 251 ms
    truth = [s for s in sim.truth("sim-fm").sessions if s.started][-1]
    assert truth.output_rate == 48000 and truth.truth_power is not None
    assert 10 * np.log10(np.mean(rec.values("smeter"))) == pytest.approx(10 * np.log10(truth.truth_power), abs=1.0)
