"""Sessions for the TDoA tests without sockets: the simulator's own frame synthesis and GPS headers
(:meth:`Scene.stream` -> :class:`FrameSource`, its receive chain and stamps), then the client's
segment assembly (:func:`build_segment`) and :func:`sdrlab.model.build_dataset` -- the path a live
capture takes, minus the network, so many seeds are cheap.

Everything the simulator models can be asked for: the transmitter's signal (``modulation``: ``am``
tones, ``am-broadcast``, ``dcf77``, ``morse``, ``ssb``, ``ofdm``, ``cw``), a sky wave, each receiver's
processing delay and GPS stamp jitter (scene truth, invisible to the client), the passband the
client asks for and AGC.  :func:`true_lag_s` is the geometric lag (what locates the transmitter);
:func:`arrival_lag_s` adds the receivers' processing delays (what the samples show).
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import xarray as xr

from sdrlab import model, timing
from sdrlab.receivers import kiwiwire as kw
from sdrlab.receivers.kiwisdr import HEADER_DTYPE, Capture, ReceiverInfo, build_segment
from sdrlab.sim.frontend import AgcSettings
from sdrlab.sim.scene import Scene, SimReceiver, SkyWave, Transmitter

TUNE_HZ = 9_749_000.0
T0_UTC = np.datetime64("2026-03-02T10:00:00", "ns")
T0_GPS = timing.utc_to_gps_ns(T0_UTC, 18)

#: (id, lat, lon); the transmitter inside each hull
THREE = [("rx-north", 52.37, 9.73), ("rx-southwest", 49.45, 6.64), ("rx-southeast", 49.01, 12.10)]
THREE_TX = (50.30, 9.40)
SIX = [("rx-oslo", 59.91, 10.75), ("rx-stockholm", 59.33, 18.07), ("rx-gothenburg", 57.71, 11.97),
       ("rx-copenhagen", 55.68, 12.57), ("rx-aarhus", 56.16, 10.20), ("rx-kalmar", 56.66, 16.36)]
SIX_TX = (57.90, 14.20)
_RATES = (12001.135, 12001.150, 12001.188, 12001.162, 12001.121, 12001.174, 12001.143)



@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's OpenBLAS on one thread for the block (restored after; a no-op where the bundled
    library is not found).  The simulator's per-frame product (24 x 512 complex) runs many
    times slower with threaded OpenBLAS, worst on a busy 2-core machine."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    lib = ctypes.CDLL(libs[0]) if libs else None
    get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    put = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get is None or put is None:
        yield
        return
    before = int(get())
    put(1)
    try:
        yield
    finally:
        put(before)


#: edits of the GPS header fields of one station's frames: (last, gpssec, gpsnsec) arrays -> same
StampEdit = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def make_scene(stations: Sequence[tuple[str, float, float]], tx: tuple[float, float], *,
               snr_db: float | Sequence[float] = 20.0, seed: int = 0, modulation: str = "am",
               tx_params: dict[str, Any] | None = None, sky_wave: SkyWave | None = None,
               delays_s: float | Sequence[float] | dict[str, float] = 0.0,
               jitter_s: float | Sequence[float] | dict[str, float] = 0.0,
               frequency_hz: float = 9_750_000.0, **rx_changes: dict[str, Any]) -> Scene:
    """A scene whose receivers each see the transmitter at ``snr_db`` (the noise over the whole
    sample rate set to match: inside a narrower passband the SNR is higher); ``rx_changes`` maps a
    receiver id (``-`` as ``_``) to SimReceiver fields to change.

    ``modulation`` and ``tx_params`` choose the signal model, ``sky_wave`` adds an ionospheric
    path; ``delays_s`` (each receiver's processing delay) and ``jitter_s`` (the standard deviation
    of its GPS stamps' error) are one value for all, one per receiver, or a dict by id."""
    transmitter = Transmitter(id="tx-test", latitude=tx[0], longitude=tx[1], frequency_hz=frequency_hz,
                              power_dbm=40.0, modulation=modulation,
                              params=tuple(sorted((tx_params or {}).items())), sky_wave=sky_wave)
    rxs = tuple(SimReceiver(id=sid, name=sid, latitude=lat, longitude=lon, sample_rate=_RATES[i % len(_RATES)],
                            gps_fix_interval_s=2.0 + (i % 3))
                for i, (sid, lat, lon) in enumerate(stations))
    scene = Scene(transmitters=(transmitter,), receivers=rxs, seed=seed, name="tdoa-test")
    snrs = _per_receiver(snr_db, rxs)
    delays = _per_receiver(delays_s, rxs)
    jitters = _per_receiver(jitter_s, rxs)
    out = []
    for rx, snr, delay, jitter in zip(rxs, snrs, delays, jitters):
        sig = scene.truth(rx.id, TUNE_HZ)["signal_power_dbfs"]
        changes = {"noise_dbfs": sig - snr, "processing_delay_s": delay, "gps_jitter_s": jitter,
                   **rx_changes.get(rx.id.replace("-", "_"), {})}
        out.append(replace(rx, **changes))  # type: ignore[arg-type]
    return replace(scene, receivers=tuple(out))


def _per_receiver(v: float | Sequence[float] | dict[str, float], rxs: Sequence[SimReceiver]) -> list[float]:
    if isinstance(v, dict):
        return [float(v.get(rx.id, 0.0)) for rx in rxs]
    if isinstance(v, (int, float)):
        return [float(v)] * len(rxs)
    return [float(x) for x in v]


def capture(scene: Scene, rx_id: str, *, t0_gps_ns: int, duration_s: float, stream_seed: int = 0,
            stamp_edit: StampEdit | None = None, gps: str = "ok",
            passband: tuple[float, float] = (-5000.0, 5000.0), agc: AgcSettings | None = None) -> Capture:
    """What the client would have captured from this receiver, stream starting at ``t0_gps_ns``
    with the passband ``passband`` (Hz from the tuned frequency) and ``agc`` (default: off)."""
    rx0 = scene.receiver(rx_id)
    scene = scene.replace_receiver(rx_id, faults=replace(rx0.faults, gps=gps))  # type: ignore[arg-type]
    rx = scene.receiver(rx_id)
    src = scene.stream(rx_id, tuned_hz=TUNE_HZ, t0_gps_ns=t0_gps_ns, t_ref_gps_ns=T0_GPS, stream_seed=stream_seed,
                       low_cut=passband[0], high_cut=passband[1], agc=agc or AgcSettings())
    nf = int(duration_s * rx.sample_rate // kw.SAMPLES_PER_FRAME)
    h = np.zeros(nf, dtype=HEADER_DTYPE)
    data = np.empty((nf, kw.SAMPLES_PER_FRAME, 2), dtype=">i2")
    for k in range(nf):
        data[k] = src.frame(k)
        h["smeter"][k] = src.smeter
        h["last_gps"][k], h["gpssec"][k], h["gpsnsec"][k] = src.header(k)
    h["tag"] = b"SND"
    h["flags"] = kw.FLAG_STEREO
    h["seq"] = np.arange(1, nf + 1)
    if stamp_edit is not None:
        last, gsec, gnsec = (h[f].copy() for f in ("last_gps", "gpssec", "gpsnsec"))
        stamp_edit(last, gsec, gnsec)
        h["last_gps"], h["gpssec"], h["gpsnsec"] = last, gsec, gnsec
    seg = build_segment(h.tobytes(), data.tobytes(), nominal_fs=rx.announced_sample_rate,
                        gps_utc_offset_s=18, host_gps_ns=t0_gps_ns)
    info = ReceiverInfo(host="sim", port=0, version="1.711", rx_chans=rx.rx_chans, audio_rate=rx.audio_rate,
                        sample_rate=rx.announced_sample_rate, name=rx.name, position=(rx.latitude, rx.longitude))
    return Capture(station=rx_id, frequency_hz=TUNE_HZ, low_cut=passband[0], high_cut=passband[1],
                   requested_s=duration_s, info=info, segments=[seg])


def session(scene: Scene, *, duration_s: float = 12.0, stagger_s: float = 0.4, seed: int = 0,
            stamp_edits: dict[str, StampEdit] | None = None, gps: dict[str, str] | None = None,
            durations: dict[str, float] | None = None,
            reconnects: dict[str, tuple[float, float]] | None = None,
            passband: tuple[float, float] = (-5000.0, 5000.0), agc: AgcSettings | None = None) -> xr.Dataset:
    """A session Dataset of every receiver of ``scene``; streams start up to ``stagger_s`` apart
    (seeded), as parallel connections do.  ``reconnects`` maps a receiver to (at_s, gap_s): its
    stream ends after ``at_s`` and a new one (a new segment) starts ``gap_s`` later.  ``passband``
    and ``agc`` are what the client asks every receiver for."""
    with one_blas_thread():
        caps = _captures(scene, duration_s, stagger_s, seed, stamp_edits, gps, durations, reconnects,
                         passband, agc)
    tx = scene.transmitters[0]
    return model.build_dataset(caps, {}, session_id=f"tdoa-{scene.name}-{seed}", attrs={
        "simulated_scene": scene.name, "transmitter_latitude": tx.latitude,
        "transmitter_longitude": tx.longitude, "transmitter_frequency_hz": tx.frequency_hz})


def _captures(scene: Scene, duration_s: float, stagger_s: float, seed: int,
              stamp_edits: dict[str, StampEdit] | None, gps: dict[str, str] | None,
              durations: dict[str, float] | None, reconnects: dict[str, tuple[float, float]] | None,
              passband: tuple[float, float] = (-5000.0, 5000.0), agc: AgcSettings | None = None) -> list[Capture]:
    rng = np.random.default_rng([seed, 99])
    caps = []
    for rx in scene.receivers:
        t0 = T0_GPS + int(rng.uniform(0.0, stagger_s) * 1e9)
        dur = (durations or {}).get(rx.id, duration_s)
        edit, mode = (stamp_edits or {}).get(rx.id), (gps or {}).get(rx.id, "ok")
        if rx.id in (reconnects or {}):
            at, gap = (reconnects or {})[rx.id]
            first = capture(scene, rx.id, t0_gps_ns=t0, duration_s=at, stream_seed=seed, stamp_edit=edit, gps=mode,
                            passband=passband, agc=agc)
            second = capture(scene, rx.id, t0_gps_ns=t0 + int((at + gap) * 1e9), duration_s=dur - at - gap,
                             stream_seed=seed + 1000, stamp_edit=edit, gps=mode, passband=passband, agc=agc)
            first.segments.extend(second.segments)
            caps.append(first)
            continue
        caps.append(capture(scene, rx.id, t0_gps_ns=t0, duration_s=dur, stream_seed=seed, stamp_edit=edit, gps=mode,
                            passband=passband, agc=agc))
    return caps


def true_lag_s(scene: Scene, a: str, b: str) -> float:
    """Arrival at b minus arrival at a by the WGS84 geodesics (the ground wave; what locates the
    transmitter)."""
    tx = scene.transmitters[0]
    return scene.delay_s(scene.receiver(b), tx) - scene.delay_s(scene.receiver(a), tx)


def arrival_lag_s(scene: Scene, a: str, b: str) -> float:
    """What the samples show: :func:`true_lag_s` plus b's processing delay minus a's."""
    tx = scene.transmitters[0]
    return scene.arrival_s(scene.receiver(b), tx) - scene.arrival_s(scene.receiver(a), tx)


def with_stamp_errors(ds: xr.Dataset, *, delays_s: dict[str, float] | None = None,
                      jitter_s: float | dict[str, float] = 0.0, seed: int = 0) -> xr.Dataset:
    """A copy of a built session whose GPS stamps are as if each receiver's samples lagged them
    by ``delays_s[station]`` (its processing delay: the station looks that much late) and each
    stamp had an independent Gaussian error of ``jitter_s`` -- what ``SimReceiver``'s
    ``processing_delay_s`` and ``gps_jitter_s`` do, applied to the stamps of a session already
    synthesised, so one synthesis serves many draws.  The stored fits move with the delays."""
    out = ds.copy(deep=False)
    gps = ds["frame_gps_ns"].values.copy()
    t0 = ds["segment_t0"].values.copy()
    rng = np.random.default_rng([seed, 4242])
    for i, sid in enumerate(str(s) for s in ds["station"].values):
        delay = (delays_s or {}).get(sid, 0.0)
        jit = jitter_s.get(sid, 0.0) if isinstance(jitter_s, dict) else jitter_s
        has = gps[i] > 0
        err = delay + (rng.normal(0.0, jit, gps.shape[1]) if jit > 0 else 0.0)
        gps[i] = np.where(has, gps[i] + np.rint(np.asarray(err) * 1e9).astype(np.int64), gps[i])
        t0[i] = t0[i] + np.timedelta64(int(round(delay * 1e9)), "ns")
    out["frame_gps_ns"] = (ds["frame_gps_ns"].dims, gps)
    out["segment_t0"] = (ds["segment_t0"].dims, t0)
    return out
