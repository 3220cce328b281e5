"""The packed session layout's encoding (see :mod:`sdrlab.store`): a session's zarr objects
encoded in memory, packed end to end into one object with kerchunk references, and read back in
whole blocks.  Pure helpers: no store, no network of their own."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import struct
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
import xarray as xr

from . import model

#: zarr objects up to this size go inline into refs.json (base64), bigger ones into the pack: an S3
#: server pays a few ms per object however small (SeaweedFS ~4 ms, one after another)
INLINE_BYTES = 64 * 1024


@contextmanager
def quiet_consolidation() -> Iterator[None]:
    """zarr 3 warns that consolidated metadata is not (yet) in the v3 spec; we use it on purpose
    (one GET opens a session) and say so in the README."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def encode_in_memory(ds: xr.Dataset, encoding: dict[str, dict[str, Any]], *,
                      compute: bool = True) -> dict[str, bytes]:
    """The zarr objects of a session (key relative to the group -> bytes), encoded in memory
    (``compute=False``: dask-backed variables get their metadata only)."""
    import zarr

    mem = zarr.storage.MemoryStore()
    with quiet_consolidation():
        if compute:
            ds.to_zarr(mem, mode="w", zarr_format=model.ZARR_FORMAT, consolidated=model.CONSOLIDATED,
                       encoding=encoding)
        else:
            ds.to_zarr(mem, mode="w", zarr_format=model.ZARR_FORMAT, consolidated=model.CONSOLIDATED,
                       encoding=encoding, compute=False)
    # each buffer let go as soon as it is bytes: one copy of the encoded session at a time
    held = mem._store_dict
    return {k: held.pop(k).to_bytes() for k in list(held)}


