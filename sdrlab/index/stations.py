"""The stations table: kept in sync with the TOML catalogue, and filled from each receiver's own
status page where it answers; every probe is an availability row.  The page is read by the
protocol's own reader, passed in (:func:`sdrlab.receivers.probe_status`): the index speaks no
receiver protocol."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import Engine, insert, select, update

from ..capture import ReceiverStatus
from ..errors import IndexStoreError, SdrlabError
from ..stations import Station
from .models import AvailabilityRow, StationRow


#: reads a station's own status page: (station, timeout s) -> (status or None, latency ms, error);
#: :func:`sdrlab.receivers.probe_status` picks the reader by the station's protocol
StatusProbe = Callable[[Station, float], tuple[ReceiverStatus | None, float, str | None]]


def sync_stations(engine: Engine, stations: Iterable[Station], *, probe: StatusProbe | None = None,
                  timeout: float = 5.0, deactivate_missing: bool = True) -> list[dict[str, object]]:
    """Upsert the catalogue's stations; with ``probe`` (e.g. :func:`sdrlab.receivers.probe_status`),
    read each one's status page (name, antenna, channels, bands) and record its availability.
    Stations no longer in the catalogue are marked inactive (rows are kept: old captures refer to
    them).  Returns one report per station."""
    now = datetime.now(timezone.utc)
    stations = list(stations)
    reports: list[dict[str, object]] = []
    try:
        with engine.begin() as c:
            known = set(c.execute(select(StationRow.id)).scalars())
            for st in stations:
                row: dict[str, object] = {
                    "name": st.name, "host": st.host, "port": st.port, "protocol": st.protocol,
                    "latitude": st.latitude, "longitude": st.longitude, "altitude": st.altitude,
                    "channels": st.channels, "active": True, "notes": st.notes, "updated_at": now,
                }
                report: dict[str, object] = {"station": st.id, "up": None, "latency_ms": None, "error": None,
                                             "gps": None, "hw": None}
                if probe is not None:
                    page, latency, error = probe(st, timeout)
                    report.update(up=page is not None, latency_ms=round(latency, 1), error=error)
                    c.execute(insert(AvailabilityRow).values(time=datetime.now(timezone.utc), station_id=st.id,
                                                             up=page is not None, latency_ms=latency, error=error))
                    if page is not None:
                        report.update(gps=page.gps, hw=page.hw)
                        if page.antenna:
                            row["antenna"] = page.antenna
                        if page.channels:
                            row["channels"] = page.channels
                        if page.bands_hz:
                            row["freq_min_hz"], row["freq_max_hz"] = page.bands_hz
                        if page.position is not None:  # the receiver's own position wins over the catalogue's
                            row["latitude"], row["longitude"] = page.position
                        if page.altitude is not None:
                            row["altitude"] = page.altitude
                if st.id in known:
                    c.execute(update(StationRow).where(StationRow.id == st.id).values(**row))
                else:
                    c.execute(insert(StationRow).values(id=st.id, **row))
                reports.append(report)
            if deactivate_missing:
                gone = known - {s.id for s in stations}
                if gone:
                    c.execute(update(StationRow).where(StationRow.id.in_(gone)).values(active=False, updated_at=now))
    except SdrlabError:  # e.g. a station whose protocol has no reader: said as it is
        raise
    except Exception as exc:
        raise IndexStoreError(f"syncing stations failed: {type(exc).__name__}: {exc}"[:400]) from None
    return reports


def availability_per_day(engine: Engine) -> Any:
    """Share of probes up per station per UTC day (pandas DataFrame)."""
    import pandas as pd
    from sqlalchemy import text

    with engine.connect() as c:
        df = pd.read_sql_query(text("select time, station_id, up from availability"), c)
    if df.empty:
        return pd.DataFrame(columns=["day", "station_id", "up_fraction", "probes"])
    df["day"] = pd.to_datetime(df["time"], utc=True).dt.tz_convert(None).dt.floor("D")
    g = df.groupby(["day", "station_id"])["up"]
    return pd.DataFrame({"up_fraction": g.mean(), "probes": g.size()}).reset_index()

