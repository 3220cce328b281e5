"""Signal metrics of audio captures (``kind`` ``audio``: OpenWebRX), from what such a receiver
honestly gives (protocol page section 11.3): its S-meter (mean power of the channel after its
passband filter) and its waterfall rows (the server's Hamming-window FFT, averaged, in dB).
Everything is relative to the receiver's ADC full scale times an unknown gain: uncalibrated.

Per station (the metric names and units of :mod:`sdrlab.metric_table`):

* ``noise_floor_dbfs_hz`` N0: the median over rows of the median bin of the row's inner span
  (the outer ``edge_fraction`` at each end dropped: band-edge roll-off, the codec's start-up),
  converted to a density with the window's sum of squares: ``N0 = 10^((dB - offset)/10) /
  (samp_rate sum w^2)`` (section 4.5).  The median is the noise where signals occupy less than
  half the span.
* ``total_power_dbfs``: the channel power the S-meter reports, averaged in linear power (signal
  plus noise in the passband; snapshots, not a continuous average).
* ``noise_bandwidth_hz`` B: the passband width plus the filter's transition (``transition_hz``,
  320 Hz in OpenWebRX's channel filter): the noise power in the channel is N0 B.
* ``signal_power_dbfs`` S = total - N0 B (NaN when not above the noise), ``snr_db`` S / (N0 B).
* ``occupancy_fraction``: the fraction of waterfall rows whose power integrated over the channel
  (the bins inside ``frequency + low .. frequency + high``) exceeds the noise in that band by
  ``threshold_db``; ``channel_power_fft_dbfs`` the mean of that integrated power (signal plus
  noise; wide signals only: the codec underestimates narrow peaks, section 11.3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from .metric_table import LONG_NAMES, UNITS

__all__ = ["AUDIO_METRICS", "MIXED_COMMENT", "audio_metrics", "mixed_psd", "mixed_spectrogram", "row_bin_frequencies",
           "waterfall_psd", "waterfall_spectrogram", "window_sum_sq"]

F64 = npt.NDArray[np.float64]

#: the metrics an audio station has (the rest of the table is NaN for it)
AUDIO_METRICS = ("noise_floor_dbfs_hz", "signal_power_dbfs", "total_power_dbfs", "snr_db", "noise_bandwidth_hz",
                 "occupancy_fraction", "channel_power_fft_dbfs", "passband_low_hz", "passband_high_hz")


def window_sum_sq(fft_size: int, window: str = "hamming") -> float:
    """sum w^2 of the waterfall's window (the symmetric Hamming window of OpenWebRX's csdr)."""
    if window != "hamming":
        raise ValueError(f"unknown waterfall window {window!r}")
    i = np.arange(fft_size)
    w = 0.54 - 0.46 * np.cos(2 * np.pi * i / (fft_size - 1))
    return float(np.sum(w * w))


def row_bin_frequencies(center_hz: float, samp_rate_hz: float, fft_size: int) -> F64:
    """Absolute frequency of each bin of a row: ``center - samp_rate/2 + k samp_rate / N``."""
    return np.asarray(center_hz - samp_rate_hz / 2 + np.arange(fft_size) * (samp_rate_hz / fft_size), np.float64)


#: waterfall rows measured at a time (4 MB at 4,096 bins): memory does not grow with a session's length
ROW_BLOCK = 256


def _db(x: float) -> float:
    return float(10 * np.log10(x)) if x > 0 and np.isfinite(x) else float("nan")


def _station(s: xr.Dataset, *, offset_db: float, window: str, transition_hz: float, threshold_db: float,
             edge_fraction: float, low: float, high: float, freq: float) -> dict[str, float]:
    out = {k: float("nan") for k in AUDIO_METRICS}
    out["passband_low_hz"], out["passband_high_hz"] = low, high
    bw = high - low + transition_hz
    out["noise_bandwidth_hz"] = bw
    if "smeter_dbfs" in s:
        sm = s["smeter_dbfs"].values
        sm = sm[np.isfinite(sm)]
        if sm.size:
            out["total_power_dbfs"] = _db(float(np.mean(10 ** (sm / 10))))
    if "spectrum" not in s:
        return out
    sizes = s["spectrum_fft_size"].values.astype(np.int64)
    rows = np.flatnonzero(sizes > 0)
    if rows.size == 0:
        return out
    centre, rate = s["spectrum_center_hz"].values, s["spectrum_samp_rate_hz"].values
    n0_rows = np.full(rows.size, np.nan)
    band_rows = np.full(rows.size, np.nan)
    db = None
    for j, r in enumerate(rows):
        if j % ROW_BLOCK == 0:  # rows a block at a time: a streamed session's are read from the store
            db = s["spectrum"].isel(spectrum_row=rows[j:j + ROW_BLOCK]).values
        assert db is not None
        n = int(sizes[r])
        lin = 10 ** ((db[j % ROW_BLOCK, :n].astype(np.float64) - offset_db) / 10) / window_sum_sq(n, window)  # FS^2 per bin * N
        edge = int(round(n * edge_fraction))
        n0_rows[j] = float(np.median(lin[edge: n - edge])) / rate[r]
        f = row_bin_frequencies(float(centre[r]), float(rate[r]), n)
        inside = (f >= freq + low) & (f <= freq + high)
        if inside.any():
            band_rows[j] = float(np.sum(lin[inside])) / n  # integrated power, FS^2
    n0 = float(np.nanmedian(n0_rows))
    out["noise_floor_dbfs_hz"] = _db(n0)
    if np.isfinite(band_rows).any():
        out["channel_power_fft_dbfs"] = _db(float(np.nanmean(band_rows)))
        width = float(np.median(rate[rows] / sizes[rows]))
        noise_band = n0 * max(high - low, width)
        valid = band_rows[np.isfinite(band_rows)]
        out["occupancy_fraction"] = float(np.mean(valid > noise_band * 10 ** (threshold_db / 10)))
    total = 10 ** (out["total_power_dbfs"] / 10) if np.isfinite(out["total_power_dbfs"]) else float("nan")
    s_pow = total - n0 * bw
    out["signal_power_dbfs"] = _db(s_pow)
    out["snr_db"] = _db(s_pow / (n0 * bw))
    return out


def audio_metrics(ds: xr.Dataset, *, transition_hz: float = 320.0, threshold_db: float = 3.0,
                  edge_fraction: float = 0.05) -> xr.Dataset:
    """The metrics of the session's audio stations (dim ``station``: those of kind ``audio``);
    see the module docstring.  The tuning and passband are each station's first audio segment's
    (the session's where it has none)."""
    kinds = ds["kind"].values if "kind" in ds.coords else np.array(["iq"] * ds.sizes["station"])
    ids = [str(x) for x, k in zip(ds["station"].values, kinds) if k == "audio"]
    offset_db = float(ds["spectrum"].attrs.get("offset_db", -70.0)) if "spectrum" in ds else -70.0
    window = str(ds["spectrum"].attrs.get("window", "hamming")) if "spectrum" in ds else "hamming"
    rows: dict[str, list[float]] = {k: [] for k in AUDIO_METRICS}
    for sid in ids:
        s = ds.sel(station=sid)
        low = float(s["audio_segment_low_cut"].values[0]) if "audio_segment_low_cut" in s else float("nan")
        high = float(s["audio_segment_high_cut"].values[0]) if "audio_segment_high_cut" in s else float("nan")
        freq = float(s["audio_segment_frequency_hz"].values[0]) if "audio_segment_frequency_hz" in s else float("nan")
        if not np.isfinite(low):
            low = float(ds.attrs.get("passband_low_hz", np.nan))
        if not np.isfinite(high):
            high = float(ds.attrs.get("passband_high_hz", np.nan))
        if not np.isfinite(freq):
            freq = float(ds.attrs.get("center_frequency_hz", np.nan))
        m = _station(s, offset_db=offset_db, window=window, transition_hz=transition_hz, threshold_db=threshold_db,
                     edge_fraction=edge_fraction, low=low, high=high, freq=freq)
        for k in AUDIO_METRICS:
            rows[k].append(m[k])
    data: dict[str, Any] = {
        k: ("station", np.array(v, np.float64), {"units": UNITS.get(k, ""), "long_name": LONG_NAMES.get(k, k)})
        for k, v in rows.items()}
    out = xr.Dataset(data, coords={"station": ("station", np.array(ids, dtype=object))})
    out.attrs = {"title": "sdrlab signal metrics (audio receivers: S-meter and waterfall, uncalibrated)",
                 "transition_hz": transition_hz, "occupancy_threshold_db": threshold_db,
                 "edge_fraction": edge_fraction}
    return out


def _audio_ids(ds: xr.Dataset) -> list[str]:
    if "kind" not in ds.coords:
        return []
    return [str(s) for s, k in zip(ds["station"].values, ds["kind"].values) if k == "audio"]


def _scale(ds: xr.Dataset) -> tuple[float, str, float]:
    """The waterfall's dB offset and window (the ``spectrum`` attrs) and the tuned frequency."""
    a = ds["spectrum"].attrs
    return float(a.get("offset_db", -70.0)), str(a.get("window", "hamming")), float(ds.attrs.get("center_frequency_hz", 0.0))


def _first_profile_rows(s: xr.Dataset, offset_db: float, window: str) -> tuple[F64, F64, npt.NDArray[np.intp]] | None:
    """A station's rows taken with its first profile (same centre and FFT size as its first row)
    as (absolute bin frequencies, densities FS^2/Hz (rows, bins), their row indices); None
    without rows."""
    sizes = s["spectrum_fft_size"].values
    centres = s["spectrum_center_hz"].values
    valid = np.flatnonzero(sizes > 0)
    if valid.size == 0:
        return None
    first = valid[0]
    rows = valid[(centres[valid] == centres[first]) & (sizes[valid] == sizes[first])]
    n = int(sizes[first])
    rate = float(s["spectrum_samp_rate_hz"].values[first])
    db = s["spectrum"].values[rows, :n].astype(np.float64)
    dens = 10 ** ((db - offset_db) / 10) / (rate * window_sum_sq(n, window))
    return row_bin_frequencies(float(centres[first]), rate, n), dens, rows


def waterfall_psd(ds: xr.Dataset) -> xr.DataArray:
    """The mean waterfall row of each audio station as a power density (station, frequency) in
    FS^2/Hz (uncalibrated), ``frequency`` relative to the session's tuned frequency and
    ``frequency_abs`` absolute (stations whose rows lie on other bins are NaN off theirs)."""
    offset_db, window, tuned = _scale(ds)
    parts = []
    for sid in _audio_ids(ds):
        got = _first_profile_rows(ds.sel(station=sid), offset_db, window)
        if got is None:
            continue
        f, dens, _ = got
        parts.append(xr.DataArray(dens.mean(axis=0)[None, :], dims=("station", "frequency_abs"),
                                  coords={"station": [sid], "frequency_abs": f}))
    if not parts:
        raise ValueError("no audio station with waterfall rows in this session")
    out = xr.concat(parts, dim="station", join="outer")
    out = out.assign_coords(frequency=("frequency_abs", out["frequency_abs"].values - tuned)).swap_dims(
        frequency_abs="frequency")
    out.attrs = {"units": "FS^2/Hz", "long_name": "mean waterfall row (receiver's FFT, uncalibrated)",
                 "center_frequency_hz": tuned, "source": "waterfall"}
    return out


def waterfall_spectrogram(ds: xr.Dataset, *, max_rows: int = 600) -> xr.DataArray:
    """The waterfall rows of each audio station as a power density (station, time, frequency),
    ``time`` in seconds since the station's first row on a common grid (row number times the
    stations' median row period, from receipt times: the rows carry no signal time), averaged in
    linear power down to at most ``max_rows`` rows; ``frequency`` relative to the tuned frequency."""
    offset_db, window, tuned = _scale(ds)
    found: list[tuple[str, F64, F64]] = []
    periods = []
    for sid in _audio_ids(ds):
        s = ds.sel(station=sid)
        got = _first_profile_rows(s, offset_db, window)
        if got is None:
            continue
        f, dens, rows = got
        found.append((sid, f, dens))
        if rows.size > 1:
            t = s["spectrum_time"].values[rows]
            periods.append(float((t[-1] - t[0]) / np.timedelta64(1, "ns")) / 1e9 / (rows.size - 1))
    if not found:
        raise ValueError("no audio station with waterfall rows in this session")
    period = float(np.median(periods)) if periods else 1.0
    k = max(1, int(np.ceil(max(d.shape[0] for _, _, d in found) / max_rows)))
    parts = []
    for sid, f, dens in found:
        m = dens.shape[0] // k * k
        if k > 1 and m:
            dens = dens[:m].reshape(-1, k, dens.shape[1]).mean(axis=1)
        t = np.arange(dens.shape[0]) * period * k
        parts.append(xr.DataArray(dens[None], dims=("station", "time", "frequency"),
                                  coords={"station": [sid], "time": np.round(t, 6), "frequency": f - tuned}))
    out = xr.concat(parts, dim="station", join="outer")
    out.attrs = {"units": "FS^2/Hz", "long_name": "waterfall rows (receiver's FFT, uncalibrated, receipt times)",
                 "center_frequency_hz": tuned, "source": "waterfall", "row_period_s": period}
    return out


# ---- mixed sessions: IQ stations from their samples, audio stations from their waterfall --------
#: what a mixed session's PSD says about its two kinds of density
MIXED_COMMENT = ("IQ stations (psd_source 'welch'): Welch PSD of their samples, re the receiver's IQ full scale; "
                 "audio stations ('waterfall'): the receiver's own FFT rows converted to a density with "
                 "section 4.5 of the protocol page, re its ADC full scale times an unknown gain: uncalibrated, "
                 "their absolute level is not comparable with the IQ stations'.  Each station is NaN off its "
                 "own bins (resolution_hz apart)")


def _kinds(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    kinds = ds["kind"].values if "kind" in ds.coords else np.array(["iq"] * ds.sizes["station"])
    ids = [str(s) for s in ds["station"].values]
    return [s for s, k in zip(ids, kinds) if k != "audio"], [s for s, k in zip(ids, kinds) if k == "audio"]


def _label(da: xr.DataArray, source: str, resolution: npt.ArrayLike) -> xr.DataArray:
    out = da.reset_coords(drop=True)  # per-kind coordinates (sample_rate, n_segments, frequency_abs...)
    return out.assign_coords(psd_source=("station", [source] * out.sizes["station"]),
                             resolution_hz=("station", np.asarray(resolution, np.float64)))


def _join(parts: list[xr.DataArray], ds: xr.Dataset, iq_attrs: dict[str, Any], audio: list[str],
          long_name: str) -> xr.DataArray:
    out = xr.concat(parts, dim="station", join="outer", coords="different", compat="equals")
    out = out.sel(station=[str(s) for s in ds["station"].values if str(s) in out["station"].values])
    tuned = float(ds.attrs.get("center_frequency_hz", np.nan))
    if np.isfinite(tuned):
        out = out.assign_coords(frequency_abs=("frequency", tuned + out["frequency"].values,
                                               {"units": "Hz", "long_name": "absolute frequency"}))
    out["frequency"].attrs = {"units": "Hz", "long_name": "offset from tuned frequency"}
    out.name = "psd" if "time" not in out.dims else "spectrogram"
    out.attrs = {k: v for k, v in iq_attrs.items() if k in ("window", "nperseg", "noverlap", "averaged_segments")}
    out.attrs.update({"units": "FS^2/Hz", "long_name": long_name, "center_frequency_hz": tuned, "source": "mixed",
                      "uncalibrated_stations": list(audio), "comment": MIXED_COMMENT})
    return out


def mixed_psd(ds: xr.Dataset, **kw: Any) -> xr.DataArray:
    """The PSD of every station of a session mixing IQ and audio stations, as one DataArray
    (station, frequency) in FS^2/Hz over the union of the stations' bins (``frequency`` relative
    to the tuned frequency, ``frequency_abs`` absolute): IQ stations by Welch on their samples
    (:func:`sdrlab.metrics.psd`, ``kw`` go to it), audio stations their mean waterfall row
    (:func:`waterfall_psd`); each station NaN off its own bins.  Station coordinates
    ``psd_source`` ("welch" / "waterfall") and ``resolution_hz``; the audio stations are
    uncalibrated (attribute ``uncalibrated_stations``, see :data:`MIXED_COMMENT`)."""
    from .welch import psd
    from .model_audio import iq_part

    iq_ids, audio = _kinds(ds)
    if not iq_ids or not audio:
        raise ValueError("mixed_psd needs a session with both IQ and audio stations")
    p_iq = psd(iq_part(ds), **kw)
    nperseg = int(p_iq.attrs.get("nperseg", p_iq.sizes["frequency"]))
    parts = [_label(p_iq, "welch", p_iq["sample_rate"].values / nperseg)]
    try:
        p_wf = waterfall_psd(ds)
    except ValueError:  # audio stations without waterfall rows: only the IQ ones have a PSD
        p_wf = None
    if p_wf is not None:
        res = [_resolution(ds.sel(station=str(s))) for s in p_wf["station"].values]
        parts.append(_label(p_wf, "waterfall", res))
    return _join(parts, ds, dict(p_iq.attrs), [str(s) for s in (p_wf["station"].values if p_wf is not None else [])],
                 "power spectral density (IQ: Welch; audio: the receiver's waterfall, uncalibrated)")


def _resolution(s: xr.Dataset) -> float:
    sizes = s["spectrum_fft_size"].values
    first = np.flatnonzero(sizes > 0)
    return float(s["spectrum_samp_rate_hz"].values[first[0]] / sizes[first[0]]) if first.size else float("nan")


def _rebin_time(da: xr.DataArray, period: float) -> xr.DataArray:
    """Rows (station, time, frequency) averaged in linear power into ``period``-long bins of
    ``time`` (bin start times, s)."""
    t = np.asarray(da["time"].values, np.float64)
    b = np.floor(t / period + 1e-9).astype(np.int64)
    nb = int(b.max()) + 1 if b.size else 0
    v = np.moveaxis(np.asarray(da.values, np.float64), 1, 0)  # (time, station, frequency)
    total = np.zeros((nb, *v.shape[1:]))
    count = np.zeros((nb, *v.shape[1:]))
    ok = np.isfinite(v)
    np.add.at(total, b, np.where(ok, v, 0.0))
    np.add.at(count, b, ok)
    mean = np.moveaxis(np.where(count > 0, total / np.maximum(count, 1), np.nan), 0, 1)
    return xr.DataArray(mean, dims=da.dims, coords={"station": da["station"].values, "time": np.arange(nb) * period,
                                                    "frequency": da["frequency"].values}, attrs=da.attrs)


def mixed_spectrogram(ds: xr.Dataset, *, max_rows: int = 600, **kw: Any) -> xr.DataArray:
    """The spectrogram of every station of a mixed session (station, time, frequency) in
    FS^2/Hz: IQ stations from their samples (:func:`sdrlab.spectrogram.spectrogram`, ``kw`` go
    to it), audio stations from their waterfall rows (:func:`waterfall_spectrogram`), both
    averaged in linear power onto one time grid (``time``: seconds since each station's start,
    bins of the coarser of the two row periods; IQ times are GPS sample times, audio ones receipt
    times) and the union of their frequency bins, each station NaN off its own bins; coordinates
    and attributes as :func:`mixed_psd`."""
    from .model_audio import iq_part
    from .spectrogram import spectrogram

    iq_ids, audio = _kinds(ds)
    if not iq_ids or not audio:
        raise ValueError("mixed_spectrogram needs a session with both IQ and audio stations")
    s_iq = spectrogram(iq_part(ds), max_rows=max_rows, **kw)
    t_iq = s_iq["time"].values
    period = float(t_iq[1] - t_iq[0]) if t_iq.size > 1 else 0.0
    parts = []
    try:
        s_wf: xr.DataArray | None = waterfall_spectrogram(ds, max_rows=max_rows)
    except ValueError:
        s_wf = None
    if s_wf is not None:
        t_wf = s_wf["time"].values
        period = max(period, float(t_wf[1] - t_wf[0]) if t_wf.size > 1 else float(s_wf.attrs["row_period_s"]))
    period = period if period > 0 else 1.0
    nperseg = int(s_iq.attrs.get("nperseg", s_iq.sizes["frequency"]))
    rate = np.asarray(ds["sample_rate"].sel(station=[str(s) for s in s_iq["station"].values]).values, np.float64)
    parts.append(_label(_rebin_time(s_iq, period), "welch", rate / nperseg))
    if s_wf is not None:
        res = [_resolution(ds.sel(station=str(s))) for s in s_wf["station"].values]
        parts.append(_label(_rebin_time(s_wf, period), "waterfall", res))
    out = _join(parts, ds, dict(s_iq.attrs), [str(s) for s in (s_wf["station"].values if s_wf is not None else [])],
                "spectrogram (IQ: from samples; audio: the receiver's waterfall, uncalibrated)")
    out["time"].attrs = {"units": "s", "long_name": "time since the station's start (bin start)"}
    out.attrs["row_period_s"] = period
    return out