def packed_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The model's encoding without zarr shards: in the packed layout the pack is the shard (one
    object, each one-station chunk at an offset the references give), so a chunk is read with one
    ranged GET and no shard-index lookup."""
    enc = {k: dict(v) for k, v in model.encoding(ds).items()}
    if "iq" in enc:
        enc["iq"].pop("shards", None)
    return enc


def pack(objects: dict[str, bytes], template: str, name: str, inline: int) -> tuple[dict[str, Any], bytes]:
    """kerchunk (version 1) references to a session's zarr objects, and the pack ``name`` holding
    them: metadata and objects up to ``inline`` bytes go into the references, the rest end to end
    into the pack at the references' offsets (``{{u}}`` is the session's prefix, ``template``,
    so a moved session opens by overriding it)."""
    refs: dict[str, Any] = {}
    parts: list[bytes] = []
    offset = 0
    for key in sorted(objects):
        data = objects[key]
        if key.endswith("zarr.json"):
            refs[key] = data.decode()
        elif len(data) <= inline:
            refs[key] = "base64:" + base64.b64encode(data).decode()
        else:
            refs[key] = [f"{{{{u}}}}/{name}", offset, len(data)]
            parts.append(data)
            offset += len(data)
    return {"version": 1, "templates": {"u": template}, "refs": refs}, b"".join(parts)


#: a packed session is read in blocks of this many bytes (the model's S3 object size), each
#: fetched once per opened session however many one-station chunks it holds; at most
#: PACK_BLOCKS_KEPT blocks are held per opened session
PACK_BLOCK_BYTES = model.CHUNK_BYTES
PACK_BLOCKS_KEPT = 2


@functools.lru_cache(maxsize=None)
def block_reader() -> type:
    """The class below, made on first use: fsspec is imported when a packed session is read, not
    with :mod:`sdrlab.store`."""
    from fsspec.asyn import AsyncFileSystem

    class _BlockReader(AsyncFileSystem):  # type: ignore[misc]  # fsspec has no type hints
        """Ranged reads of a pack served from whole blocks of :data:`PACK_BLOCK_BYTES`: an S3 server
        pays per request (SeaweedFS: one 1.7 MB range ~20 ms, the whole 12 MB pack ~37 ms, seven
        ranges at once ~63 ms), so the one-station chunks dask asks for separately are fetched as one
        GET per block.  Concurrent reads of a block share its fetch."""

        async_impl = True

        def __init__(self, target: Any, protocol: str) -> None:
            super().__init__(asynchronous=True)
            self.target = target
            self.protocol = protocol
            self._blocks: OrderedDict[tuple[str, int], asyncio.Future[bytes]] = OrderedDict()

        async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any) -> bytes:
            if start is None or end is None or start < 0 or end <= start:
                data: bytes = await self.target._cat_file(path, start=start, end=end, **kw)
                return data
            first, last = start // PACK_BLOCK_BYTES, (end - 1) // PACK_BLOCK_BYTES
            blocks = await asyncio.gather(*(self._block(path, b) for b in range(first, last + 1)))
            offset = first * PACK_BLOCK_BYTES
            return b"".join(blocks)[start - offset:end - offset]

        def _block(self, path: str, index: int) -> asyncio.Future[bytes]:
            key = (path, index)
            if key not in self._blocks:
                fetch = asyncio.ensure_future(self.target._cat_file(
                    path, start=index * PACK_BLOCK_BYTES, end=(index + 1) * PACK_BLOCK_BYTES))
                fetch.add_done_callback(lambda f: self._forget(key, f))
                self._blocks[key] = fetch
                while len(self._blocks) > PACK_BLOCKS_KEPT:
                    self._blocks.popitem(last=False)
            self._blocks.move_to_end(key)
            return self._blocks[key]

        def _forget(self, key: tuple[str, int], fetch: asyncio.Future[bytes]) -> None:
            """A failed fetch is not kept: the next read of the block tries again."""
            if (fetch.cancelled() or fetch.exception() is not None) and self._blocks.get(key) is fetch:
                del self._blocks[key]

    return _BlockReader


#: the codec chains :func:`decode_inline` decodes (zarr 3's defaults for the small arrays)
_INLINE_CODECS = (["bytes"], ["bytes", "zstd"], ["vlen-utf8"], ["vlen-utf8", "zstd"])
#: zarr v3 fill values that JSON cannot hold as numbers
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def decode_inline(refs: dict[str, Any]) -> tuple[dict[str, xr.Variable], dict[str, Any], dict[str, Any]]:
    """The arrays of a packed session whose whole content is one chunk inline in the references
    (every variable but IQ and long frame records), decoded here without zarr, as xarray's zarr
    backend would give them (CF-encoded: :func:`xarray.decode_cf` comes after); the consolidated
    metadata of every array; the group's attributes.

    Why not zarr: a session has ~35 small arrays, and opening them through xarray's zarr backend
    costs ~35 ms of per-array machinery (metadata objects, one event-loop hand-over per call) for
    ~1 ms of decompression, which is most of an open (``benchmarks/store.py``).  Only what the
    packed layout writes is decoded here: one regular chunk holding the whole array, codecs
    ``bytes`` or ``vlen-utf8`` then optionally ``zstd``; a chunk zarr did not write (all fill
    value) is the fill value.  Any other array is left out, for zarr to read
    (``tests/test_store.py`` checks the two agree variable by variable)."""
    import numcodecs

    root = json.loads(refs["zarr.json"])
    meta: dict[str, Any] = root["consolidated_metadata"]["metadata"]
    out: dict[str, xr.Variable] = {}
    for name, m in meta.items():
        shape = list(m.get("shape", ()))
        codecs = [c["name"] for c in m.get("codecs", ())]
        grid, keys = m.get("chunk_grid", {}), m.get("chunk_key_encoding", {})
        if (m.get("node_type") != "array" or codecs not in _INLINE_CODECS or not m.get("dimension_names")
                or grid.get("name") != "regular" or grid["configuration"]["chunk_shape"] != shape
                or keys.get("name") != "default" or m.get("storage_transformers")):
            continue
        sep = keys.get("configuration", {}).get("separator", "/")
        chunk = refs.get(f"{name}/c{sep}" + sep.join("0" * len(shape)) if shape else f"{name}/c")
        string = codecs[0] == "vlen-utf8"
        dtype = np.dtypes.StringDType() if string else np.dtype(m["data_type"])
        attrs = dict(m.get("attributes", {}))
        if "_FillValue" in attrs:  # xarray writes a float's as base64 of a little-endian double
            if dtype.kind == "f":
                attrs["_FillValue"] = struct.unpack("<d", base64.standard_b64decode(attrs["_FillValue"]))[0]
            elif dtype.kind not in "iub":
                continue
        if chunk is None:  # zarr writes no chunk that is all fill value
            fill = m["fill_value"]
            data: npt.NDArray[Any] = np.full(shape, _SPECIAL_FLOATS.get(fill, fill) if isinstance(fill, str)
                                             and not string else fill, dtype=dtype)
        elif isinstance(chunk, str) and chunk.startswith("base64:"):
            raw = base64.b64decode(chunk[7:])
            if codecs[-1] == "zstd":
                raw = numcodecs.Zstd().decode(raw)
            if string:
                data = np.asarray(numcodecs.VLenUTF8().decode(raw), dtype=dtype).reshape(shape)
            else:
                endian = m["codecs"][0].get("configuration", {}).get("endian", "little")
                wire = dtype.newbyteorder("<" if endian == "little" else ">")
                data = np.frombuffer(raw, dtype=wire).astype(dtype).reshape(shape)  # a writable copy
        else:
            continue
        out[name] = xr.Variable(m["dimension_names"], data, attrs)
    return out, meta, dict(root.get("attributes", {}))


#: variables below this size are one zarr chunk whatever zarr's chunk guess (its soft minimum), so
#: :func:`encode_small` may write them; bigger ones go through zarr
SMALL_BYTES = 128 * 1024
#: a variable whose encoding asks zarr for a layout of its own is left to zarr
_ZARR_LAYOUT_KEYS = {"chunks", "compressors", "compressor", "filters", "serializer", "shards", "codecs"}
_ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}


def encode_small(variables: dict[str, xr.Variable]) -> tuple[dict[str, bytes], dict[str, Any], list[str]]:
    """The zarr objects (``name/zarr.json`` and ``name/c/0...``) and metadata of the variables, as
    ``Dataset.to_zarr`` with zarr 3's defaults writes them: the counterpart of
    :func:`decode_inline` (``variables``: already CF- and coordinate-encoded, as
    :func:`xarray.conventions.encode_dataset_coordinates` gives them).  Only what fits one chunk
    by zarr's own rules (below :data:`SMALL_BYTES`), of a numeric, bool or string dtype; the
    caller leaves the others (the third value, their names) to zarr.

    Why not zarr: its per-array machinery (three event-loop hand-overs an array, metadata objects)
    costs ~150 ms of CPU for a session's ~35 small arrays, which is most of a session write
    (``benchmarks/store.py``); this is ~5 ms.  ``tests/test_packing.py`` checks that every object
    equals zarr's (the chunks byte for byte, the metadata as JSON)."""
    import numcodecs
    from xarray.backends.zarr import FillValueCoder, encode_zarr_attr_value, encode_zarr_variable
    from xarray.coding.strings import check_vlen_dtype

    objects: dict[str, bytes] = {}
    meta: dict[str, Any] = {}
    left: list[str] = []
    for name, var in variables.items():
        v = encode_zarr_variable(var, name=name, zarr_format=3)
        string = v.dtype == np.dtypes.StringDType() or check_vlen_dtype(v.dtype) is str  # type: ignore[no-untyped-call]
        if (not v.dims or v.nbytes >= SMALL_BYTES or not (string or v.dtype.kind in "biuf")
                or _ZARR_LAYOUT_KEYS & set(v.encoding)):
            left.append(name)
            continue
        attrs = dict(v.attrs)
        fill = v.encoding.get("fill_value")
        if fill is None:
            fill = math.nan if v.dtype.kind == "f" else "" if string else False if v.dtype.kind == "b" else 0
        if attrs.get("_FillValue") is not None:
            attrs["_FillValue"] = FillValueCoder.encode(attrs.pop("_FillValue"), v.dtype)
        else:
            attrs.pop("_FillValue", None)
        data = np.ascontiguousarray(v.values)
        if string:
            codecs: list[dict[str, Any]] = [{"name": "vlen-utf8", "configuration": {}}, _ZSTD]
        elif v.dtype.itemsize == 1:
            codecs = [{"name": "bytes"}, _ZSTD]
        else:
            codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, _ZSTD]
        json_fill = fill if string or not isinstance(fill, float) or math.isfinite(fill) else (
            "NaN" if math.isnan(fill) else "Infinity" if fill > 0 else "-Infinity")
        m = {"shape": list(v.shape), "data_type": "string" if string else v.dtype.name,
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(v.shape)}},
             "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
             "fill_value": json_fill, "codecs": codecs,
             "attributes": {k: encode_zarr_attr_value(a) for k, a in attrs.items()},  # type: ignore[no-untyped-call]
             "dimension_names": list(v.dims), "zarr_format": 3, "node_type": "array", "storage_transformers": []}
        meta[name] = m
        objects[f"{name}/zarr.json"] = json.dumps(m, indent=2, allow_nan=False).encode()
        all_fill = np.array_equal(data, np.full_like(data, fill), equal_nan=not string and v.dtype.kind == "f")
        if data.size and not all_fill:  # zarr writes no chunk that is all fill value
            raw = numcodecs.VLenUTF8().encode(data.astype(object)) if string else data.astype(
                v.dtype.newbyteorder("<"), copy=False).tobytes()
            objects[f"{name}/c/" + "/".join("0" * v.ndim)] = numcodecs.Zstd(level=0).encode(raw)
    return objects, meta, left


