"""A minimal OpenWebRX test client on the ``websockets`` library, and small receivers.

It records every message with its receipt time; decoding uses sdrlab's wire codec, which its own
tests check against the protocol page's vectors from the real csdr code.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sdrlab.receivers import owrxwire as W
from sdrlab.sim.owrx import Band, Emitter, OwrxConfig, Profile

CENTER = 145_000_000
RATE = 2_400_000
TONE_HZ = 145_500_000  # NFM 1 kHz tone
CARRIER_HZ = 145_200_000
AM_HZ = 145_800_000
USB_HZ = 144_600_000
HANDSHAKE = "SERVER DE CLIENT client=sdrlab-test type=receiver"
PROPS = json.dumps({"type": "connectionproperties", "params": {"output_rate": 12000, "hd_output_rate": 48000}})


def band(noise: float = -100.0) -> Band:
    return Band(noise, (
        Emitter(TONE_HZ, -62.0, "nfm", "tone", tone_hz=1000.0, deviation_hz=2500.0),
        Emitter(CARRIER_HZ, -70.0),
        Emitter(AM_HZ, -60.0, "am", "tone", tone_hz=700.0),
        Emitter(USB_HZ, -60.0, "usb", "voice", seed=3),
        Emitter(145_300_000, -58.0, "nfm", "voice", seed=1),
    ))


def receiver(rid: str = "sim-a", fork: str = "upstream", version: str = "v1.2.2", **kw: Any) -> OwrxConfig:
    profiles = (
        Profile("rtlsdr", "2m", "RTL-SDR", "2m", CENTER, RATE, TONE_HZ, band=band()),
        Profile("rtlsdr", "70cm", "RTL-SDR", "70cm", 433_800_000, RATE, 433_500_000,
                band=Band(-96.0, (Emitter(433_500_000, -65.0, "nfm", "tone", tone_hz=600.0),))),
    )
    return OwrxConfig(id=rid, fork=fork, version=version, profiles=profiles, **kw)  # type: ignore[arg-type]


FM_CENTER, FM_HZ = 98_000_000, 98_500_000  # a WFM broadcast, 1 kHz tone at 75 kHz deviation


def fm_receiver(rid: str = "sim-fm") -> OwrxConfig:
    fm = Band(-110.0, (Emitter(FM_HZ, -40.0, "wfm", "tone", tone_hz=1000.0, deviation_hz=75_000.0),))
    return OwrxConfig(id=rid, profiles=(Profile("rtlsdr", "fm", "RTL-SDR", "FM", FM_CENTER, RATE, FM_HZ,
                                                start_mod="wfm", band=fm),))


def dsp(offset: int, mod: str = "nfm", low: int = -4000, high: int = 4000, squelch: float = -150) -> str:
    return json.dumps({"type": "dspcontrol", "params": {"low_cut": low, "high_cut": high, "offset_freq": offset,
                                                       "mod": mod, "squelch_level": squelch, "secondary_mod": False}})


START = json.dumps({"type": "dspcontrol", "action": "start"})


@dataclass
class Recording:
    texts: list[tuple[float, str]] = field(default_factory=list)  # (receipt time, raw text)
    binary: list[tuple[float, bytes]] = field(default_factory=list)
    close_code: int | None = None
    closed_at: float | None = None

    def json(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, json.loads(s)) for t, s in self.texts if s.startswith("{")]

    def kinds(self) -> list[str]:
        return [m["type"] for _, m in self.json()]

    def values(self, kind: str) -> list[Any]:
        return [m.get("value") for _, m in self.json() if m["type"] == kind]

    def frames(self, frame_type: int) -> list[tuple[float, bytes]]:
        return [(t, b[1:]) for t, b in self.binary if b[0] == frame_type]

    def audio(self, compression: str = "adpcm") -> tuple[np.ndarray, list[tuple[float, int]]]:
        """All audio samples and (receipt time, cumulative samples) per message."""
        dec = W.AudioDecoder()
        parts, counts, total = [], [], 0
        for t, payload in self.frames(W.FRAME_AUDIO):
            s = W.decode_audio(payload, compression, dec)
            parts.append(s)
            total += s.size
            counts.append((t, total))
        return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), counts


def burst_counts(counts: list[tuple[float, int]], gap_s: float = 0.004) -> list[tuple[float, int]]:
    """The (time, cumulative samples) of the last message of each burst (the messages one server
    pump tick sent together): block boundaries, not a block's middle."""
    out = []
    for i, (t, n) in enumerate(counts):
        if i + 1 == len(counts) or counts[i + 1][0] - t > gap_s:
            out.append((t, n))
    return out


def align_rows(got: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """The run of ``sent`` rows that ``got`` (received in order) matches best."""
    best, best_err = 0, np.inf
    for k in range(0, len(sent) - len(got) + 1):
        err = float(np.median(np.abs(got[:, 100:200] - sent[k : k + len(got), 100:200])))
        if err < best_err:
            best, best_err = k, err
    return sent[best : best + len(got)]


async def record(url: str, seconds: float, on_profiles: list[str] | None = None, *, handshake: str = HANDSHAKE,
                 until_closed: bool = False) -> Recording:
    """Connect, handshake, send ``on_profiles`` once the ``profiles`` message arrived, record."""
    rec = Recording()
    async with connect(url, compression=None, max_size=None, ping_interval=None) as ws:
        await ws.send(handshake)
        await ws.send(PROPS)
        await _collect(ws, rec, seconds, on_profiles or [], until_closed)
    return rec


async def _collect(ws: ClientConnection, rec: Recording, seconds: float, on_profiles: list[str],
                   until_closed: bool) -> None:
    end = time.monotonic() + seconds
    sent = False
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                m = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            now = time.monotonic()
            if isinstance(m, str):
                rec.texts.append((now, m))
                if not sent and m.startswith('{"type": "profiles"'):
                    sent = True
                    for cmd in on_profiles:
                        await ws.send(cmd)
            else:
                rec.binary.append((now, bytes(m)))
    except ConnectionClosed:
        rec.closed_at = time.monotonic()
    rec.close_code = ws.close_code if rec.closed_at is not None else None


def run_record(url: str, seconds: float, on_profiles: list[str] | None = None, **kw: Any) -> Recording:
    return asyncio.run(record(url, seconds, on_profiles, **kw))


def http_get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def raw_upgrade(port: int, key: str = "dGhlIHNhbXBsZSBub25jZQ==", path: str = "/ws/",
                rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A plain-socket upgrade: (socket, the exact reply bytes up to the blank line); ``rcvbuf``:
    the receive buffer set before connecting (a small TCP window)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return s, buf


def masked_text(text: str, mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    data = text.encode()
    assert len(data) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bytes([0x81, 0x80 | len(data)]) + mask + body


def read_frame(s: socket.socket) -> tuple[int, bool, bytes]:
    """(first header byte, masked?, payload) of one server frame."""
    def exact(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    masked = bool(b1 & 0x80)
    mask = exact(4) if masked else b""
    return b0, masked, exact(n)
