"""The maps of sdrlab.plots show coastlines and borders (sdrlab.geomap), offline and headless.

``python -m tests.test_plots`` writes the example pictures docs/images/station-map.png and
docs/images/tdoa-map.png.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath

import sdrlab  # noqa: F401  (registers .sdr)
from sdrlab import geomap, plots, testing
from sdrlab.tdoa import TdoaResult
from tests import tdoa_scenes as ts
from tests.test_geomap import no_network  # noqa: F401  (fixture)

#: a point in the Kattegat, one in Småland's forests, one in lake Vättern: (lat, lon)
SEA, LAND, LAKE = (57.0, 11.5), (57.2, 15.0), (58.3, 14.5)


def _scandinavia() -> tuple[list[float], list[float], list[str]]:
    return [s[1] for s in ts.SIX], [s[2] for s in ts.SIX], [s[0] for s in ts.SIX]


@pytest.fixture(scope="module")
def tdoa_result() -> TdoaResult:
    scene = ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=3)
    return ts.session(scene, duration_s=12.0, seed=3).sdr.tdoa()


def by_gid(ax: Any, gid: str) -> Any:
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, f"{gid}: {len(found)} artists on {ax}"
    return found[0]


def vertices_in_view(ax: Any, gid: str) -> int:
    pts = np.concatenate([p.vertices for p in by_gid(ax, gid).get_paths()])
    (w, e), (s, n) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    return int(((pts[:, 0] >= w) & (pts[:, 0] <= e) & (pts[:, 1] >= s) & (pts[:, 1] <= n)).sum())


def painted(ax: Any, lat: float, lon: float) -> str:
    """``land`` or ``water``: the colour the land fill leaves at a point (last ring painted wins)."""
    fills = by_gid(ax, geomap.GID_LAND)
    colour = "water"
    for path, face in zip(fills.get_paths(), fills.get_facecolors()):
        if MplPath(path.vertices).contains_point((lon, lat)):
            colour = "land" if np.allclose(face, matplotlib.colors.to_rgba(geomap.LAND_FILL)) else "water"
    return colour


def draw(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def test_station_map_shows_land_sea_coast_and_borders_offline(no_network: list[str]) -> None:  # noqa: F811
    lat, lon, ids = _scandinavia()
    fig = plots.plot_map(lat, lon, ids, values=[10.0, 20.0, 30.0, 15.0, 25.0, 5.0])
    ax = fig.axes[0]
    assert draw(fig).startswith(b"\x89PNG")
    # every station in view, with room around
    (w, e), (s, n) = ax.get_xlim(), ax.get_ylim()
    assert w < min(lon) - 1.0 and e > max(lon) + 1.0 and s < min(lat) - 0.5 and n > max(lat) + 0.5
    assert vertices_in_view(ax, geomap.GID_COAST) > 1500       # Scandinavia's coast is long
    assert vertices_in_view(ax, geomap.GID_BORDERS) > 30       # Norway / Sweden
    assert painted(ax, *SEA) == "water" and painted(ax, *LAND) == "land" and painted(ax, *LAKE) == "water"
    assert ax.get_facecolor() == matplotlib.colors.to_rgba(geomap.WATER)
    # the stations stay first and on top (tests and readers find them as before)
    assert ax.collections[0].get_offsets().shape == (6, 2)
    assert ax.collections[0].get_zorder() > by_gid(ax, geomap.GID_LAND).get_zorder()


def test_station_map_of_germany_shows_its_borders(no_network: list[str]) -> None:  # noqa: F811
    ds = testing.synthetic_dataset(n_stations=5, duration_s=1.0, seed=3)
    ax = ds.sdr.plot_map().axes[0]
    assert vertices_in_view(ax, geomap.GID_BORDERS) > 300      # France, Switzerland, Austria, Czechia, ...
    assert painted(ax, 50.1, 8.7) == "land" and painted(ax, 47.6, 9.4) == "water"  # Frankfurt; Lake Constance


def test_tdoa_map_has_coastlines_and_borders_on_the_map_and_the_inset(
        tdoa_result: TdoaResult, no_network: list[str]) -> None:  # noqa: F811
    fig = plots.plot_tdoa_map(tdoa_result)
    assert draw(fig).startswith(b"\x89PNG")
    ax = fig.axes[0]
    assert vertices_in_view(ax, geomap.GID_COAST) > 1500
    assert vertices_in_view(ax, geomap.GID_BORDERS) > 30
    # lines only over the likelihood (no land fill to hide it), drawn above it, under the markers
    assert not [c for c in ax.collections if c.get_gid() == geomap.GID_LAND]
    mesh = next(c for c in ax.collections if isinstance(c, matplotlib.collections.QuadMesh))
    assert mesh.get_zorder() < by_gid(ax, geomap.GID_COAST).get_zorder() < 4
    insets = [a for a in ax.child_axes if a.get_title().startswith("zoom")]
    assert insets, "a 9 km ellipse on a 700 km map gets an inset"
    # the inset shows lake Vättern's shore near the transmitter, at the finest resolution
    assert vertices_in_view(insets[0], geomap.GID_COAST) > 8


def test_maps_draw_in_about_a_second(tdoa_result: TdoaResult) -> None:
    """Not a benchmark: catches a map that draws a whole continent's polygons (tens of seconds)."""
    lat, lon, ids = _scandinavia()
    draw(plots.plot_map(lat, lon, ids))  # data read once per process
    t0 = time.process_time()
    draw(plots.plot_map(lat, lon, ids))
    draw(plots.plot_tdoa_map(tdoa_result))
    assert time.process_time() - t0 < 10.0


