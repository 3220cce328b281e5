"""What a simulated KiwiSDR says about itself: the ``/status`` page, ``load_cfg`` and the fixed MSGs.

Formats follow server v1.711 (``rx/rx_server_ajax.cpp`` AJAX_STATUS, ``rx/rx_cmd.cpp`` auth replies,
``rx/rx_sound.cpp`` setup); see the protocol reference sections 2 and 3.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse

from .scene import SimReceiver

#: the ADC clock the server announces (``adc_clk_nom``) and the HF range it covers
ADC_CLK_NOM = 66_666_600
BANDWIDTH_HZ = 30_000_000
CENTER_FREQ_HZ = BANDWIDTH_HZ // 2
#: camp slots per channel (``N_CAMP``)
MAX_CAMP = 4
DEBIAN_VER = 11
MODEL = 2  # KiwiSDR 2
PLATFORM = 0  # BeagleBone Green
#: the reason a disabled ("down") Kiwi shows
DOWN_REASON = "This receiver is temporarily unavailable (simulated: disabled by the admin)."

# mongoose's mg_url_encode (kiwi_str_encode) leaves these unescaped
_MG_SAFE = "._-$,;~()"


def kiwi_str_encode(text: str) -> str:
    """URL-encode a config string the way the server stores it (mongoose ``mg_url_encode``)."""
    return urllib.parse.quote(text, safe=_MG_SAFE)


def gps_string(rx: SimReceiver) -> str:
    """The receiver position as the server formats it: ``(lat, lon)`` with ``%f``."""
    return f"({rx.latitude:f}, {rx.longitude:f})"


def maidenhead(lat: float, lon: float) -> str:
    """Six-character Maidenhead grid locator."""
    lon_n = min(max(lon + 180.0, 0.0), 359.999999)
    lat_n = min(max(lat + 90.0, 0.0), 179.999999)
    a = chr(ord("A") + int(lon_n // 20)) + chr(ord("A") + int(lat_n // 10))
    b = str(int((lon_n % 20) // 2)) + str(int(lat_n % 10))
    c = chr(ord("a") + int((lon_n % 2) * 12)) + chr(ord("a") + int((lat_n % 1) * 24))
    return a[0] + a[1] + b[0] + b[1] + c[0] + c[1]


def minutes(seconds: float) -> int:
    """Whole minutes the server would announce for a limit of ``seconds`` (at least 1)."""
    return max(1, int(math.ceil(seconds / 60.0)))


def location(rx: SimReceiver) -> str:
    return f"Simulated site {rx.latitude:.4f}, {rx.longitude:.4f}"


def version_pairs(rx: SimReceiver) -> list[tuple[str, object | None]]:
    maj, mnr = rx.version
    return [
        ("version_maj", maj),
        ("version_min", mnr),
        ("debian_ver", DEBIAN_VER),
        ("model", MODEL),
        ("platform", PLATFORM),
        ("ext_clk", 0),
        ("abyy", ""),
        ("freq_offset", "0.000"),
    ]


def load_cfg(rx: SimReceiver) -> str:
    """The ``load_cfg`` JSON (before the MSG-level URL encoding).

    ``rx_gps`` is itself URL-encoded inside the JSON, as the real server stores it.
    """
    f = rx.faults
    cfg: dict[str, object] = {
        "rx_name": rx.name,
        "rx_location": location(rx),
        "rx_device": "KiwiSDR 2 (simulated)",
        "rx_antenna": rx.antenna,
        "rx_grid": maidenhead(rx.latitude, rx.longitude),
        "rx_asl": int(round(rx.altitude_m)),
        "rx_gps": kiwi_str_encode(gps_string(rx)),
        "owner_info": "",
        "status_msg": "",
        "freq_offset": 0,
        "max_freq": 0,
        "inactivity_timeout_mins": minutes(f.inactivity_after_s) if f.inactivity_after_s else 0,
        "ip_limit_mins": minutes(f.ip_limit_after_s) if f.ip_limit_after_s else 0,
        "ext_api_nchans": rx.rx_chans,
        "tdoa_nchans": rx.rx_chans,
        "chan_no_pwd": 0,
        "init": {"freq": 7020, "mode": "lsb", "zoom": 0, "max_dB": -10, "min_dB": -110},
        "GPS_tstamp": f.gps != "disabled",
    }
    return json.dumps(cfg, separators=(",", ":"))


def load_dxcfg() -> str:
    return json.dumps({"dx_type": [], "band_svc": [], "bands": []}, separators=(",", ":"))


def load_dxcomm_cfg() -> str:
    return json.dumps({"dx_type": [], "dxcomm_version": 1}, separators=(",", ":"))


def status_page(rx: SimReceiver, *, users: int, uptime_s: float, now_unix: float | None = None) -> str:
    """The ``GET /status`` page: newline-separated ``key=value`` lines (AJAX_STATUS)."""
    f = rx.faults
    offline = f.down
    maj, mnr = rx.version
    badges = ""
    if rx.wide:
        badges += "  \U0001f3b5 20 kHz"
    if f.gps != "disabled":
        badges += "  \U0001f4e1 GPS"
    if f.inactivity_after_s or f.ip_limit_after_s:
        badges += "  \u23f3 LIMITS"
    tdoa_ch = -1 if f.gps == "disabled" else rx.rx_chans
    uptime = int(uptime_s)
    fixes = 0 if f.gps == "no_fix" else int(uptime / max(rx.gps_fix_interval_s, 1e-3))
    date = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(now_unix))
    lines = [
        f"status={'offline' if offline else 'active'}",
        f"offline={'yes' if offline else 'no'}",
        f"name={rx.name}",
        f"sdr_hw=KiwiSDR v{maj}.{mnr}{badges} ",
        "op_email=",
        f"bands=0-{BANDWIDTH_HZ}",
        f"users={min(users, rx.rx_chans)}",
        f"users_max={rx.rx_chans}",
        "avatar_ctime=0",
        f"gps={gps_string(rx)}",
        f"gps_good={0 if f.gps == 'no_fix' else 8}",
        f"fixes={fixes}",
        f"fixes_min={0 if f.gps == 'no_fix' else int(60 / max(rx.gps_fix_interval_s, 1e-3))}",
        f"fixes_hour={0 if f.gps == 'no_fix' else int(3600 / max(rx.gps_fix_interval_s, 1e-3))}",
        f"tdoa_id={rx.id}",
        f"tdoa_ch={tdoa_ch}",
        f"asl={int(round(rx.altitude_m))}",
        f"loc={location(rx)}",
        f"sw_version=KiwiSDR_v{maj}.{mnr}",
        f"antenna={rx.antenna}",
        "snr=0,0",
    ]
    if rx.password:
        lines.append("auth=password")
    lines += [f"uptime={uptime}", "gps_date=1,1", f"date={date}"]
    return "\n".join(lines) + "\n"
