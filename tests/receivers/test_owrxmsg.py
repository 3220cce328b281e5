"""OpenWebRX text messages against the protocol page's documented strings (sections 1.2, 2, 3)."""

from __future__ import annotations

import json

import pytest

from sdrlab.errors import ReceiverProtocolError
from sdrlab.receivers import owrxmsg as om


def test_handshake_lines() -> None:
    assert om.client_handshake("openwebrx.js") == "SERVER DE CLIENT client=openwebrx.js type=receiver"
    assert om.client_handshake()[:16] == "SERVER DE CLIENT"
    with pytest.raises(ValueError):
        om.client_handshake(kind="admin")
    assert om.parse_server_handshake("CLIENT DE SERVER server=openwebrx version=v1.2.121") == {
        "server": "openwebrx", "version": "v1.2.121"}
    with pytest.raises(ReceiverProtocolError, match="legacy"):
        om.parse_server_handshake("CLIENT DE SERVER openwebrx.py")
    with pytest.raises(ReceiverProtocolError, match="not an OpenWebRX"):
        om.parse_server_handshake("MSG center_freq=1")


def test_connection_properties_as_the_browser_sends_them() -> None:
    assert json.loads(om.connection_properties()) == {
        "type": "connectionproperties", "params": {"output_rate": 12000, "hd_output_rate": 48000}}
    plus = json.loads(om.connection_properties(nr_enabled=False, nr_threshold=0))["params"]
    assert list(plus) == ["output_rate", "hd_output_rate", "nr_enabled", "nr_threshold"]  # Plus keys last


def test_dspcontrol_in_browser_order_with_an_integer_offset() -> None:
    lo, hi = om.DEFAULT_BANDPASS["nfm"]
    msg = json.loads(om.dspcontrol(12500.0, "nfm", lo, hi, dmr_filter=3))
    assert msg["type"] == "dspcontrol"
    assert list(msg["params"].items()) == [("low_cut", -4000), ("high_cut", 4000), ("offset_freq", 12500),
                                           ("mod", "nfm"), ("dmr_filter", 3), ("squelch_level", -150),
                                           ("secondary_mod", False)]
    assert isinstance(msg["params"]["offset_freq"], int)  # the server rejects 12500.0
    assert '"offset_freq":12500,' in om.dspcontrol(12500.0, "nfm")
    with pytest.raises(ValueError, match="whole number"):
        om.dspcontrol(12500.5)
    with pytest.raises(ValueError, match="validator"):
        om.dspcontrol(0, "NFM")
    with pytest.raises(ValueError, match="validator"):
        om.dspcontrol(0, "usb-d")  # upstream's validator has no '-'
    assert json.loads(om.dspcontrol(0, "usb-d", plus=True))["params"]["mod"] == "usb-d"
    only = json.loads(om.dspcontrol(offset_freq=-2000, squelch_level=None, secondary_mod=None))
    assert only["params"] == {"offset_freq": -2000}  # later changes send only the changed keys
    assert json.loads(om.dspcontrol_start()) == {"type": "dspcontrol", "action": "start"}


def test_server_messages() -> None:
    assert om.parse_message('{"type":"smeter","value":1.5e-05}') == ("smeter", 1.5e-05)
    assert om.parse_message('{"type":"backoff","reason":"Too many clients"}') == ("backoff", "Too many clients")
    kind, chat = om.parse_message('{"type":"chat_message","name":"a","text":"hi","color":"#fff"}')
    assert kind == "chat_message" and chat["text"] == "hi"
    with pytest.raises(ReceiverProtocolError):
        om.parse_message("CLIENT DE SERVER server=openwebrx version=v1.2.2")
    with pytest.raises(ReceiverProtocolError):
        om.parse_message('{"value": 1}')


def test_incremental_config_and_profile_changes() -> None:
    cfg = om.ConfigState()
    assert cfg.merge({"fft_size": 4096, "audio_compression": "adpcm"}) == []
    assert cfg.merge({"center_freq": 145_000_000, "samp_rate": 2_400_000, "sdr_id": "rtl", "profile_id": "2m",
                      "start_freq": 145_500_000}) == []  # first values: nothing changed
    assert (cfg.center_freq, cfg.samp_rate, cfg.profile) == (145e6, 2.4e6, "rtl|2m")
    # a phantom listener selects 70 cm: an incremental dict of the changed keys only
    assert cfg.merge({"center_freq": 433_000_000, "profile_id": "70cm", "sdr_id": "rtl"}) == [
        "center_freq", "profile_id"]
    assert cfg.values["fft_size"] == 4096 and cfg.profile == "rtl|70cm"
    cfg.merge({"start_freq": None})
    assert "start_freq" not in cfg.values


def test_reachable_inside_the_profile_only() -> None:
    assert om.reachable(145e6, 2.4e6, 145.5e6, 12.5e3)
    assert om.reachable(145e6, 2.4e6, 146.19375e6, 12.5e3)  # right at the edge minus half the channel
    assert not om.reachable(145e6, 2.4e6, 146.2e6, 12.5e3)
    assert not om.reachable(145e6, 2.4e6, 433e6, 12.5e3)


def test_smeter_db() -> None:
    assert om.smeter_db(1.0) == 0.0 and om.smeter_db(1e-6) == pytest.approx(-60.0)
    assert om.smeter_db(0.0) == float("-inf")
