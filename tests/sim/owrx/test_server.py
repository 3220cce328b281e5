"""The simulator's HTTP pages, upgrade reply, frame rules, build-up order, dspcontrol validation,
FFT rows and S-meter against the truth, over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import numpy as np
import pytest

from sdrlab.receivers import owrxwire as W
from sdrlab.receivers.owrxstatus import PLUS_TITLE, UPSTREAM_TITLE
from sdrlab.sim.owrx import OwrxSimServer

from .helpers import CENTER, align_rows, record, START, TONE_HZ, dsp, http_get, masked_text, raw_upgrade, read_frame, run_record

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.mark.parametrize("rid,title", [("sim-up", UPSTREAM_TITLE), ("sim-plus", PLUS_TITLE)])
def test_pages(sim: OwrxSimServer, rid: str, title: str) -> None:
    code, body, headers = http_get(sim.url(rid))
    assert code == 200 and f"<title>{title}</title>" in body
    code, body, _ = http_get(sim.url(rid) + "status.json")
    doc = json.loads(body)
    assert code == 200 and doc["version"] == ("v1.2.121" if rid == "sim-plus" else "v1.2.2")
    assert doc["receiver"]["gps"] == {"lat": 47.4979, "lon": 19.0402} and doc["max_clients"] == 20
    profs = doc["sdrs"][0]["profiles"]
    assert [p["center_freq"] for p in profs] == [CENTER, 433_800_000] and profs[0]["sample_rate"] == 2_400_000
    assert "users" not in json.dumps(doc)
    code, body, _ = http_get(sim.url(rid) + "metrics.json")
    assert code == 200 and json.loads(body) == {"openwebrx": {"users": 0}}
    for path in ("ws", "status", "favicon.ico", "status.json/x"):
        assert http_get(sim.url(rid) + path)[0] == 404


def test_upgrade_reply_and_frames(sim: OwrxSimServer) -> None:
    key = base64.b64encode(b"sdrlab-test-key!").decode()
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    s, reply = raw_upgrade(sim.ports["sim-up"], key)
    try:
        assert reply == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\nCQ-CQ-de: HA5KFU\r\n\r\n")
        s.sendall(masked_text("SERVER DE CLIENT client=raw type=receiver"))
        b0, masked, payload = read_frame(s)
        assert (b0, masked, payload) == (0x81, False, b"CLIENT DE SERVER server=openwebrx version=v1.2.2")
        seen = set()
        for _ in range(40):  # JSON text, then an FFT row: FIN, never masked, never continuation
            b0, masked, payload = read_frame(s)
            assert b0 & 0x80 and not masked and b0 & 0x0F in (1, 2)
            seen.add(b0 & 0x0F)
            if b0 & 0x0F == 2:
                assert payload[0] == W.FRAME_FFT and len(payload) == 1 + W.fft_frame_bytes(4096)
                break
        assert seen == {1, 2}
    finally:
        s.close()


@pytest.mark.parametrize("rid", ["sim-up", "sim-plus"])
def test_build_up_order(sim: OwrxSimServer, rid: str) -> None:
    rec = run_record(sim.ws_url(rid), 2.0)
    plus = rid == "sim-plus"
    assert rec.texts[0][1] == f"CLIENT DE SERVER server=openwebrx version={'v1.2.121' if plus else 'v1.2.2'}"
    kinds = [k for k in rec.kinds() if k not in ("clients", "cpuusage", "temperature")]
    expect = ["receiver_details", "config", "config", "config", "dial_frequencies", "bookmarks"]
    expect += ["bands"] if plus else []
    assert kinds == expect + ["features", "modes", "profiles"]
    configs = rec.values("config")
    assert configs[0]["fft_size"] == 4096 and configs[0]["audio_compression"] == "adpcm"
    assert ("allow_chat" in configs[0]) == plus
    assert configs[2] == {"samp_rate": 2_400_000, "start_mod": "nfm", "start_freq": TONE_HZ, "center_freq": CENTER,
                          "sdr_id": "rtlsdr", "profile_id": "2m", "start_offset_freq": TONE_HZ - CENTER}
    assert rec.values("profiles")[0] == [{"id": "rtlsdr|2m", "name": "RTL-SDR 2m"},
                                         {"id": "rtlsdr|70cm", "name": "RTL-SDR 70cm"}]
    modes = {m["modulation"]: m for m in rec.values("modes")[0]}
    assert modes["nfm"]["bandpass"] == {"low_cut": -4000, "high_cut": 4000}
    assert modes["usb"]["bandpass"] == {"low_cut": 300, "high_cut": 3000}
    assert rec.values("clients") == [1] and len(rec.values("cpuusage")) == 1  # every 3 s
    assert len(rec.values("temperature")) == (1 if plus else 0)
    details = rec.values("receiver_details")[0]
    assert details["locator"] == "JN97ml" and ("session_timeout" in details) == plus
    rows = rec.frames(W.FRAME_FFT)
    assert 15 <= len(rows) <= 19  # 9 rows/s over 2 s
    assert not rec.frames(W.FRAME_AUDIO) and "smeter" not in rec.kinds()  # nothing before start


def test_fft_rows_match_truth(sim: OwrxSimServer) -> None:
    rec = run_record(sim.ws_url("sim-up"), 2.5)
    truth = sim.truth("sim-up")
    mine = [s for s in truth.sessions if s.fft_rows_sent][-1]
    got = np.concatenate([W.decode_fft(p, 4096) for _, p in rec.frames(W.FRAME_FFT)])
    sent = align_rows(got, np.array(mine.fft_rows))
    assert got.shape == sent.shape and len(got) >= 18
    err = got[:, W.FFT_SETTLE_BINS:] - sent[:, W.FFT_SETTLE_BINS:]
    rows = sent[:, W.FFT_SETTLE_BINS:]
    hot = rows > np.median(rows) + 3.0  # emitters: ADPCM slope overload smears them to higher bins
    near = hot.copy()
    for d in range(-2, 13):
        near |= np.roll(hot, d, axis=1)
    e = err[~near]
    assert np.sqrt(np.mean(e**2)) < 0.1 and np.percentile(np.abs(e), 95) < 0.2
    assert abs(float(np.mean(e))) < 0.03
    # the rows mean what section 4.5 says: the noise floor gives back the band's density
    n0 = W.noise_density(np.median(got[:, 200:1500]), 2_400_000, 4096)
    assert 10 * np.log10(n0) == pytest.approx(-100.0, abs=0.3)


@pytest.mark.parametrize("rid,period", [("sim-up", 3 * 1024 / 12000), ("sim-plus", 0.25)])
def test_smeter_matches_truth(sim: OwrxSimServer, rid: str, period: float) -> None:
    rec = run_record(sim.ws_url(rid), 3.0, [dsp(TONE_HZ - CENTER), START])
    times = [t for t, m in rec.json() if m["type"] == "smeter"]
    values = np.array(rec.values("smeter"))
    assert len(values) >= 10
    assert np.median(np.diff(times)) == pytest.approx(period, rel=0.15)
    truth = [s for s in sim.truth(rid).sessions if s.started][-1]
    assert truth.truth_power is not None and truth.dial_hz == TONE_HZ
    assert 10 * np.log10(np.mean(values)) == pytest.approx(10 * np.log10(truth.truth_power), abs=1.0)
    assert list(values) == truth.smeter[: len(values)]


VALIDATION = [  # (params sent after start, the dial they leave)
    ({"offset_freq": 200_000}, CENTER + 200_000),
    ({"offset_freq": 200_000.0}, TONE_HZ),  # a float offset is rejected
    ({"offset_freq": 200_000, "nosuchkey": 1, "mod": "am"}, CENTER + 200_000),
    ({"nosuchkey": 1, "offset_freq": 200_000}, TONE_HZ),  # aborted before the offset
    ({"low_cut": "x", "offset_freq": 200_000}, TONE_HZ),
    ({"dab_service_id": 0, "offset_freq": 200_000}, CENTER + 200_000),  # upstream's key name
    ({"audio_service_id": 0, "offset_freq": 200_000}, TONE_HZ),  # Plus's name: KeyError upstream
    ({"offset_freq": None}, None),  # null deletes: no channel
]


def test_dspcontrol_validation(sim: OwrxSimServer) -> None:
    """Section 2.5, each case on its own connection (all at once)."""
    async def body() -> None:
        await asyncio.gather(*(record(sim.ws_url("sim-up"), 1.2, [dsp(TONE_HZ - CENTER), START, json.dumps(
            {"type": "dspcontrol", "params": params, "case": i})]) for i, (params, _) in enumerate(VALIDATION)))

    before = {s.number for s in sim.truth("sim-up").sessions}
    asyncio.run(body())
    new = sorted((s for s in sim.truth("sim-up").sessions if s.number not in before and s.started),
                 key=lambda s: s.number)
    assert len(new) == len(VALIDATION)
    got = sorted(s.dial_hz for s in new if s.dial_hz is not None)
    assert got == sorted(d for _, d in VALIDATION if d is not None)


def test_unknown_mod_silences_audio_keeps_smeter(sim: OwrxSimServer) -> None:
    cmd = json.dumps({"type": "dspcontrol", "params": {"mod": "nosuchmode", "offset_freq": 100_000}})
    rec = run_record(sim.ws_url("sim-up"), 2.0, [dsp(TONE_HZ - CENTER), START, cmd])
    t_cmd = rec.texts[0][0]
    late = [t for t, _ in rec.frames(W.FRAME_AUDIO) if t > t_cmd + 0.5]
    assert not late and len(rec.values("smeter")) >= 5 and len(rec.frames(W.FRAME_AUDIO)) < 10
    truth = [s for s in sim.truth("sim-up").sessions if s.started][-1]
    assert truth.dial_hz == CENTER + 100_000  # the rest of the message still applied
