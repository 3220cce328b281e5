"""The stations table: kept in sync with the TOML catalogue, and filled from each receiver's own
``/status`` page (KiwiSDR's key=value list) where it answers; every probe is an availability row."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import Engine, insert, select, update

from ..errors import IndexStoreError
from ..stations import Station
from .models import AvailabilityRow, StationRow


@dataclass(frozen=True)
class StatusPage:
    """What a KiwiSDR says about itself on ``/status``."""

    fields: dict[str, str]

    @property
    def name(self) -> str | None:
        return self.fields.get("name")

    @property
    def antenna(self) -> str | None:
        return self.fields.get("antenna")

    @property
    def users_max(self) -> int | None:
        v = self.fields.get("users_max", "")
        return int(v) if v.isdigit() else None

    @property
    def gps_timing(self) -> str:
        """Whether the receiver's frames can carry GPS time: ``ok`` (fixes are coming in), ``no
        fixes`` (``gps_good`` claims a GPS but ``fixes`` and ``fixes_hour`` are 0, as servers
        posing as KiwiSDRs answer, e.g. UberSDR's emulation: no GPS timestamps, no TDoA), or
        ``unknown``."""
        def num(key: str) -> int | None:
            v = self.fields.get(key, "")
            return int(v) if v.lstrip("-").isdigit() else None

        fixes, hour = num("fixes"), num("fixes_hour")
        if fixes is None and hour is None:
            return "unknown"
        if not fixes and not hour:
            return "no fixes"
        return "ok"

    @property
    def bands_hz(self) -> tuple[float, float] | None:
        lo, sep, hi = self.fields.get("bands", "").partition("-")
        try:
            return (float(lo), float(hi)) if sep else None
        except ValueError:
            return None


def parse_status(text: str) -> StatusPage:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return StatusPage(fields)


def fetch_status(station: Station, timeout: float = 5.0) -> tuple[StatusPage | None, float, str | None]:
    """(page or None, latency ms, error) of ``http://host:port/status``."""
    url = f"http://{station.host}:{station.port}/status"
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http to a receiver)
            text = r.read(65536).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, 1e3 * (time.perf_counter() - t), f"{type(exc).__name__}: {reason}"[:300]
    latency = 1e3 * (time.perf_counter() - t)
    page = parse_status(text)
    if "status" not in page.fields and "sdr_hw" not in page.fields:
        return None, latency, "not a KiwiSDR /status page"
    return page, latency, None


def sync_stations(engine: Engine, stations: Iterable[Station], *, probe: bool = True,
                  deactivate_missing: bool = True) -> list[dict[str, object]]:
    """Upsert the catalogue's stations; with ``probe``, read each one's ``/status`` (name, antenna,
    channels, bands) and record its availability.  Stations no longer in the catalogue are marked
    inactive (rows are kept: old captures refer to them).  Returns one report per station."""
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
                if probe:
                    page, latency, error = fetch_status(st)
                    report.update(up=page is not None, latency_ms=round(latency, 1), error=error)
                    c.execute(insert(AvailabilityRow).values(time=datetime.now(timezone.utc), station_id=st.id,
                                                             up=page is not None, latency_ms=latency, error=error))
                    if page is not None:
                        report.update(gps=page.gps_timing, hw=page.fields.get("sdr_hw"))
                        if page.antenna:
                            row["antenna"] = page.antenna
                        if page.users_max:
                            row["channels"] = page.users_max
                        if page.bands_hz:
                            row["freq_min_hz"], row["freq_max_hz"] = page.bands_hz
                if st.id in known:
                    c.execute(update(StationRow).where(StationRow.id == st.id).values(**row))
                else:
                    c.execute(insert(StationRow).values(id=st.id, **row))
                reports.append(report)
            if deactivate_missing:
                gone = known - {s.id for s in stations}
                if gone:
                    c.execute(update(StationRow).where(StationRow.id.in_(gone)).values(active=False, updated_at=now))
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

