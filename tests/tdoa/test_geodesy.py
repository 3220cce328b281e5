"""sdrlab.tdoa.geodesy: the vectorised WGS84 distances against geographiclib."""

from __future__ import annotations

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic

from sdrlab import tdoa


def test_vectorised_geodesic_matches_geographiclib() -> None:
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-80, 80, 200), rng.uniform(-80, 80, 200)
    lon1, lon2 = rng.uniform(-180, 180, 200), rng.uniform(-180, 180, 200)
    got = tdoa.geodesic_distance(lat1, lon1, lat2, lon2)
    want = [Geodesic.WGS84.Inverse(a, b, c, d)["s12"] for a, b, c, d in zip(lat1, lon1, lat2, lon2)]
    np.testing.assert_allclose(got, want, atol=1e-3)
    # nearly antipodal points (Vincenty does not converge) fall back to geographiclib
    assert float(tdoa.geodesic_distance(0.0, 0.0, 0.5, 179.7)) == pytest.approx(
        Geodesic.WGS84.Inverse(0.0, 0.0, 0.5, 179.7)["s12"], abs=1e-3)
