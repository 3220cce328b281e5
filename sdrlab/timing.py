"""GPS time: time-of-week to UTC (reference section 7) and the fit of time against sample index.

All absolute times are integer nanoseconds (int64) so that nothing loses precision at 1e9 s scale;
floats are used only for offsets relative to a reference stamp.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from .constants import NS as NS

GPS_EPOCH_UNIX_S = 315964800  # 1980-01-06T00:00:00Z
WEEK_S = 604800
#: GPS - UTC leap seconds in force since 2017-01-01; configurable everywhere it is used
DEFAULT_GPS_UTC_OFFSET_S = 18


def gps_now_ns(gps_utc_offset_s: int = DEFAULT_GPS_UTC_OFFSET_S, *, unix_ns: int | None = None) -> int:
    """Nanoseconds since the GPS epoch, now (from the host clock)."""
    now = time.time_ns() if unix_ns is None else unix_ns
    return now - GPS_EPOCH_UNIX_S * NS + gps_utc_offset_s * NS


def gps_week_for(tow_s: float, host_gps_ns: int) -> int:
    """GPS week of a time-of-week stamp, taken from the host clock, shifted by one week when the
    host's and the frame's time of week are more than half a week apart (week rollover)."""
    week, host_tow_ns = divmod(host_gps_ns, WEEK_S * NS)
    diff = tow_s - host_tow_ns / NS
    if diff > WEEK_S / 2:
        week -= 1
    elif diff < -WEEK_S / 2:
        week += 1
    return int(week)


def tow_to_gps_ns(gpssec: int, gpsnsec: int, week: int) -> int:
    return (week * WEEK_S + int(gpssec)) * NS + int(gpsnsec)


def gps_ns_to_utc(gps_ns: int, gps_utc_offset_s: int = DEFAULT_GPS_UTC_OFFSET_S) -> np.datetime64:
    """UTC as datetime64[ns] from nanoseconds since the GPS epoch."""
    unix_ns = gps_ns + GPS_EPOCH_UNIX_S * NS - gps_utc_offset_s * NS
    return np.datetime64(int(unix_ns), "ns")


def utc_to_gps_ns(utc: np.datetime64, gps_utc_offset_s: int = DEFAULT_GPS_UTC_OFFSET_S) -> int:
    unix_ns = int(np.asarray(utc, dtype="datetime64[ns]").astype(np.int64))
    return unix_ns - GPS_EPOCH_UNIX_S * NS + gps_utc_offset_s * NS


@dataclass(frozen=True)
class TimeFit:
    """t(n) = t0 + n / fs for one capture segment.

    ``t0_gps_ns`` is the GPS time of sample 0 of the segment (ns since the GPS epoch), ``fs`` the
    measured sample rate.  ``status`` is ``"ok"`` or why no fit was possible (then t0 is -1 and fs
    is the rate the receiver announced).
    """

    t0_gps_ns: int
    fs: float
    residual_rms_s: float
    n_stamps: int
    n_outliers: int
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def fit_time(
    sample_index: npt.ArrayLike,
    gps_ns: npt.ArrayLike,
    *,
    nominal_fs: float,
    outlier_samples: float = 1.0,
) -> TimeFit:
    """Least-squares fit of GPS time against sample index, rejecting outliers.

    ``sample_index`` and ``gps_ns`` are the stamps to use (already restricted to fresh, valid ones).
    A stamp further than ``outlier_samples`` sample periods from the fit is dropped and the fit
    repeated (a stale or jumping stamp must not bend the line).
    """
    n = np.asarray(sample_index, dtype=np.int64)
    t = np.asarray(gps_ns, dtype=np.int64)
    order = np.argsort(n, kind="stable")
    n, t = n[order], t[order]
    if n.size < 2 or np.unique(n).size < 2:
        return TimeFit(-1, float(nominal_fs), float("nan"), int(n.size), 0, "too few GPS stamps")
    ref_n, ref_t = int(n[0]), int(t[0])
    x = (n - ref_n).astype(np.float64)
    y = (t - ref_t).astype(np.float64) / NS
    tol = outlier_samples / nominal_fs
    # robust first line (median of consecutive slopes), so one wild stamp cannot bend it
    dx, dy = np.diff(x), np.diff(y)
    step = dx > 0
    slope0 = float(np.median(dy[step] / dx[step]))
    icpt0 = float(np.median(y - slope0 * x))
    keep = np.abs(y - (slope0 * x + icpt0)) <= tol
    slope, icpt = slope0, icpt0
    for _ in range(3):
        if keep.sum() < 2 or np.unique(x[keep]).size < 2:
            return TimeFit(-1, float(nominal_fs), float("nan"), int(n.size), int((~keep).sum()),
                           "GPS stamps inconsistent")
        slope, icpt = (float(v) for v in np.polyfit(x[keep], y[keep], 1))
        resid = y - (slope * x + icpt)
        new_keep = np.abs(resid) <= tol
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if slope <= 0:
        return TimeFit(-1, float(nominal_fs), float("nan"), int(n.size), int((~keep).sum()),
                       "GPS stamps inconsistent")
    fs = 1.0 / slope
    # t0 at sample 0 of the segment: icpt is at x=0 i.e. sample ref_n
    t0_rel = icpt - ref_n * slope
    t0_ns = ref_t + int(round(t0_rel * NS))
    rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
    return TimeFit(t0_ns, float(fs), rms, int(n.size), int((~keep).sum()), "ok")
