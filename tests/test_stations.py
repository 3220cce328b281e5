"""sdrlab.stations: the built-in catalogue, validation that names every bad entry at once, lookup by id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdrlab.errors import CatalogError, SdrlabError
from sdrlab.stations import Catalog, Station, load_catalog, parse_catalog

DEMO7_IDS = {
    "demo-enschede", "demo-hamburg", "demo-berlin", "demo-munich", "demo-zurich", "demo-paris",
    "demo-brussels",
}


def _entry(sid: str, **over: object) -> str:
    fields: dict[str, object] = {
        "id": sid, "host": "127.0.0.1", "port": 8073, "latitude": 52.0, "longitude": 6.0,
        "channels": 4, "protocol": "kiwisdr",
    }
    fields.update(over)
    lines = ["[[station]]"]
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, bool):
            lines.append(f"{k} = {str(v).lower()}")
        else:
            lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# built-in catalogue


def test_builtin_catalogue_is_demo7_on_loopback() -> None:
    full = load_catalog()
    assert isinstance(full, Catalog)
    cat = full.network("demo7")
    assert len(cat) == 7
    assert {s.id for s in cat} == DEMO7_IDS
    assert all(s.host == "127.0.0.1" for s in cat)
    assert sorted(s.port for s in cat) == list(range(8073, 8080))
    assert all(s.protocol == "kiwisdr" for s in cat)
    assert all(s.channels >= 1 for s in full)
    assert all(-90 <= s.latitude <= 90 and -180 <= s.longitude <= 180 for s in full)
    assert not any(s.password for s in full)
    # the only stations off loopback are the public receivers of the original Italian network
    assert {s.network for s in full} == {"demo7", "italy7", "italy-owrx"}
    assert all(s.host == "127.0.0.1" for s in full if s.network != "italy-owrx")


def test_builtin_catalogue_has_the_italian_openwebrx_network() -> None:
    cat = load_catalog()
    public, sim = cat.network("italy-owrx"), cat.network("italy7")
    assert len(public) == len(sim) == 7
    assert all(s.protocol == "openwebrx" for s in public + sim)
    assert sorted(s.port for s in sim) == list(range(8180, 8187))
    # the simulated seven sit where the public ones are (the table)
    for p, s in zip(public, sim):
        assert (p.latitude, p.longitude, p.altitude) == (s.latitude, s.longitude, s.altitude)
    giaveno = cat.get("owrx-giaveno")
    assert (giaveno.host, giaveno.port, giaveno.latitude, giaveno.longitude) == ("sdr1.ik1jns.it", 8076, 45.02, 7.29)


def test_builtin_catalogue_lookup() -> None:
    cat = load_catalog()
    s = cat.get("demo-enschede")
    assert (s.host, s.port, s.endpoint) == ("127.0.0.1", 8073, "127.0.0.1:8073")
    assert s.latitude == pytest.approx(52.2389) and s.longitude == pytest.approx(6.8561)
    assert "demo-paris" in cat and "nope" not in cat


def test_select_keeps_the_given_order() -> None:
    cat = load_catalog()
    got = cat.select(["demo-paris", "demo-enschede", "demo-zurich"])
    assert [s.id for s in got] == ["demo-paris", "demo-enschede", "demo-zurich"]


# --------------------------------------------------------------------------------------------------
# unknown ids


def test_unknown_station_id_is_named() -> None:
    cat = load_catalog()
    with pytest.raises(CatalogError) as ei:
        cat.get("demo-atlantis")
    assert "demo-atlantis" in str(ei.value)


def test_select_names_every_unknown_id() -> None:
    cat = load_catalog()
    with pytest.raises(CatalogError) as ei:
        cat.select(["demo-paris", "demo-atlantis", "demo-lemuria"])
    msg = str(ei.value)
    assert "demo-atlantis" in msg and "demo-lemuria" in msg
    assert isinstance(ei.value, SdrlabError)


def test_select_rejects_a_station_named_twice() -> None:
    with pytest.raises(CatalogError, match="demo-paris"):
        load_catalog().select(["demo-paris", "demo-paris"])


# --------------------------------------------------------------------------------------------------
# validation: every bad entry in one CatalogError

BAD_CATALOGUE = (
    _entry("good-one", port=8073)  # 1: fine
    + _entry("Bad_Slug", port=8074)  # 2: bad slug
    + _entry("good-one", port=8075)  # 3: duplicate id
    + _entry("port-bad", port=70000)  # 4: port out of range
    + _entry("lat-bad", latitude=95.0)  # 5: latitude out of range
    + _entry("proto-bad", protocol="websdr")  # 6: unknown protocol
    + _entry("no-host", host=None)  # 7: missing host
    + _entry("good-two", port=8079)  # 8: fine
)

EXPECTED_BAD = [
    (2, "Bad_Slug", "slug"),
    (3, "good-one", "duplicate"),
    (4, "port-bad", "70000"),
    (5, "lat-bad", "95"),
    (6, "proto-bad", "websdr"),
    (7, "no-host", "host"),
]


def test_malformed_catalogue_one_error_names_every_bad_entry() -> None:
    with pytest.raises(CatalogError) as ei:
        parse_catalog(BAD_CATALOGUE, "bad.toml")
    err = ei.value
    msg = str(err)
    assert "bad.toml" in msg
    assert len(err.problems) == len(EXPECTED_BAD)
    for (pos, sid, what), problem in zip(EXPECTED_BAD, err.problems):
        assert problem.startswith(f"station #{pos} "), problem
        assert sid in problem, problem
        assert what in problem, problem
        assert problem in msg
    # the good entries are not reported as bad
    assert not any(p.startswith(("station #1 ", "station #8 ")) for p in err.problems)
    assert not any("good-two" in p for p in err.problems)


@pytest.mark.parametrize(
    "sid",
    [
        pytest.param("Upper", id="upper-case"),
        pytest.param("under_score", id="underscore"),
        pytest.param("-lead", id="leading-dash"),
        pytest.param("trail-", id="trailing-dash"),
        pytest.param("sp ace", id="space"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="too-long"),
        pytest.param("demo-x\\n", id="trailing-newline"),
        pytest.param("caf\\u00e9", id="non-ascii"),
    ],
)
def test_bad_slug_rejected(sid: str) -> None:
    # sid is written into a TOML basic string, so "\n" above is a real newline in the id
    text = f'[[station]]\nid = "{sid}"\nhost = "h"\nport = 1\nlatitude = 0\nlongitude = 0\n'
    with pytest.raises(CatalogError) as ei:
        parse_catalog(text)
    assert len(ei.value.problems) == 1
    assert "slug" in ei.value.problems[0]


@pytest.mark.parametrize("sid", ["a", "a1", "demo-enschede", "0-9", "a" * 64])
def test_good_slug_accepted(sid: str) -> None:
    text = f'[[station]]\nid = "{sid}"\nhost = "h"\nport = 1\nlatitude = 0\nlongitude = 0\n'
    assert parse_catalog(text).ids == [sid]


@pytest.mark.parametrize(
    ("over", "word"),
    [
        ({"port": 0}, "port"),
        ({"port": True}, "port"),
        ({"port": "8073"}, "port"),
        ({"latitude": -90.5}, "latitude"),
        ({"longitude": 180.5}, "longitude"),
        ({"latitude": "north"}, "latitude"),
        ({"channels": 0}, "channels"),
        ({"host": "kiwi.example.org/x"}, "host"),
        ({"host": "   "}, "host"),
        ({"colour": "red"}, "colour"),
        ({"name": 5}, "name"),
    ],
)
def test_single_field_problems(over: dict, word: str) -> None:
    with pytest.raises(CatalogError) as ei:
        parse_catalog(_entry("one", **over))
    assert len(ei.value.problems) == 1
    assert word in ei.value.problems[0] and "one" in ei.value.problems[0]


def test_invalid_toml() -> None:
    with pytest.raises(CatalogError) as ei:
        parse_catalog('[[station]]\nid = "x\nport = 8073\n', "broken.toml")
    assert "broken.toml" in str(ei.value)
    assert "TOML" in str(ei.value)


def test_station_must_be_array_of_tables() -> None:
    with pytest.raises(CatalogError):
        parse_catalog('station = "demo"\n')


def test_station_entries_that_are_not_tables() -> None:
    # an array of non-tables must give a CatalogError naming the entries, not a crash
    with pytest.raises(CatalogError) as ei:
        parse_catalog("station = [1, 2]\n", "scalars.toml")
    assert len(ei.value.problems) == 2
    assert "#1" in ei.value.problems[0] and "#2" in ei.value.problems[1]


def test_empty_catalogue() -> None:
    """An empty catalogue is a mistake (a typo'd table name, a wrong file), not zero stations."""
    with pytest.raises(CatalogError, match="no \\[\\[station\\]\\] entries"):
        parse_catalog("")


# --------------------------------------------------------------------------------------------------
# files


def test_load_from_tmp_path(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text(
        _entry("my-kiwi", host="kiwi.example.org", port=8073, latitude=52.0, longitude=5.0)
        + _entry("other-kiwi", host="192.0.2.10", port=8074, latitude=-33.9, longitude=151.2),
        encoding="utf-8",
    )
    for path in (p, str(p)):
        cat = load_catalog(path)
        assert cat.ids == ["my-kiwi", "other-kiwi"]
        assert cat.get("other-kiwi").endpoint == "192.0.2.10:8074"
        assert cat.source == str(p)


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "absent.toml"
    with pytest.raises(CatalogError, match=re.escape(str(p))):
        load_catalog(p)


def test_bad_file_error_names_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(BAD_CATALOGUE, encoding="utf-8")
    with pytest.raises(CatalogError) as ei:
        load_catalog(p)
    assert str(p) in str(ei.value)
    assert len(ei.value.problems) == len(EXPECTED_BAD)


# --------------------------------------------------------------------------------------------------
# passwords

SECRET = "hunter2-s3cret"


def test_password_never_in_repr() -> None:
    s = Station(id="pw", name="pw", host="h", port=8073, latitude=0.0, longitude=0.0,
                password=SECRET)
    assert s.password == SECRET
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in f"{s!r} {s}"
    assert SECRET not in repr([s])


def test_password_from_catalogue_not_in_repr_or_errors(tmp_path: Path) -> None:
    text = _entry("pw-kiwi", password=SECRET)
    cat = parse_catalog(text)
    assert cat.get("pw-kiwi").password == SECRET
    assert SECRET not in repr(cat.get("pw-kiwi"))
    assert SECRET not in repr(list(cat))
    # a bad entry that carries a password: the error must not print it
    with pytest.raises(CatalogError) as ei:
        parse_catalog(_entry("pw-kiwi", password=SECRET, port=70000))
    assert SECRET not in str(ei.value)
    assert SECRET not in repr(ei.value)


def test_misspelt_table_and_empty_catalogue_are_errors(tmp_path):
    from sdrlab.errors import CatalogError
    from sdrlab.stations import load_catalog

    typo = tmp_path / "typo.toml"
    typo.write_text('[[stations]]\nid = "x"\nhost = "h"\nport = 1\nlatitude = 0\nlongitude = 0\n')
    with pytest.raises(CatalogError, match="unknown top-level key.*'stations'"):
        load_catalog(typo)
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(CatalogError, match="no \\[\\[station\\]\\] entries"):
        load_catalog(empty)


# --------------------------------------------------------------------------------------------------
# files that are not catalogues: a clear, bounded CatalogError, never a traceback or a huge message


@pytest.mark.parametrize("content, what", [
    (b"\xff\xfe\x00\x01binary", "byte 0xff on line 1, offset 0"),
    ('[[station]]\nid = "caf\u00e9"\n'.encode("latin-1"), "byte 0xe9 on line 2, offset 21"),
])
def test_a_file_that_is_not_utf8_is_a_catalog_error_naming_it(tmp_path: Path, content: bytes, what: str) -> None:
    p = tmp_path / "binary.toml"
    p.write_bytes(content)
    with pytest.raises(CatalogError) as ei:
        load_catalog(p)
    assert str(p) in str(ei.value) and "not UTF-8" in str(ei.value) and what in str(ei.value)


def test_binary_utf8_file_is_a_catalog_error(tmp_path: Path) -> None:
    p = tmp_path / "zeros.toml"
    p.write_bytes(b"\x00" * 4096)
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(p)


def test_a_huge_bad_catalogue_gives_a_short_message(tmp_path: Path) -> None:
    """10 MB of bad values: each quoted value is cut, and at most a few dozen problems listed."""
    huge = "x" * 10_000_000
    entries = "".join(f'[[station]]\nid = "{huge}"\nhost = "{huge}"\nport = "{huge}"\nlatitude = "{huge}"\n'
                      f'longitude = 0\n{huge[:100]} = 1\n' for _ in range(1)) + 'station2 = "' + huge + '"\n'
    p = tmp_path / "huge.toml"
    p.write_text(entries, encoding="utf-8")
    with pytest.raises(CatalogError) as ei:
        load_catalog(p)
    assert len(str(ei.value)) < 2_000, len(str(ei.value))
    assert str(p) in str(ei.value) and "more characters" in str(ei.value)
    many = "".join(_entry(f"s{i}", port=0) for i in range(1000))
    with pytest.raises(CatalogError) as ei:
        parse_catalog(many, "many.toml")
    assert len(ei.value.problems) == 1000  # all kept for a program; the message lists the first ones
    assert "... and 980 more" in str(ei.value) and len(str(ei.value)) < 5_000


def test_unknown_station_ids_are_quoted_short() -> None:
    with pytest.raises(CatalogError) as ei:
        load_catalog().get("y" * 100_000)
    assert len(str(ei.value)) < 1_000