def encode_shell(ds: xr.Dataset, encoding: dict[str, dict[str, Any]], placeholder: str = "iq") -> dict[str, bytes]:
    """The zarr objects of a session but the chunks of ``placeholder`` (written apart: its
    metadata only), as ``encode_in_memory(ds, encoding, compute=False)`` with that variable
    dask-backed gives them: the small arrays by :func:`encode_small`, the rest by zarr, one
    consolidated metadata for all."""
    import dask.array

    variables, attrs = xr.conventions.encode_dataset_coordinates(ds)
    small, meta, _left = encode_small({k: v for k, v in variables.items()
                                       if k != placeholder and k not in encoding and small_enough(v)})
    big = variables[placeholder]
    rest = {k: v for k, v in variables.items() if k not in meta}
    rest[placeholder] = big.copy(deep=False, data=dask.array.zeros(big.shape, dtype=big.dtype,
                                                                   chunks=encoding[placeholder]["chunks"]))
    # everything else zarr writes (no data for the placeholder: compute=False, never computed);
    # as data variables, the coordinates already named in their attributes
    for k in rest:
        rest[k] = rest[k].compute() if k != placeholder else rest[k]
    objects = encode_in_memory(xr.Dataset(rest, attrs=attrs), {k: encoding[k] for k in rest if k in encoding},
                               compute=False)
    root = json.loads(objects["zarr.json"])
    merged = {**root["consolidated_metadata"]["metadata"], **meta}
    root["consolidated_metadata"]["metadata"] = {k: merged[k] for k in sorted(merged)}
    objects["zarr.json"] = json.dumps(root, indent=2, allow_nan=False).encode()
    objects.update(small)
    return objects


def small_enough(var: xr.Variable) -> bool:
    """Whether :func:`encode_small` takes this (not yet encoded) variable."""
    return bool(var.dims) and var.nbytes < SMALL_BYTES and var.dtype.kind in "biufMOT"


def same_array(a: bytes, b: bytes) -> bool:
    """Two zarr.json of one array agree on everything but attributes (chunk grid, codecs, dtype)."""
    x, y = json.loads(a), json.loads(b)
    x.pop("attributes", None)
    y.pop("attributes", None)
    return bool(x == y)
