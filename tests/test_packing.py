"""The packed layout's own decoding of small arrays agrees with zarr's, array by array."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from sdrlab import model, packing, testing


def encoded(ds: xr.Dataset) -> dict[str, bytes]:
    out = model.for_writing(ds)
    return packing.encode_in_memory(out, packing.packed_encoding(out))


def hard_session() -> xr.Dataset:
    """Every kind of small array a session has, with the values that trip decoders: NaN, NaT,
    non-ASCII and empty strings, an all-fill array (zarr writes no chunk), a partly received
    station, several segments."""
    ds = testing.synthetic_dataset(n_stations=3, duration_s=2.0, seed=4, valid_fraction=[1.0, 0.5, 1.0])
    ds["latitude"].values[1] = np.nan
    ds = ds.assign_coords(name=("station", np.array(["Zürich ☃", "", "Brno"], dtype=np.dtypes.StringDType())))
    ds["start_time"].values[2] = np.datetime64("NaT")
    ds["rssi_dbm"].values[:] = np.nan  # all fill value: no chunk written
    return ds


@pytest.mark.parametrize("make", [hard_session, lambda: testing.synthetic_dataset(n_stations=7, duration_s=60.0, seed=1)],
                         ids=["hard", "7x60s"])
def test_inline_arrays_decode_exactly_as_zarr_reads_them(make):
    objects = encoded(make())
    refs, _pack = packing.pack(objects, "memory://unused", "pack", inline=packing.INLINE_BYTES)
    ours, meta, attrs = packing.decode_inline(refs["refs"])
    mem = zarr.storage.MemoryStore({k: zarr.core.buffer.cpu.Buffer.from_bytes(v) for k, v in objects.items()})
    theirs = xr.open_zarr(mem, consolidated=True, zarr_format=3, chunks=None, decode_cf=False,
                          create_default_indexes=False).load()
    inline = {k for k, m in meta.items() if not isinstance(refs["refs"].get(f"{k}/c/" + "/".join("0" * len(m["shape"]))), list)}
    assert set(ours) == inline - {"iq"} and "iq" not in ours  # IQ is in the pack, read through zarr
    assert len(ours) >= 30
    for name, var in ours.items():
        want = theirs[name].variable
        assert var.dtype == want.dtype, name
        assert var.dims == want.dims, name
        np.testing.assert_array_equal(var.values, want.values, err_msg=name)
        assert var.attrs.keys() == want.attrs.keys(), name
        for k in var.attrs:
            np.testing.assert_equal(var.attrs[k], want.attrs[k], err_msg=f"{name}.{k}")
        assert var.values.flags.writeable, name
    assert attrs == theirs.attrs


def test_arrays_outside_the_inline_subset_are_left_to_zarr():
    """Several chunks, another codec, a chunk in the pack: not decoded here (zarr reads them)."""
    objects = encoded(testing.synthetic_dataset(n_stations=2, duration_s=1.0, seed=3))
    refs, _pack = packing.pack(objects, "memory://unused", "pack", inline=packing.INLINE_BYTES)
    refs["refs"]["latitude/c/0"] = ["{{u}}/pack", 0, 8]  # as if in the pack
    import json

    root = json.loads(refs["refs"]["zarr.json"])
    root["consolidated_metadata"]["metadata"]["longitude"]["codecs"][-1]["name"] = "gzip"
    root["consolidated_metadata"]["metadata"]["altitude"]["chunk_grid"]["configuration"]["chunk_shape"] = [1]
    refs["refs"]["zarr.json"] = json.dumps(root)
    ours, _meta, _attrs = packing.decode_inline(refs["refs"])
    assert not {"latitude", "longitude", "altitude", "iq"} & set(ours)
    assert {"name", "start_time", "frame_received"} <= set(ours)


@pytest.mark.parametrize("make", [hard_session, lambda: testing.synthetic_dataset(n_stations=7, duration_s=60.0, seed=1)],
                         ids=["hard", "7x60s"])
def test_small_arrays_encode_exactly_as_zarr_writes_them(make):
    import json

    out = model.for_writing(make())
    theirs = packing.encode_in_memory(out, packing.packed_encoding(out))
    variables, _attrs = xr.conventions.encode_dataset_coordinates(out)
    small = {k: v for k, v in variables.items() if k != "iq" and packing.small_enough(v)}
    assert len(small) >= 30
    ours, meta, left = packing.encode_small(small)
    assert left == []
    root = json.loads(theirs["zarr.json"])["consolidated_metadata"]["metadata"]
    assert {k for k in theirs if k.split("/", 1)[0] in small} == set(ours)  # the same objects, none missing
    for key, data in ours.items():
        if key.endswith("zarr.json"):
            assert json.loads(data) == json.loads(theirs[key]), key
        else:
            assert data == theirs[key], key  # byte for byte
    for name in small:
        assert meta[name] == root[name], name


@pytest.mark.parametrize("make", [hard_session, lambda: testing.synthetic_dataset(n_stations=7, duration_s=300.0, seed=1)],
                         ids=["hard", "7x300s"])
def test_a_session_shell_is_what_zarr_writes(make):
    """The shell of a packed session (every object but the IQ chunks) equals zarr's, small arrays
    ours and big ones (5-minute frame records) zarr's alike."""
    import json

    import dask.array

    out = model.for_writing(make())
    enc = packing.packed_encoding(out)
    ours = packing.encode_shell(out, enc)
    shell = out.assign(iq=out["iq"].variable.copy(data=dask.array.zeros(out["iq"].shape, dtype=out["iq"].dtype,
                                                                          chunks=enc["iq"]["chunks"])))
    theirs = packing.encode_in_memory(shell, enc, compute=False)
    assert set(ours) == set(theirs)
    for key in theirs:
        if key.endswith("zarr.json"):
            assert json.loads(ours[key]) == json.loads(theirs[key]), key
        else:
            assert ours[key] == theirs[key], key
    assert not any(k.startswith("iq/c") for k in ours)
