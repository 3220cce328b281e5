"""Open captures found by an index query as one lazy Dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import model
from .errors import StorageError


def open_captures(captures: pd.DataFrame, store: Any = None) -> xr.Dataset:
    """The captures of :func:`sdrlab.index.find_captures` (columns ``session_id``, ``station_id``)
    as one lazy Dataset: a ``station`` entry per capture, named ``<station>@<session>``, with
    ``station_id`` and ``session_id`` coordinates; shorter captures are padded (``n_samples`` says
    how much is real).  ``store``: the session store (default: the settings' one)."""
    if store is None:
        from .config import Settings

        store = Settings.from_env().store_obj()
    if captures.empty:
        raise StorageError("no captures to open")
    parts = []
    for sid, group in captures.groupby("session_id", sort=True):
        ds = store.open(str(sid))
        wanted = [s for s in group["station_id"] if s in set(ds["station"].values)]
        if not wanted:
            continue
        part = ds.sel(station=wanted)
        part = part.assign_coords(
            station=[f"{s}@{sid}" for s in wanted],
            station_id=("station", wanted),
            session_id=("station", [str(sid)] * len(wanted)),
        )
        # integer indexes on the unlabelled dims, so captures of different lengths align (padded)
        part = part.assign_coords({d: np.arange(part.sizes[d]) for d in ("sample", "frame", "segment")})
        parts.append(part)
    if not parts:
        raise StorageError("none of the captures is in the store")
    out: xr.Dataset = xr.concat(parts, dim="station", join="outer", fill_value=PADDING,
                                combine_attrs="drop_conflicts")
    return out.drop_vars(["sample", "frame", "segment"])


#: what pads a shorter capture, per variable (the model's own padding values)
PADDING: dict[str, Any] = {
    "iq": 0, **model.FRAME_FILL,
    "segment_start": -1, "segment_length": 0, "segment_t0": np.datetime64("NaT", "ns"),
    "segment_fs": np.nan, "segment_fit_rms": np.nan, "segment_end": "", "segment_timing": "",
}