def test_campaign_waterfall_draws_each_row_until_the_next_and_leaves_gaps_blank() -> None:
    """Four rows an hour apart, the third without data: a mesh of four rows whose edges are the
    rows' times (the last holds for the median spacing), the third masked, time down, the line
    at +1 kHz the top of the colour scale."""
    import matplotlib.dates as mdates
    import xarray as xr
    from matplotlib.collections import QuadMesh

    f = (np.arange(256) - 128) * (12000.0 / 256)
    db = np.full((4, 256), -120.0, dtype=np.float32)
    db[:, np.argmin(np.abs(f - 1000.0))] = -70.0
    db[2] = np.nan
    times = np.datetime64("2026-12-07T06:00:00", "ns") + np.arange(4) * np.timedelta64(3600, "s")
    wf = xr.DataArray(db, dims=("time", "frequency"), coords={"time": times, "frequency": f},
                      attrs={"station": "demo-berlin", "campaign_id": "c-1", "center_frequency_hz": 9.749e6})
    fig = plots.plot_campaign_waterfall(wf)
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    values = mesh.get_array()
    assert values.shape == (4, 256) and values.mask[2].all() and not values.mask[[0, 1, 3]].any()
    assert mesh.get_clim() == (-120.0, -70.0)
    edges = mdates.num2date(mesh.get_coordinates()[:, 0, 1])
    assert [e.hour for e in edges] == [6, 7, 8, 9, 10]
    top, bottom = ax.get_ylim()
    assert top > bottom  # time runs down
    assert "demo-berlin" in ax.get_title() and "9.749 MHz" in ax.get_xlabel()
    assert draw(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plots.plot_campaign_waterfall(wf.isel(time=[2]))
    assert "no data" in empty.axes[0].texts[0].get_text()


def write_examples(folder: Path) -> None:
    """The pictures in docs/: the station map (Scandinavia, SNR colours) and the TDoA map."""
    lat, lon, ids = _scandinavia()
    for name, make in (
        ("station-map.png", lambda: plots.plot_map(lat, lon, ids, values=[24.1, 18.5, 31.0, 27.3, 22.8, 12.6],
                                                   transmitter=ts.SIX_TX)),
        ("tdoa-map.png", lambda: plots.plot_tdoa_map(
            ts.session(ts.make_scene(ts.SIX, ts.SIX_TX, snr_db=20.0, seed=3), duration_s=12.0, seed=3).sdr.tdoa())),
    ):
        fig = make()
        t0 = time.perf_counter()
        fig.savefig(folder / name, dpi=90)
        print(f"{folder / name}: saved in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "docs" / "images"
    write_examples(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
