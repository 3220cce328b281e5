"""Faults on demand (protocol page sections 4.3, 4.4, 7): full, banned and per-address limits,
the silent zombie, a profile change by a phantom listener, SDR failures, encoder restarts, two FFT
rows in one message, and the slow reader cut by the server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import replace
from typing import Iterator

import numpy as np
import pytest
from websockets.asyncio.client import connect

from sdrlab.receivers import owrxwire as W
from sdrlab.sim.owrx import OwrxFaults, OwrxSimServer, Profile

from .helpers import (CENTER, HANDSHAKE, PROPS, START, TONE_HZ, Recording, _collect, dsp, http_get, masked_text,
                      raw_upgrade, read_frame, receiver, record, run_record)


@pytest.fixture(scope="module")
def fsim() -> Iterator[OwrxSimServer]:
    two = receiver("f-two")
    spare = Profile("airspy", "2m", "Airspy", "2m", 145_400_000, 3_000_000, TONE_HZ, band=two.profiles[0].band)
    receivers = [receiver("f-up", max_clients=2), receiver("f-plus", fork="plus", version="v1.2.100",
                                                             max_clients_per_ip=1),
                 replace(two, profiles=two.profiles + (spare,)), receiver("f-dead")]
    with OwrxSimServer(receivers) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_faults(fsim: OwrxSimServer) -> Iterator[None]:
    yield
    for rid in fsim.ports:
        fsim.set_faults(rid, OwrxFaults())


def _refused(rec: Recording, reason: str) -> None:
    assert rec.texts[0][1].startswith("CLIENT DE SERVER server=openwebrx")
    assert rec.kinds() == ["receiver_details", "backoff"]
    assert json.loads(rec.texts[-1][1]) == {"type": "backoff", "reason": reason}
    assert rec.close_code == 1005  # the server's close frame carries no status code


def test_full_when_max_clients_reached_and_on_demand(fsim: OwrxSimServer) -> None:
    async def body() -> tuple[Recording, Recording, Recording]:
        keep = [record(fsim.ws_url("f-up"), 2.0), record(fsim.ws_url("f-up"), 2.0)]
        tasks = [asyncio.create_task(k) for k in keep]
        await asyncio.sleep(0.7)
        third = await record(fsim.ws_url("f-up"), 1.0)
        first, _ = await asyncio.gather(*tasks)
        return first, _, third

    first, second, third = asyncio.run(body())
    _refused(third, "Too many clients")
    assert first.values("clients")[:2] == [1, 2] and first.close_code is None
    fsim.set_faults("f-up", OwrxFaults(full=True))
    _refused(run_record(fsim.ws_url("f-up"), 1.0), "Too many clients")
    assert fsim.users("f-up") == 0


def test_plus_per_address_limit_and_ban(fsim: OwrxSimServer) -> None:
    async def body() -> Recording:
        first = asyncio.create_task(record(fsim.ws_url("f-plus"), 1.5))
        await asyncio.sleep(0.5)
        second = await record(fsim.ws_url("f-plus"), 0.8)
        await first
        return second

    _refused(asyncio.run(body()), "Too many clients")
    fsim.set_faults("f-plus", OwrxFaults(banned=True))
    _refused(run_record(fsim.ws_url("f-plus"), 1.0), "Client address banned")


def test_zombie_after_receiver_details(fsim: OwrxSimServer) -> None:
    fsim.set_faults("f-up", OwrxFaults(zombie=True))
    rec = run_record(fsim.ws_url("f-up"), 2.0, [dsp(TONE_HZ - CENTER), START])
    assert rec.kinds() == ["receiver_details"] and not rec.binary and rec.close_code is None
    assert fsim.users("f-up") == 0


def test_double_fft_frames(fsim: OwrxSimServer) -> None:
    fsim.set_faults("f-up", OwrxFaults(double_fft=True))
    rec = run_record(fsim.ws_url("f-up"), 1.5)
    sizes = {len(p) for _, p in rec.frames(W.FRAME_FFT)}
    assert sizes == {2 * W.fft_frame_bytes(4096)}
    rows = W.decode_fft(rec.frames(W.FRAME_FFT)[0][1], 4096)
    assert rows.shape == (2, 4096) and abs(float(np.median(rows[0] - rows[1]))) < 0.2


def test_profile_change_by_phantom_listener(fsim: OwrxSimServer) -> None:
    async def body() -> Recording:
        rec = Recording()
        async with connect(fsim.ws_url("f-up"), compression=None, max_size=None) as ws:
            await ws.send(HANDSHAKE)
            await ws.send(PROPS)
            await ws.send(dsp(TONE_HZ - CENTER))
            await ws.send(START)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(fsim.change_profile, "f-up", "rtlsdr|70cm")
            await _collect(ws, rec, 1.5, [], False)
        return rec

    t_change = time.monotonic()
    rec = asyncio.run(body())
    truth = fsim.truth("f-up")
    assert truth.profiles == {"rtlsdr": "rtlsdr|70cm"} and truth.profile_changes[-1].by == "phantom"
    assert truth.profile_changes[-1].at > t_change
    diff = [v for v in rec.values("config") if "center_freq" in v][-1]
    assert diff == {"start_freq": 433_500_000, "center_freq": 433_800_000, "profile_id": "70cm", "sdr_id": "rtlsdr",
                    "start_offset_freq": 433_500_000 - 433_800_000}  # samp_rate unchanged: not sent
    session = [s for s in truth.sessions if s.started][-1]
    assert session.dial_hz == 433_800_000 + (TONE_HZ - CENTER)  # the offset is kept
    rows = [W.decode_fft(p, 4096) for _, p in rec.frames(W.FRAME_FFT)]
    floors = [float(np.median(r[0, 100:1500])) for r in rows]
    assert floors[-1] - floors[0] == pytest.approx(4.0, abs=0.5)  # the 70 cm band is 4 dB noisier
    fsim.change_profile("f-up", "rtlsdr|2m")


def test_sdr_failure_moves_listeners_or_reports_error(fsim: OwrxSimServer) -> None:
    async def listen(rid: str) -> Recording:
        rec = Recording()
        async with connect(fsim.ws_url(rid), compression=None, max_size=None) as ws:
            for cmd in (HANDSHAKE, PROPS, dsp(TONE_HZ - CENTER), START):
                await ws.send(cmd)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fsim.fail_sdr, rid)
            await _collect(ws, rec, 1.5, [], False)
        return rec

    async def both() -> tuple[Recording, Recording]:
        moved, dead = await asyncio.gather(listen("f-two"), listen("f-dead"))
        return moved, dead

    moved, dead = asyncio.run(both())
    assert moved.values("log_message") == ['SDR device "RTL-SDR" has failed, selecting new device']
    assert {"center_freq": 145_400_000, "samp_rate": 3_000_000, "sdr_id": "airspy"}.items() <= \
        [v for v in moved.values("config") if "center_freq" in v][-1].items()
    assert moved.values("profiles")[-1] == [{"id": "airspy|2m", "name": "Airspy 2m"}]
    stream = b"".join(p for _, p in moved.frames(W.FRAME_AUDIO))
    assert b"SYNC\x00\x00\x00\x00" in stream  # a new DSP: a new encoder, SYNC with state (0, 0)
    assert len(moved.frames(W.FRAME_FFT)) >= 9
    status = json.loads(http_get(fsim.url("f-two") + "status.json")[1])
    assert [s["name"] for s in status["sdrs"]] == ["Airspy"]

    assert dead.values("sdr_error") == ["No SDR Devices available"]
    t_err = next(t for t, m in dead.json() if m["type"] == "sdr_error")
    late = [(round(t - t_err, 3), b[0], len(b)) for t, b in dead.binary if t > t_err + 0.3]
    assert not late  # no FFT, no audio after it
    assert json.loads(http_get(fsim.url("f-dead") + "status.json")[1])["sdrs"] == []


def test_encoder_restart_mid_block(fsim: OwrxSimServer) -> None:
    async def body() -> Recording:
        rec = Recording()
        async with connect(fsim.ws_url("f-plus"), compression=None, max_size=None) as ws:
            for cmd in (HANDSHAKE, PROPS, dsp(TONE_HZ - CENTER), START):
                await ws.send(cmd)
            await _collect(ws, rec, 1.0, [], False)
            await asyncio.to_thread(fsim.restart_encoders, "f-plus")
            await _collect(ws, rec, 1.0, [], False)
        return rec

    rec = body_rec = asyncio.run(body())
    dec = W.AudioDecoder()
    out = [dec.feed(p) for _, p in rec.frames(W.FRAME_AUDIO)]
    assert dec.jumps == 1 and dec.hunted > 0  # the old block's tail is dropped while hunting
    assert sum(o.size for o in out) > 18000 and body_rec is rec


def test_slow_reader_is_cut(fsim: OwrxSimServer) -> None:
    fsim.set_faults("f-up", OwrxFaults(send_timeout_s=1.0, queue_size=10, sndbuf_bytes=4096))
    sock, _ = raw_upgrade(fsim.ports["f-up"], rcvbuf=4096)
    try:
        for cmd in (HANDSHAKE, PROPS, dsp(TONE_HZ - CENTER), START):
            sock.sendall(masked_text(cmd) if len(cmd) < 126 else _masked_long(cmd))
        deadline = time.monotonic() + 10
        closed = None
        while time.monotonic() < deadline and closed is None:
            time.sleep(0.25)
            closed = [t for t in fsim.truth("f-up").sessions if t.started][-1].closed
        assert closed in ("queue_overflow", "send_timeout")
    finally:
        sock.close()


def _masked_long(text: str, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    data = text.encode()
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big") + mask + body


def test_fft_size_change(fsim: OwrxSimServer) -> None:
    async def body() -> Recording:
        rec = Recording()
        async with connect(fsim.ws_url("f-plus"), compression=None, max_size=None) as ws:
            await ws.send(HANDSHAKE)
            await _collect(ws, rec, 0.6, [], False)
            await asyncio.to_thread(fsim.set_fft_size, "f-plus", 2048)
            await _collect(ws, rec, 0.8, [], False)
        return rec

    rec = asyncio.run(body())
    try:
        assert rec.values("config")[-1] == {"fft_size": 2048}
        t_change = next(t for t, m in rec.json() if m["type"] == "config" and m["value"] == {"fft_size": 2048})
        sizes = [(t > t_change, len(p)) for t, p in rec.frames(W.FRAME_FFT)]
        assert {n for late, n in sizes if not late} == {W.fft_frame_bytes(4096)}
        assert {n for late, n in sizes if late} <= {W.fft_frame_bytes(4096), W.fft_frame_bytes(2048)}
        assert sizes[-1][1] == W.fft_frame_bytes(2048)
    finally:
        fsim.set_fft_size("f-plus", 4096)


def test_ping_after_client_silence_and_no_pong_needed(fsim: OwrxSimServer) -> None:
    fsim.set_faults("f-up", OwrxFaults(ping_after_s=0.6))
    sock, _ = raw_upgrade(fsim.ports["f-up"])
    try:
        sock.sendall(masked_text("SERVER DE CLIENT client=raw type=receiver"))
        t0, pings, after = time.monotonic(), [], 0
        while time.monotonic() - t0 < 2.2:
            b0, masked, payload = read_frame(sock)
            if b0 == 0x89:  # FIN + PING, never answered
                pings.append(time.monotonic() - t0)
            elif pings:
                after += 1
        assert len(pings) >= 2 and 0.5 < pings[0] < 1.0  # silence since the handshake line
        assert after > 0  # not disconnected for the missing PONG: rows keep coming
    finally:
        sock.close()
