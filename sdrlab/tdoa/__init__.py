"""Locate a transmitter by time difference of arrival (TDoA) from GPS-stamped captures.

Pure functions on the session Dataset (no I/O), in the order the analysis runs:

1. :func:`station_times`: each station's GPS time base, refitted from the raw frame stamps
   (``frame_gps_ns``): the consistent majority of all stamps first, then the fresh ones within
   it, so a stale or jumping stamp is counted and ignored and samples after a time step are cut
   off.  The stored segment fit is the fallback; a station with no GPS time is dropped.  The
   stamps' scatter about the line gives the time base's own uncertainty.
2. :func:`common_grid`: the span all stations cover (at least ``min_overlap_s``; a station that
   shortens it below that is dropped) on one sample clock at the lowest measured rate.
3. :func:`resample_baseband`: each station's complex baseband at the common sample times
   (windowed-sinc interpolation at the GPS-measured rate, never the nominal one).
4. :func:`sdrlab.tdoa.signal.analyse`: what the signal carries -- a carrier (whose frequency at
   each receiver gives the receivers' relative offsets, removed), the band where the stations'
   baseband is coherent -- and so the method: ``coherent`` (complex cross-correlation, each
   station whitened, the band weighted by its coherence, the carrier line notched) or
   ``envelope`` (AM envelope, when nothing is coherent).  The choice and its reason are kept.
5. :func:`pair_lags`: per station pair, the cross-correlation in windows (``window_s``), searched
   within the baseline (``|lag| <= distance / c + margin_s``) around the peak of the
   window-averaged correlation, a sub-sample peak by band-limited interpolation, grossly
   disagreeing windows rejected; the pair's mean lag, spread, standard error and correlation.
6. :func:`sdrlab.tdoa.consistency.closures`: every station triangle's closure
   ``lag(a,b) + lag(b,c) - lag(a,c)`` (station timing offsets cancel in it) against its
   window-to-window standard error; a pair or a station that explains the failures is not used,
   otherwise the failing triangles' pairs get a wider uncertainty.
7. :func:`locate`: a likelihood map on a latitude/longitude grid around the stations (WGS84
   geodesics, vectorised), its best maxima refined by generalised least squares with exact
   geodesics (geographiclib).  The lags' covariance: the window-to-window scatter (pairs sharing
   windows correlated), plus per station an unknown processing delay (``station_delay_sigma_s``,
   default 20 us: real KiwiSDRs differ by tens of microseconds), its GPS timing
   (``timing_sigma_s``) and the fit of its time base.  The ellipse at ``confidence`` with
   Hotelling's small-sample factor at the effective degrees of freedom.  With four or more
   stations a station whose lags look delayed beyond its prior is named and down-weighted.  No
   position is claimed when the hyperbolas cross twice or at a grazing angle (points far outside
   the ellipse fit the lags as well as its edge), rather than a wrong confident one.

:func:`tdoa` runs them all and returns a :class:`TdoaResult` (``to_dict()``, ``summary()``);
:func:`calibrate` measures the stations' relative delays against a known transmitter, for
``tdoa(..., station_delays_s=...)``.

Sign convention: the lag of pair (a, b) is ``t_b - t_a``, the arrival time at b minus that at a
(positive when b is further from the transmitter).
"""

from __future__ import annotations

from .calibrate import Calibration, calibrate
from .consistency import Closure, closures
from .geodesy import C_M_S, geodesic_distance, local_offset_km
from .lags import PairLag, pair_lags
from .locate import Ellipse, Fix, hotelling_scale2, lag_covariance, likelihood_map, locate
from .pipeline import tdoa
from .result import TdoaResult
from .signal import SignalAnalysis
from .timebase import CommonGrid, StationTime, common_grid, resample_baseband, resample_envelopes, station_times

__all__ = [
    "C_M_S", "Calibration", "Closure", "CommonGrid", "Ellipse", "Fix", "PairLag", "SignalAnalysis", "StationTime",
    "TdoaResult", "calibrate", "closures", "common_grid", "geodesic_distance", "hotelling_scale2", "lag_covariance",
    "likelihood_map", "local_offset_km", "locate", "pair_lags", "resample_baseband", "resample_envelopes",
    "station_times", "tdoa",
]
