"""The station catalogue: validated TOML, stable ids (slugs), looked up by id, never by position."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import CatalogError, quote

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
KNOWN_PROTOCOLS = frozenset({"kiwisdr", "openwebrx"})
_FIELDS = {
    "id", "name", "host", "port", "latitude", "longitude", "altitude", "channels", "protocol",
    "network", "password", "notes",
}


@dataclass(frozen=True)
class Station:
    id: str
    name: str
    host: str
    port: int
    latitude: float
    longitude: float
    altitude: float = 0.0
    channels: int = 4
    protocol: str = "kiwisdr"
    network: str = ""
    notes: str = ""
    #: receiver password, if the station needs one; never printed
    password: str = ""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # the password never appears in logs or errors
        return (
            f"Station(id={self.id!r}, host={self.host!r}, port={self.port}, "
            f"lat={self.latitude}, lon={self.longitude}, channels={self.channels})"
        )


def _valid_host(host: object) -> bool:
    """A DNS name or an IPv4/IPv6 literal (``::1`` is loopback too)."""
    if not isinstance(host, str) or not host.strip() or any(c.isspace() or c in "/@?#" for c in host):
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
    return True


def _num(entry: Mapping[str, Any], key: str, problems: list[str], where: str) -> float | None:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        problems.append(f"{where}: {key} must be a number, got {quote(v)}")
        return None
    return float(v)


def validate_entries(entries: Iterable[Mapping[str, Any]], source: str) -> list[Station]:
    """Build stations from raw entries, collecting every problem into one :class:`CatalogError`."""
    problems: list[str] = []
    stations: list[Station] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"station #{i + 1}: not a table ([[station]] with key = value lines)")
            continue
        sid = entry.get("id")
        where = f"station #{i + 1}" + (f" ({quote(sid, 70)})" if isinstance(sid, str) else "")
        before = len(problems)
        unknown = set(entry) - _FIELDS
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(quote(k, 70) for k in sorted(unknown)[:10])}"
                            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        if not isinstance(sid, str) or not SLUG.fullmatch(sid):
            problems.append(f"{where}: id must be a slug (a-z, 0-9, '-'), got {quote(sid)}")
        elif sid in seen:
            problems.append(f"{where}: duplicate id {quote(sid)} (first at station #{seen[sid] + 1})")
        else:
            seen[sid] = i
        host = entry.get("host")
        if not _valid_host(host):
            problems.append(f"{where}: host must be a host name or address, got {quote(host)}")
        port = entry.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append(f"{where}: port must be an integer 1-65535, got {quote(port)}")
        lat = _num(entry, "latitude", problems, where)
        if lat is not None and not -90.0 <= lat <= 90.0:
            problems.append(f"{where}: latitude {lat} outside -90...90")
        lon = _num(entry, "longitude", problems, where)
        if lon is not None and not -180.0 <= lon <= 180.0:
            problems.append(f"{where}: longitude {lon} outside -180...180")
        alt = entry.get("altitude", 0.0)
        if isinstance(alt, bool) or not isinstance(alt, (int, float)):
            problems.append(f"{where}: altitude must be a number of metres, got {quote(alt)}")
        chans = entry.get("channels", 4)
        if isinstance(chans, bool) or not isinstance(chans, int) or chans < 1:
            problems.append(f"{where}: channels must be a positive integer, got {quote(chans)}")
        proto = entry.get("protocol", "kiwisdr")
        if proto not in KNOWN_PROTOCOLS:
            problems.append(
                f"{where}: protocol {quote(proto)} unknown (known: {', '.join(sorted(KNOWN_PROTOCOLS))})"
            )
        for key in ("name", "network", "notes", "password"):
            if key in entry and not isinstance(entry[key], str):
                problems.append(f"{where}: {key} must be a string")
        if len(problems) == before:
            stations.append(
                Station(
                    id=sid,  # type: ignore[arg-type]
                    name=str(entry.get("name", sid)),
                    host=str(host).strip(),
                    port=int(port),  # type: ignore[arg-type]
                    latitude=float(lat),  # type: ignore[arg-type]
                    longitude=float(lon),  # type: ignore[arg-type]
                    altitude=float(alt),
                    channels=int(chans),
                    protocol=str(proto),
                    network=str(entry.get("network", "")),
                    notes=str(entry.get("notes", "")),
                    password=str(entry.get("password", "")),
                )
            )
    if problems:
        raise CatalogError(f"station catalogue {source} has {len(problems)} problem(s):", problems)
    return stations


class Catalog:
    """An ordered, validated set of stations keyed by id."""

    def __init__(self, stations: Iterable[Station], source: str = "<memory>") -> None:
        self.source = source
        self._by_id = {s.id: s for s in stations}

    def __iter__(self) -> Iterator[Station]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, station_id: object) -> bool:
        return station_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, station_id: str) -> Station:
        try:
            return self._by_id[station_id]
        except KeyError:
            raise CatalogError(
                f"unknown station {quote(station_id)} in {self.source} "
                f"(known: {self._known()})"
            ) from None

    def select(self, ids: Iterable[str]) -> list[Station]:
        """Stations by id, in the given order; every unknown id is named in one error."""
        ids = list(ids)
        unknown = [i for i in ids if i not in self._by_id]
        if unknown:
            raise CatalogError(
                f"unknown station(s) {', '.join(quote(u, 70) for u in unknown[:10])}"
                f"{f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''} in {self.source} "
                f"(known: {self._known()})"
            )
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise CatalogError(f"station(s) named twice: {', '.join(dupes)}")
        return [self._by_id[i] for i in ids]

    def _known(self, most: int = 20) -> str:
        ids = list(self._by_id)
        more = f" and {len(ids) - most} more" if len(ids) > most else ""
        return (", ".join(ids[:most]) + more) or "none"

    def network(self, name: str) -> list[Station]:
        return [s for s in self if s.network == name]


def parse_catalog(text: str, source: str = "<string>") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"station catalogue {source} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"station"})
    if unknown:
        raise CatalogError(
            f"station catalogue {source}: unknown top-level key(s) {', '.join(quote(k, 70) for k in unknown[:10])}"
            f"{f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''} "
            "(stations are [[station]] tables)"
        )
    entries = data.get("station", [])
    if not isinstance(entries, list):
        raise CatalogError(f"station catalogue {source}: 'station' must be an array of tables ([[station]])")
    if not entries:
        raise CatalogError(f"station catalogue {source} has no [[station]] entries")
    return Catalog(validate_entries(entries, source), source)


def builtin_catalog_text() -> str:
    return resources.files("sdrlab").joinpath("data/stations.toml").read_text(encoding="utf-8")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalogue at ``path``, or the built-in one (demo7 simulated stations) when None."""
    if path is None:
        return parse_catalog(builtin_catalog_text(), "<built-in stations.toml>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read station catalogue {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        line = exc.object[:exc.start].count(b"\n") + 1
        raise CatalogError(f"station catalogue {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
                           f"{line}, offset {exc.start}): a catalogue is a TOML file, which is UTF-8") from None
    return parse_catalog(text, str(p))
