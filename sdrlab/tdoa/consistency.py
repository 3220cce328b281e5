"""Consistency of the lags (between steps 4 and 5): station-triangle closures.

For stations a, b, c the closure ``lag(a,b) + lag(b,c) - lag(a,c)`` is zero whatever the
transmitter's position and whatever each station's timing offset (processing delay, GPS error):
they all cancel.  It is computed per window (windows all three pairs kept) and tested against
its own window-to-window standard error (Student t at ``CLOSURE_ALPHA`` two-sided) plus a floor
``CLOSURE_FLOOR_SAMPLES`` for the estimator's own systematic error (the resampling and
sub-sample interpolation: < 0.003 samples on the simulator).  A triangle that does not close
holds a bad lag: a wrong correlation peak, multipath that shapes the pairs differently, an
envelope distorted differently at each receiver.

What follows (:func:`judge`):

* every failing triangle shares one pair (four or more stations): that pair is not used;
* else they share one station: that station is dropped (its lags disagree with the others);
* else (three stations, or no single culprit): nothing is dropped, the failure is reported and
  each pair of a failing triangle gets the variance ``closure^2 / 3`` added, so that the
  uncertainty covers a lag that is off by the amount the triangle misses.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from .lags import PairLag

#: two-sided significance of one closure test
CLOSURE_ALPHA = 1e-3
#: the lag estimator's own systematic error allowed in a closure, in samples of the common clock
CLOSURE_FLOOR_SAMPLES = 0.01


@dataclass(frozen=True)
class Closure:
    """One station triangle: ``closure_s = lag(a,b) + lag(b,c) - lag(a,c)``."""

    stations: tuple[str, str, str]
    closure_s: float
    stderr_s: float
    n_windows: int
    tolerance_s: float
    ok: bool

    @property
    def name(self) -> str:
        return "|".join(self.stations)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float, nd: int = 3) -> float | None:
            return round(x * 1e6, nd) if math.isfinite(x) else None

        return {"stations": list(self.stations), "closure_us": num(self.closure_s), "stderr_us": num(self.stderr_s, 4),
                "tolerance_us": num(self.tolerance_s), "n_windows": self.n_windows, "ok": self.ok}


def _oriented(pairs: Sequence[PairLag]) -> dict[tuple[str, str], tuple[PairLag, float]]:
    out: dict[tuple[str, str], tuple[PairLag, float]] = {}
    for pl in pairs:
        out[(pl.a, pl.b)] = (pl, 1.0)
        out[(pl.b, pl.a)] = (pl, -1.0)
    return out


def closures(pairs: Sequence[PairLag], fs: float, *, alpha: float = CLOSURE_ALPHA,
             floor_samples: float = CLOSURE_FLOOR_SAMPLES) -> list[Closure]:
    """The closure of every triangle of stations whose three pairs are used."""
    used = [pl for pl in pairs if pl.used]
    by = _oriented(used)
    ids: list[str] = []
    for pl in used:
        ids.extend(s for s in (pl.a, pl.b) if s not in ids)
    floor = floor_samples / fs
    out = []
    for a, b, c in itertools.combinations(ids, 3):
        if not all(k in by for k in ((a, b), (b, c), (a, c))):
            continue
        legs = [by[(a, b)], by[(b, c)], by[(a, c)]]
        signs = np.array([1.0, 1.0, -1.0])
        w = np.array([sg * np.where(pl.kept, pl.window_lag_s, np.nan) for (pl, sg) in legs]) * signs[:, None]
        both = np.isfinite(w).all(axis=0)
        n = int(both.sum())
        if n >= 3:
            per = w[:, both].sum(axis=0)
            value = float(per.mean())
            se = float(per.std(ddof=1) / math.sqrt(n))
            t = float(stats.t.ppf(1 - alpha / 2, n - 1))
        else:
            value = float(sum(sg * s * pl.lag_s for (pl, sg), s in zip(legs, signs)))
            se = math.sqrt(sum(pl.stderr_s**2 for pl, _ in legs if math.isfinite(pl.stderr_s)))
            t = float(stats.norm.ppf(1 - alpha / 2))
        tol = t * se + floor
        out.append(Closure((a, b, c), value, se, n, tol, bool(abs(value) <= tol)))
    return out


@dataclass
class Verdict:
    """What the closures say: pairs not to use and stations to drop (name -> reason), the
    variance to add per pair name, and notes for the result."""

    bad_pairs: dict[str, str] = field(default_factory=dict)
    bad_stations: dict[str, str] = field(default_factory=dict)
    widen: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _describe(c: Closure) -> str:
    return (f"triangle {' / '.join(c.stations)} does not close: {c.closure_s * 1e6:+.2f} us "
            f"(tolerance {c.tolerance_s * 1e6:.2f} us from {c.n_windows} windows)")


def judge(found: Sequence[Closure], n_stations: int) -> Verdict:
    """Decide what the failing triangles imply (module docstring)."""
    v = Verdict()
    failing = [c for c in found if not c.ok]
    if not failing:
        return v

    def legs(c: Closure) -> set[str]:
        a, b, cc = c.stations
        return {"|".join(sorted(p)) for p in ((a, b), (b, cc), (a, cc))}

    if len(failing) >= 2:
        common_pairs = set.intersection(*(legs(c) for c in failing))
        common_st = set.intersection(*(set(c.stations) for c in failing))
        worst = max(failing, key=lambda c: abs(c.closure_s) / max(c.tolerance_s, 1e-12))
        if len(common_pairs) == 1:
            name = next(iter(common_pairs))
            v.bad_pairs[name] = (f"its station triangles do not close ({len(failing)} of "
                                 f"{sum(name in legs(c) for c in found)}; worst {worst.closure_s * 1e6:+.2f} us): "
                                 "a wrong peak or multipath")
            v.notes.append(f"pair {name.replace('|', ' - ')} not used: {v.bad_pairs[name]}")
            return v
        if len(common_st) == 1 and n_stations >= 4:
            sid = next(iter(common_st))
            v.bad_stations[sid] = (f"its lags disagree with the other stations': {len(failing)} triangles with it do "
                                   f"not close (worst {worst.name.replace('|', ' / ')}: "
                                   f"{worst.closure_s * 1e6:+.2f} us)")
            v.notes.append(f"dropped {sid}: {v.bad_stations[sid]}")
            return v
    for c in failing:
        var = c.closure_s**2 / 3.0
        for name in legs(c):
            v.widen[name] = max(v.widen.get(name, 0.0), var)
        why = ("with three stations it cannot tell which lag is wrong" if n_stations == 3
               else "no single pair or station explains the failures")
        v.notes.append(f"{_describe(c)}; {why}: each of its pairs' uncertainty widened by "
                       f"{abs(c.closure_s) / math.sqrt(3) * 1e6:.2f} us")
    return v
