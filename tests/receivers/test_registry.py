"""The protocol registry: a station's protocol picks its client and its status page reader; an
unknown protocol is a ConfigError naming the station and the protocol; KiwiSDR's /status page is
read into the neutral ReceiverStatus."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sdrlab.capture import Receiver, ReceiverStatus, session_timing
from sdrlab.errors import ConfigError
from sdrlab.receivers import KiwiOptions, KiwiReceiver, make_receiver, probe_status, protocols, register
from sdrlab.receivers import _REGISTRY
from sdrlab.receivers.kiwistatus import parse_status
from sdrlab.stations import Station

STATION = Station(id="a-kiwi", name="A Kiwi", host="127.0.0.1", port=1, latitude=1.0, longitude=2.0, channels=3,
                  password="secret")


def test_kiwisdr_station_gets_a_kiwi_client_with_its_settings() -> None:
    rx = make_receiver(STATION, KiwiOptions(low_cut=-3000.0))
    assert isinstance(rx, KiwiReceiver) and isinstance(rx, Receiver)
    assert (rx.station, rx.host, rx.port, rx.channels, rx.protocol) == ("a-kiwi", "127.0.0.1", 1, 3, "kiwisdr")
    assert rx.options.password == "secret" and rx.options.low_cut == -3000.0  # type: ignore[attr-defined]
    assert "kiwisdr" in protocols()


def test_unknown_protocol_is_a_config_error_naming_station_and_protocol() -> None:
    other = replace(STATION, protocol="websdr")
    with pytest.raises(ConfigError, match=r"a-kiwi: no receiver for protocol 'websdr' \(known: .*kiwisdr"):
        make_receiver(other)
    with pytest.raises(ConfigError, match="websdr"):
        probe_status(other)


def test_a_registered_protocol_is_used_by_name() -> None:
    made: list[tuple[str, object]] = []

    def factory(station: Station, options: object) -> KiwiReceiver:
        made.append((station.id, options))
        return KiwiReceiver(station.id, station.host, station.port)

    register("testproto", factory)
    try:
        make_receiver(replace(STATION, protocol="testproto"), "opts")
        assert made == [("a-kiwi", "opts")]
        # no status reader registered: a reason, not an exception
        status, latency, error = probe_status(replace(STATION, protocol="testproto"))
        assert status is None and latency == 0.0 and error and "no status page reader" in error
    finally:
        _REGISTRY.pop("testproto")


def test_kiwi_status_reader_unreachable_says_why() -> None:
    status, _latency, error = probe_status(replace(STATION, port=9), timeout=1.0)  # port 9: nothing listens
    assert status is None and error and ("Connection refused" in error or "URLError" in error)


def test_parse_kiwi_status_page() -> None:
    page = parse_status("status=active\nname=My Kiwi\nusers_max=8\nbands=0-30000000\nantenna=loop\nsdr_hw=KiwiSDR v1\n")
    assert page == ReceiverStatus(protocol="kiwisdr", name="My Kiwi", antenna="loop", channels=8,
                                  bands_hz=(0.0, 30e6), gps="unknown", hw="KiwiSDR v1", fields=page.fields)
    assert page.fields["status"] == "active"
    assert parse_status("fixes=0\nfixes_hour=0\ngps_good=1\n").gps == "no fixes"
    assert parse_status("fixes=12\nfixes_hour=300\n").gps == "ok"
    assert parse_status("bands=junk\nusers_max=x\n").bands_hz is None


@pytest.mark.parametrize("timings, word", [
    (["gps", "gps"], "gps"), (["receipt"], "receipt"), (["gps", "receipt"], "mixed"), (["gps", "none"], "gps"),
    (["none", "none"], "none"), ([], "none"), (["receipt", "none", "gps"], "mixed"),
])
def test_session_timing(timings: list[str], word: str) -> None:
    assert session_timing(timings) == word
