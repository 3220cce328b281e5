"""``ds.sdr`` / ``da.sdr``: the session's analysis verbs, each handing the object to a plain
function of :mod:`sdrlab.model`, :mod:`sdrlab.metrics`, :mod:`sdrlab.spectrogram`,
:mod:`sdrlab.frequency_offset` or :mod:`sdrlab.plots` (no logic lives here).

    ds.sdr.iq()              complex64 (station, sample), full-scale units
    ds.sdr.time()            UTC per sample from the GPS fits
    ds.sdr.psd()             Welch PSD (station, frequency), FS^2/Hz (audio stations: their
                             waterfall; a mixed session: both kinds on the union of their bins)
    ds.sdr.spectrogram()     (station, time, frequency), FS^2/Hz (likewise)
    ds.sdr.metrics()         per-station metrics as a Dataset (lazy on dask)
    ds.sdr.passband()        the passband the metrics use per station (recorded, or detected)
    ds.sdr.metrics_table()   the same as a tidy pandas DataFrame
    ds.sdr.carrier_offset(reference_hz, target_hz)   SSB/CW audio stations: tuning error at a
                             reference carrier and the target's frequency against it
    ds.sdr.plot_psd() / plot_spectrogram() / plot_map() / plot_metrics()   matplotlib Figures
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import model

if TYPE_CHECKING:  # matplotlib, scipy and the metrics machinery load on first use only
    import pandas as pd
    from matplotlib.figure import Figure

    from .tdoa import TdoaResult


def transmitter_position(ds: xr.Dataset) -> tuple[float, float] | None:
    """The transmitter's position when the session knows it (simulated scenes record it)."""
    lat, lon = ds.attrs.get("transmitter_latitude"), ds.attrs.get("transmitter_longitude")
    if lat is None or lon is None:
        return None
    return float(lat), float(lon)


