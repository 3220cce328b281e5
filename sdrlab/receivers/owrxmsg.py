"""OpenWebRX text messages (``openwebrx-protocol.md`` sections 1.2, 2, 3): the handshake lines,
the client's JSON commands, the server's envelope, incremental ``config`` and which frequencies
the current profile reaches.  Pure code for the client and the simulator.

Units: frequencies and rates in Hz; ``offset_freq`` is an integer (the server rejects ``12500.0``);
``squelch_level`` in dB on the S-meter scale (-150 = open); the S-meter value is linear power.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReceiverProtocolError

__all__ = [
    "DEFAULT_BANDPASS", "PROFILE_KEYS", "SQUELCH_OPEN_DB", "ConfigState", "client_handshake", "connection_properties",
    "dspcontrol", "dspcontrol_start", "parse_message", "parse_server_handshake", "reachable", "smeter_db",
]

#: the handshake prefix the server checks (16 characters)
CLIENT_PREFIX = "SERVER DE CLIENT"
SERVER_PREFIX = "CLIENT DE SERVER"
#: squelch level that keeps the audio flowing
SQUELCH_OPEN_DB = -150
#: default passbands by mode (U owrx/modes.py), Hz relative to the offset
DEFAULT_BANDPASS: dict[str, tuple[int, int]] = {
    "nfm": (-4000, 4000), "wfm": (-75000, 75000), "am": (-4000, 4000), "lsb": (-3000, -300), "usb": (300, 3000),
    "cw": (700, 900),
}
#: ``config`` keys whose change ends a segment (another listener changed the profile, section 7.4)
PROFILE_KEYS = ("center_freq", "samp_rate", "profile_id", "sdr_id")
_MOD = re.compile(r"^[a-z0-9]+$")
_MOD_PLUS = re.compile(r"^[a-z0-9-]+$")


def client_handshake(client: str = "sdrlab", kind: str = "receiver") -> str:
    """The first line a client sends; the server reads ``type`` and ignores ``client``."""
    if kind not in ("receiver", "map") or not client or " " in client:
        raise ValueError(f"bad handshake: client={client!r} type={kind!r}")
    return f"{CLIENT_PREFIX} client={client} type={kind}"


def parse_server_handshake(line: str) -> dict[str, str]:
    """``CLIENT DE SERVER server=openwebrx version=v1.2.2`` -> {"server": ..., "version": ...}.
    The legacy (pre-0.18) line ``CLIENT DE SERVER openwebrx.py`` and anything else: protocol error."""
    if not line.startswith(SERVER_PREFIX):
        raise ReceiverProtocolError(f"not an OpenWebRX handshake reply: {line[:80]!r}")
    pairs = dict(p.split("=", 1) for p in line[len(SERVER_PREFIX) :].split() if "=" in p)
    if pairs.get("server") != "openwebrx" or "version" not in pairs:
        raise ReceiverProtocolError(f"unsupported OpenWebRX handshake (legacy server before 0.18?): {line[:80]!r}")
    return pairs


def connection_properties(output_rate: int = 12000, hd_output_rate: int = 48000, **plus: Any) -> str:
    """``connectionproperties``: the audio rates (use 12000/11025/8000 and 48000/44100: upstream's
    NFM de-emphasis exists only for those).  ``plus`` keys (``nr_enabled``...) go last and only
    to OpenWebRX+ (upstream aborts the remaining keys on an unknown one)."""
    params: dict[str, Any] = {"output_rate": int(output_rate), "hd_output_rate": int(hd_output_rate), **plus}
    return json.dumps({"type": "connectionproperties", "params": params}, separators=(",", ":"))


def _int_offset(offset_freq: float) -> int:
    if isinstance(offset_freq, bool) or not math.isfinite(float(offset_freq)) or float(offset_freq) != int(offset_freq):
        raise ValueError(f"offset_freq must be a whole number of Hz, got {offset_freq!r}")
    return int(offset_freq)


def dspcontrol(offset_freq: float | None = None, mod: str | None = None, low_cut: float | None = None,
               high_cut: float | None = None, *, squelch_level: float | None = SQUELCH_OPEN_DB,
               secondary_mod: bool | str | None = False, plus: bool = False, **extra: Any) -> str:
    """A ``dspcontrol`` params message in the browser's key order (low_cut, high_cut, offset_freq,
    mod, ..., squelch_level, secondary_mod); None leaves a key out (send only what changed).
    ``offset_freq`` must be whole Hz; ``mod`` must pass the server's validator, else the server
    silences the audio without saying so (section 2.5)."""
    params: dict[str, Any] = {}
    if low_cut is not None:
        params["low_cut"] = low_cut
    if high_cut is not None:
        params["high_cut"] = high_cut
    if offset_freq is not None:
        params["offset_freq"] = _int_offset(offset_freq)
    if mod is not None:
        if not (_MOD_PLUS if plus else _MOD).match(mod):
            raise ValueError(f"mod {mod!r} would not pass the server's validator")
        params["mod"] = mod
    params.update(extra)
    if squelch_level is not None:
        params["squelch_level"] = squelch_level
    if secondary_mod is not None:
        params["secondary_mod"] = secondary_mod
    return json.dumps({"type": "dspcontrol", "params": params}, separators=(",", ":"))


def dspcontrol_start() -> str:
    """Connects the demodulator: audio and S-meter flow only after it (there is no stop)."""
    return json.dumps({"type": "dspcontrol", "action": "start"}, separators=(",", ":"))


def parse_message(text: str) -> tuple[str, Any]:
    """(type, value) of a server JSON message; ``backoff`` gives its ``reason`` as the value,
    ``chat_message`` (Plus) the whole object.  Not JSON or no type: protocol error."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise ReceiverProtocolError(f"server text that is not JSON: {text[:80]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ReceiverProtocolError(f"server JSON without a type: {text[:80]!r}")
    kind = msg["type"]
    if kind == "backoff":
        return kind, str(msg.get("reason", ""))
    if kind == "chat_message":
        return kind, msg
    return kind, msg.get("value")


@dataclass
class ConfigState:
    """The receiver's ``config`` as it stands: incremental updates merged, ``null`` deletes a key.
    :meth:`merge` says which profile keys (:data:`PROFILE_KEYS`) an update changed."""

    values: dict[str, Any] = field(default_factory=dict)

    def merge(self, update: dict[str, Any]) -> list[str]:
        changed = [k for k in PROFILE_KEYS if k in update and k in self.values and update[k] != self.values[k]]
        for k, v in update.items():
            if v is None:
                self.values.pop(k, None)
            else:
                self.values[k] = v
        return changed

    @property
    def center_freq(self) -> float | None:
        v = self.values.get("center_freq")
        return float(v) if v is not None else None

    @property
    def samp_rate(self) -> float | None:
        v = self.values.get("samp_rate")
        return float(v) if v is not None else None

    @property
    def profile(self) -> str | None:
        """``sdr_id|profile_id`` (the ``profiles`` message's id) when both are known."""
        sdr, prof = self.values.get("sdr_id"), self.values.get("profile_id")
        return f"{sdr}|{prof}" if sdr is not None and prof is not None else None


def reachable(center_freq: float, samp_rate: float, target_hz: float, bandwidth_hz: float) -> bool:
    """Whether ``target_hz`` with ``bandwidth_hz`` lies inside the current profile without
    changing it: |target - centre| <= samp_rate / 2 - bandwidth / 2 (section 2.3; offsets
    beyond alias, the browser refuses them too)."""
    return abs(target_hz - center_freq) <= samp_rate / 2 - bandwidth_hz / 2


def smeter_db(value: float) -> float:
    """The S-meter reading in dB as the browser shows it: 10 log10 of the linear power
    (full-scale complex = 0 dB, uncalibrated); -inf for 0."""
    return 10.0 * math.log10(value) if value > 0 else -math.inf
