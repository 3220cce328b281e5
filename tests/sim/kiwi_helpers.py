"""An independent, minimal KiwiSDR test client on the ``websockets`` library, and small scenes.

Frames are parsed here with ``struct`` straight from the protocol reference (section 4), not with
sdrlab's codec, so the simulator is checked against the reference rather than against itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Coroutine, TypeVar

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sdrlab.sim.scene import Faults, Scene, SimReceiver, Transmitter
from sdrlab.sim.server import SimServer, Watchdogs

T = TypeVar("T")

SPEED = 20.0
TUNE_KHZ = 9749.0
IQ_FRAME_LEN = 2068
NS = 1_000_000_000
WEEK_S = 604800

#: kiwiclient's command set after ``sample_rate`` (reference section 2 step 5)
SETUP = (
    "SET AR OK in=12000 out=44100",
    "SET squelch=0 max=0",
    "SET genattn=0",
    "SET gen=0 mix=-1",
    "SET ident_user=sdrlab-test",
    "SET mod=iq low_cut=-5000 high_cut=5000 freq={freq:.3f}",
    "SET agc=1 hang=0 thresh=-100 slope=6 decay=1000 manGain=50",
    "SET compression=0",
    "SET keepalive",
)


def small_scene(rx_a: dict[str, Any] | None = None, rx_b: dict[str, Any] | None = None) -> Scene:
    tx = Transmitter(id="tx-test", latitude=50.2, longitude=8.6, frequency_hz=9_750_000.0, power_dbm=40.0)
    a = SimReceiver(id="rx-a", name="Alpha test receiver", latitude=51.123456, longitude=6.654321,
                    altitude_m=87.0, sample_rate=12001.135, gps_fix_interval_s=2.0, noise_dbfs=-70.0)
    b = SimReceiver(id="rx-b", name="Bravo test receiver", latitude=48.5, longitude=10.25,
                    sample_rate=12001.188, rx_chans=2)
    if rx_a:
        a = _replace(a, rx_a)
    if rx_b:
        b = _replace(b, rx_b)
    return Scene(transmitters=(tx,), receivers=(a, b), seed=11, name="test")


def _replace(rx: SimReceiver, changes: dict[str, Any]) -> SimReceiver:
    from dataclasses import replace

    return replace(rx, **changes)


def with_faults(scene: Scene, rx_id: str = "rx-a", **faults: Any) -> Scene:
    return scene.replace_receiver(rx_id, faults=Faults(**faults))


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


@asynccontextmanager
async def running(scene: Scene, **kwargs: Any) -> AsyncIterator[SimServer]:
    kwargs.setdefault("speed", SPEED)
    srv = SimServer(scene, base_port=0, **kwargs)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


# ---- parsing (reference section 4) ------------------------------------------------------------

@dataclass
class IqFrame:
    raw: bytes
    flags: int
    seq: int
    smeter: int
    last: int
    gpssec: int
    gpsnsec: int

    @property
    def rssi(self) -> float:
        return 0.1 * self.smeter - 127.0

    def samples(self) -> np.ndarray:
        dt = ">i2" if not self.flags & 0x80 else "<i2"
        return np.frombuffer(self.raw, dtype=dt, offset=20).astype(np.int16).reshape(-1, 2)


def parse_iq(buf: bytes) -> IqFrame:
    tag, flags, seq = struct.unpack_from("<3sBI", buf, 0)
    assert tag == b"SND"
    (smeter,) = struct.unpack_from(">H", buf, 8)
    last, _dummy, gsec, gnsec = struct.unpack_from("<BBII", buf, 10)
    return IqFrame(buf, flags, seq, smeter, last, gsec, gnsec)


def parse_msg_body(buf: bytes) -> list[tuple[str, str | None]]:
    assert buf[:4] == b"MSG "
    out: list[tuple[str, str | None]] = []
    for token in buf[4:].decode().split(" "):
        if not token:
            continue
        key, sep, value = token.partition("=")
        out.append((key, value if sep else None))
    return out


def decode_load_cfg(value: str) -> dict[str, Any]:
    cfg = json.loads(urllib.parse.unquote(value))
    assert isinstance(cfg, dict)
    return cfg


def rx_gps(cfg: dict[str, Any]) -> tuple[float, float]:
    text = urllib.parse.unquote(cfg["rx_gps"])
    assert text.startswith("(") and text.endswith(")"), text
    lat, lon = (float(x) for x in text[1:-1].split(","))
    return lat, lon


# ---- client -----------------------------------------------------------------------------------

class Kiwi:
    """A KiwiSDR client connection that records everything it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[bytes | str] = []
        self.msgs: list[tuple[str, str | None]] = []
        self.msg_frames: list[bytes] = []
        self.snd: list[bytes] = []
        self.other: list[bytes] = []
        self.closed = False
        self.close_rcvd: bool | None = None

    @classmethod
    async def open(cls, port: int, ts: int, path: str = "/{ts}/SND") -> Kiwi:
        ws = await connect(f"ws://127.0.0.1:{port}" + path.format(ts=ts), compression=None,
                           ping_interval=None, max_queue=None, open_timeout=5)
        return cls(ws)

    async def send(self, *cmds: str) -> None:
        """Send TEXT commands; a connection the server already closed swallows them."""
        for cmd in cmds:
            try:
                await self.ws.send(cmd)
            except ConnectionClosed:
                return

    async def recv(self, timeout: float = 2.0) -> bytes | str | None:
        """One frame, or None on timeout or close."""
        if self.closed:
            return None
        try:
            msg = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return None
        except ConnectionClosed:
            self.closed = True
            self.close_rcvd = self.ws.protocol.close_rcvd is not None
            return None
        self.received.append(msg)
        if isinstance(msg, bytes):
            if msg[:3] == b"MSG":
                self.msg_frames.append(msg)
                self.msgs.extend(parse_msg_body(msg))
            elif msg[:3] == b"SND":
                self.snd.append(msg)
            else:
                self.other.append(msg)
        return msg

    async def until(self, pred: Callable[[Kiwi], bool], timeout: float = 3.0) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not pred(self):
            left = end - loop.time()
            if left <= 0 or self.closed:
                return pred(self)
            await self.recv(min(left, 0.5))
        return True

    async def wait_msg(self, key: str, timeout: float = 3.0) -> str | None:
        await self.until(lambda k: key in k.keys(), timeout)
        return self.value(key)

    async def wait_closed(self, timeout: float = 3.0) -> bool:
        return await self.until(lambda k: k.closed, timeout)

    async def frames(self, n: int, timeout: float = 5.0) -> list[bytes]:
        await self.until(lambda k: len(k.snd) >= n, timeout)
        return self.snd[:n]

    async def drain(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not self.closed and loop.time() < end:
            await self.recv(max(0.0, end - loop.time()))

    def keys(self) -> list[str]:
        return [k for k, _ in self.msgs]

    def value(self, key: str) -> str | None:
        for k, v in reversed(self.msgs):
            if k == key:
                return v
        return None

    async def auth(self, password: str = "", ipl: str | None = None) -> None:
        if ipl is not None:  # like kiwiclient: "#" stands for no password so sscanf reaches ipl=
            cmd = f"SET auth t=kiwi p={password or '#'} ipl={ipl}"
        else:
            cmd = f"SET auth t=kiwi p={password}"
        await self.send(cmd)

    async def start_iq(self, freq_khz: float = TUNE_KHZ, *, little_endian: bool = False,
                       password: str = "", ipl: str | None = None) -> None:
        """The kiwiclient sequence: auth, then the setup commands."""
        await self.auth(password, ipl)
        if little_endian:
            await self.send("SET little-endian")
        await self.send(*(c.format(freq=freq_khz) for c in SETUP))

    async def close(self) -> None:
        await self.ws.close()


FAST = Watchdogs(keepalive_timeout_s=30.0, auth_timeout_s=30.0, hang_keepalives=1000, incomplete_s=30.0)