@xr.register_dataset_accessor("sdr")
class SdrDatasetAccessor:
    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def iq(self) -> xr.DataArray:
        return model.to_complex(self._ds)

    def time(self, station: str | None = None) -> xr.DataArray:
        return model.sample_times(self._ds, station)

    def _iq_only(self) -> xr.Dataset | None:
        """The session's IQ stations (all of it without audio stations); None: audio stations only."""
        from .model_audio import iq_part

        ds = self._ds
        if "audio" not in ds.data_vars:  # no audio stations (their variables exist only then)
            return ds
        out: xr.Dataset | None = iq_part(ds)
        return out

    def _mixed(self) -> bool:
        """Both IQ and audio stations in the session."""
        ds = self._ds
        return "audio" in ds.data_vars and "kind" in ds.coords and len(set(ds["kind"].values.tolist())) > 1

    def psd(self, **kw: Any) -> xr.DataArray:
        """Welch PSD of the IQ stations; a session of audio receivers only: their mean waterfall
        row (:func:`sdrlab.metrics_spectrum.waterfall_psd`, uncalibrated); a mixed session:
        every station on the union of their bins (:func:`sdrlab.metrics_spectrum.mixed_psd`)."""
        from .metrics import psd

        if self._mixed():
            from .metrics_spectrum import mixed_psd

            return mixed_psd(self._ds, **kw)
        ds = self._iq_only()
        if ds is None:
            from .metrics_spectrum import waterfall_psd

            return waterfall_psd(self._ds)
        return psd(ds, **kw)

    def spectrogram(self, **kw: Any) -> xr.DataArray:
        """Spectrogram of the IQ stations; a session of audio receivers only: their waterfall
        rows (:func:`sdrlab.metrics_spectrum.waterfall_spectrogram`); a mixed session: every
        station on one time grid and the union of their bins
        (:func:`sdrlab.metrics_spectrum.mixed_spectrogram`)."""
        from .spectrogram import spectrogram

        if self._mixed():
            from .metrics_spectrum import mixed_spectrogram

            return mixed_spectrogram(self._ds, **kw)
        ds = self._iq_only()
        if ds is None:
            from .metrics_spectrum import waterfall_spectrogram

            return waterfall_spectrogram(self._ds, **{k: v for k, v in kw.items() if k == "max_rows"})
        return spectrogram(ds, **kw)

    def waterfall_psd(self) -> xr.DataArray:
        from .metrics_spectrum import waterfall_psd

        return waterfall_psd(self._ds)

    def waterfall(self, **kw: Any) -> xr.DataArray:
        from .metrics_spectrum import waterfall_spectrogram

        return waterfall_spectrogram(self._ds, **kw)

    def metrics(self, **kw: Any) -> xr.Dataset:
        from .metrics import metrics

        return metrics(self._ds, **kw)

    def metrics_table(self, **kw: Any) -> pd.DataFrame:
        from .metrics import metrics_table

        return metrics_table(self._ds, **kw)

    def interval_metrics(self, interval_s: float = 10.0, **kw: Any) -> xr.Dataset:
        """Every metric per station and interval (:func:`sdrlab.metrics.interval_metrics`)."""
        from .metrics import interval_metrics

        return interval_metrics(self._ds, interval_s, **kw)

    def passband(self, **kw: Any) -> xr.Dataset:
        from .metrics import passband

        return passband(self._ds, **kw)

    def carrier_offset(self, reference_hz: float, target_hz: float, **kw: Any) -> xr.Dataset:
        """Per SSB/CW audio station: the receiver's tuning error at a reference carrier and the
        target carrier's frequency against it (:func:`sdrlab.frequency_offset.carrier_offset`)."""
        from .frequency_offset import carrier_offset

        return carrier_offset(self._ds, reference_hz, target_hz, **kw)

    def sigmf(self, station: str) -> dict[str, Any]:
        return model.sigmf_attrs(self._ds, station)

    # ---- plots ---------------------------------------------------------------------------
    def plot_psd(self, *, absolute: bool = False, **kw: Any) -> Figure:
        """PSD overlay; ``nperseg`` defaults to 2048 here (a smoother picture than the metrics' 8192)."""
        from . import plots

        kw.setdefault("nperseg", 2048)
        return plots.plot_psd(self.psd(**kw).compute(), absolute=absolute)

    def plot_spectrogram(self, **kw: Any) -> Figure:
        from . import plots

        return plots.plot_spectrogram(self.spectrogram(**kw))

    def plot_map(self, *, value: str = "snr_db", **kw: Any) -> Figure:
        from . import plots

        ds = self._ds
        vals = None
        if value:
            m = ds if value in ds.variables else self.metrics(**kw).compute()
            vals = m[value].values
        return plots.plot_map(
            ds["latitude"].values, ds["longitude"].values, [str(s) for s in ds["station"].values],
            values=vals, value_label=plots.metric_label(value),
            transmitter=transmitter_position(ds),
        )

    def plot_metrics(self, **kw: Any) -> Figure:
        from . import plots

        return plots.plot_metrics(self.metrics(**kw).compute())

    # ---- TDoA (sdrlab.tdoa) ----------------------------------------------------------------
    def tdoa(self, **kw: Any) -> TdoaResult:
        """Locate the transmitter from the stations' GPS-stamped IQ (:func:`sdrlab.tdoa.tdoa`)."""
        from .tdoa import tdoa

        return tdoa(self._ds, **kw)

    def plot_tdoa_map(self, result: TdoaResult | None = None, *, truth: tuple[float, float] | None = None,
                      **kw: Any) -> Figure:
        """Stations, constant-lag hyperbolas, likelihood, estimate and ellipse, and the true
        position (``truth`` or the session's); ``kw`` go to :meth:`tdoa` when no ``result``."""
        from . import plots

        res = result if result is not None else self.tdoa(**kw)
        return plots.plot_tdoa_map(res, truth=truth or transmitter_position(self._ds))

    def plot_tdoa_lags(self, result: TdoaResult | None = None, **kw: Any) -> Figure:
        """The lag of every window per station pair; ``kw`` go to :meth:`tdoa` when no ``result``."""
        from . import plots

        return plots.plot_tdoa_lags(result if result is not None else self.tdoa(**kw))


@xr.register_dataarray_accessor("sdr")
class SdrDataArrayAccessor:
    """On a complex (station, sample) DataArray with a ``sample_rate`` coordinate (for example
    ``ds.sdr.iq()``), or on the int16 ``iq`` variable of a session."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def iq(self) -> xr.DataArray:
        return model.to_complex(self._da) if "component" in self._da.dims else self._da

    def time(self) -> xr.DataArray:
        """UTC per sample from the ``start_time`` and ``sample_rate`` coordinates (the whole array
        as one segment; a session's ``ds.sdr.time()`` also follows reconnect segments)."""
        da = self._da
        n = da.sizes["sample"]
        k = xr.DataArray(np.arange(n, dtype=np.float64), dims="sample")
        offsets = (k * (1e9 / da["sample_rate"])).round().astype("timedelta64[ns]")
        return (da["start_time"] + offsets).rename("time")

    def psd(self, **kw: Any) -> xr.DataArray:
        from .metrics import psd

        return psd(self.iq(), **kw)

    def spectrogram(self, **kw: Any) -> xr.DataArray:
        from .spectrogram import spectrogram

        return spectrogram(self.iq(), **kw)

    def metrics(self, **kw: Any) -> xr.Dataset:
        from .metrics import metrics

        return metrics(self.iq(), **kw)

    def passband(self, **kw: Any) -> xr.Dataset:
        from .metrics import passband

        return passband(self.iq(), **kw)

    def plot_psd(self, **kw: Any) -> Figure:
        from . import plots

        return plots.plot_psd(self.psd(**kw).compute())
