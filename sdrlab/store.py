"""Session store: zarr on a local directory or S3 (MinIO, SeaweedFS, AWS) through fsspec.

Layout (decided here and in :mod:`sdrlab.model`)::

    <root>/sessions/<session_id>/    the session Dataset as zarr v3 (consolidated metadata), either
                                     a plain zarr group (local stores, sessions too big to stage in
                                     memory, and every session written before the packed layout), or
        pack                         packed (S3): every chunk too big to inline, end to end, and
        refs.json                    a kerchunk reference file mapping each zarr key to inline
                                     bytes or (pack, offset, length); opened through fsspec's
                                     ReferenceFileSystem
    <root>/commits/<session_id>.json the commit record (summary for list/show, the session's
                                     objects, its layout), written LAST
    <root>/.health/<uuid>            transient probe objects of :meth:`Store.health`

``<root>`` is a directory for ``file://PATH`` and ``bucket/prefix`` for ``s3://bucket/prefix``.
Session ids sort by time (``YYYYmmddTHHMMSSZ-xxxxxx``).  A session exists for list/open only once
its commit marker exists: data first, marker last, so an interrupted write never lists as a
session; writing the same session again is idempotent (a committed one is left as it is, leftovers
of an interrupted one are removed first).  Deleting removes the marker first and then every object
under the session's prefix.  :meth:`Store.fsck` finds (and with ``remove=True`` deletes) prefixes
without a marker.  Every failure is a :class:`~sdrlab.errors.StorageError` naming the store and
the operation, never a credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import pandas as pd
import xarray as xr

from . import model, packing, recording
from ._version import __version__
from .capture import Capture
from .errors import StorageError, quote
from .recording_audio import assemble_audio, is_audio, lighten, piece_data, piece_sizes
from .redact import mask_url

log = logging.getLogger(__name__)

SESSIONS = "sessions"
COMMITS = "commits"
#: S3 sessions up to this size are encoded in memory and stored packed (two objects and the commit
#: record); bigger ones are written by zarr straight to S3 as a plain group
STAGE_IN_MEMORY_BYTES = 512 * 1024 * 1024
#: the packed layout's objects under a session's prefix, and its name in the commit record
PACK = "pack"
REFS = "refs.json"
#: a streamed session's audio stations' samples and waterfall rows: a zarr group beside it, written
#: chunk by chunk from their pieces when it is finalised and referenced from its references
AUDIO_ZARR = "audio.zarr"
#: that group's chunks: 20 s of 12 kHz audio (480 kB), 64 waterfall rows (1 MB at 4,096 bins)
AUDIO_CHUNKS = {"audio": {"station": 1, "audio_sample": 240_000}, "spectrum": {"station": 1, "spectrum_row": 64}}
#: guards every store's last pieces read (:meth:`Store._piece_data`)
_PIECES_LOCK = threading.Lock()

LAYOUT_PACKED = "packed"
#: a session still being captured (or whose capture stopped before it was finalised): its commit
#: record says so, its data are the stream objects of :mod:`sdrlab.recording`
LAYOUT_RECORDING = "recording"


SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: the listing's cache of commit-record summaries (see :meth:`Store.sessions`), under the root
LISTING_CACHE = ".cache/sessions.json"
LISTING_COLUMNS = ["session_id", "start_time", "center_frequency_hz", "duration_s", "stations", "failed", "status",
                   "campaign_id", "campaign_slot", "campaign_frequency_hz", "campaign_start"]
LISTING_CACHE_VERSION = 2
#: session attributes copied into the commit record and the listing (a monitoring campaign's:
#: :mod:`sdrlab.monitor` finds its sessions from the listing without opening any)
CAMPAIGN_KEYS = ("campaign_id", "campaign_slot", "campaign_frequency_hz", "campaign_start")
#: the attribute of an opened session naming the version of the data read (:func:`data_version`)
DATA_VERSION = "data_version"
#: fsck --remove leaves prefixes younger than this alone (a write may be in progress)
FSCK_MIN_AGE_S = 3600.0


def check_session_id(session_id: object) -> str:
    """A session id safe to use as a key: letters, digits, ``._-``, not ``.``/``..``, no ``/``.
    Every store operation checks it first: an empty or ``..`` id must never reach ``rm``."""
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id) or set(session_id) <= {"."}:
        raise StorageError(f"invalid session id {quote(session_id, 100)} (letters, digits, '.', '_', '-'; no '/')")
    return session_id


def data_version(record: dict[str, Any], stored: list[int] | None = None) -> str:
    """The exact version of a session's data: a digest of its commit record (which lists every
    object and is written last; a committed session is never changed in place) and, while it is
    recording, of the samples each station has stored so far."""
    h = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    if stored is not None:
        h.update(json.dumps(stored).encode())
    return h.hexdigest()[:16]


def _fingerprint(summary: dict[str, Any]) -> list[Any]:
    """What makes two writes of one session id the same session."""
    return [summary.get("center_frequency_hz")] + [
        (c["station"], c["samples"], c["start_time"]) for c in summary.get("captures", [])]


T = TypeVar("T")


@dataclass(frozen=True)
class SessionRef:
    session_id: str
    url: str
    #: the data version now in the store (:func:`data_version`)
    version: str = ""


def _summary(ds: xr.Dataset) -> dict[str, Any]:
    """What list/show need without opening the zarr group."""
    st = ds["start_time"].values
    valid = st[~np.isnat(st)]
    status = json.loads(ds.attrs.get("station_status", "{}"))
    captures = []
    # each per-station variable read once (ds.sel per station costs ~3 ms each)
    col = {k: np.asarray(ds[k].values) for k in ("status", "n_samples", "sample_rate", "latitude", "longitude")}
    metrics = {m: np.asarray(ds[m].values, dtype=float) for m in
               ("snr_db", "noise_floor_dbfs_hz", "signal_power_dbfs", "frequency_offset_hz")
               if m in ds.variables and ds[m].dims == ("station",)}
    for i, sid in enumerate(ds["station"].values):
        t0 = st[i]
        row: dict[str, Any] = {
            "station": str(sid),
            "status": str(col["status"][i]),
            "samples": int(col["n_samples"][i]),
            "sample_rate_hz": float(col["sample_rate"][i]),
            "start_time": None if np.isnat(t0) else str(np.datetime_as_string(t0, unit="ns")) + "Z",
            "latitude": float(col["latitude"][i]),
            "longitude": float(col["longitude"][i]),
        }
        for m, values in metrics.items():
            v = float(values[i])
            row[m] = v if np.isfinite(v) else None
        captures.append(row)
    n_ok = sum(1 for c in captures if c["status"] == "ok")
    return {
        "session_id": ds.attrs["session_id"],
        "committed": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "start_time": str(np.datetime_as_string(valid.min(), unit="ns")) + "Z" if valid.size else None,
        "center_frequency_hz": float(ds.attrs.get("center_frequency_hz", np.nan)),
        "duration_s": float(ds.attrs.get("requested_duration_s", np.nan)),
        "stations": [str(s) for s in ds["station"].values],
        "failed": sorted(k for k, v in status.items() if v.get("status") == "failed"),
        "status": "ok" if n_ok == len(captures) and not any(v.get("status") == "failed" for v in status.values())
        else "partial",
        "station_status": status,
        "captures": captures,
        "campaign": _campaign_of(dict(ds.attrs)),
        "zarr_format": model.ZARR_FORMAT,
        "sdrlab_version": __version__,
    }


def _campaign_of(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The campaign keys of a session's attributes (None: not a campaign's session)."""
    if attrs.get("campaign_id") is None:
        return None
    return {k: (v.item() if isinstance(v, np.generic) else v) for k in CAMPAIGN_KEYS if (v := attrs.get(k)) is not None}


#: the longest any one store operation may take (a write of a long session included)
OPERATION_TIMEOUT_S = 300.0


class Store:
    """The session store at ``url`` (``file://PATH`` or ``s3://bucket/prefix``).

    ``storage_options`` go to fsspec (for S3: key, secret, client_kwargs.endpoint_url); the
    :class:`~sdrlab.config.Settings` object makes them (``Settings.store_obj()``).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 timeout_s: float = OPERATION_TIMEOUT_S) -> None:
        shown = quote(mask_url(str(url)), 200)  # errors never show a password, nor a 10 kB URL
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise StorageError(f"store timeout must be a positive number of seconds, got {quote(timeout_s, 100)}")
        self.timeout_s = float(timeout_s)
        try:
            parts = urlsplit(url)
        except (TypeError, ValueError, AttributeError):
            raise StorageError(f"store URL must be file://PATH or s3://BUCKET/PREFIX, got {shown}") from None
        if parts.scheme not in ("file", "s3"):
            raise StorageError(f"store URL must be file://PATH or s3://BUCKET/PREFIX, got {shown}")
        if "@" in parts.netloc and (parts.scheme == "s3" or mask_url(url) != url):
            raise StorageError(f"store URL {shown} holds credentials: give them as the S3 key and secret "
                               "(SDRLAB_S3_KEY, SDRLAB_S3_SECRET), not in the URL")
        self.url = url.rstrip("/")
        self.protocol = parts.scheme
        self.options = dict(storage_options or {})
        if self.protocol == "file":
            self.root = str(Path((parts.netloc + parts.path) or ".").expanduser().resolve())
        else:
            if not parts.netloc:
                raise StorageError(f"store URL {shown} names no bucket")
            self.root = (parts.netloc + parts.path).rstrip("/")
        self._fs: Any = None
        self._async_fs: Any = None
        self._bucket_ok = False
        # the audio pieces last read by :meth:`_piece_data` while ``audio.zarr`` is written (else None)
        self._pieces: dict[tuple[str, str, int, int], dict[str, npt.NDArray[Any]]] | None = None

    def __repr__(self) -> str:
        return f"Store({self.where})"

    @property
    def where(self) -> str:
        """The store as shown in messages: URL and endpoint, never credentials."""
        ep = (self.options.get("client_kwargs") or {}).get("endpoint_url")
        return f"{self.protocol}://{self.root}" + (f" at {ep}" if ep else "")

    # ---- plumbing ------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            if self.protocol == "s3":
                try:
                    import s3fs  # noqa: F401
                except ImportError:
                    raise StorageError("an s3:// store needs s3fs: pip install 'sdrlab[s3]'") from None
                opts = {"use_listings_cache": False, "skip_instance_cache": True, **self.options}
                self._fs = fsspec.filesystem("s3", **opts)
            else:
                self._fs = fsspec.filesystem("file", auto_mkdir=True)
        return self._fs

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _zarr_url(self, session_id: str) -> str:
        """Where zarr reads and writes the session: a local path, or an s3:// URL."""
        p = self._path(SESSIONS, session_id)
        return p if self.protocol == "file" else f"s3://{p}"

    def session_url(self, session_id: str) -> str:
        """The session's address as the index records it (``file://...`` or ``s3://...``)."""
        return f"{self.protocol}://{self._path(SESSIONS, session_id)}"

    def _zarr_options(self) -> dict[str, Any] | None:
        return self.options if self.protocol == "s3" else None

    def _do(self, what: str, fn: Callable[[], T]) -> T:
        """Run a store operation with a deadline (``timeout_s``): a server that stops answering
        (frozen, or a network that drops packets) ends in a StorageError naming it, instead of a
        hang.  The operation's thread is left to finish or fail on its own; a write it completes
        later leaves at most uncommitted objects (``fsck``), never a half session."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name=f"sdrlab-store-{what[:40]}", daemon=True).start()
        if not done.wait(self.timeout_s):
            raise StorageError(f"{what} in {self.where}: no answer within {self.timeout_s:g} s "
                               "(the server is not responding)")
        if "error" not in box:
            value: T = box["value"]
            return value
        try:
            raise box["error"]
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise StorageError(f"{what} in {self.where}: not found ({_reason(exc)})") from None
        except PermissionError as exc:
            raise StorageError(f"{what} in {self.where}: access denied, check the credentials ({_reason(exc)})") from None
        except Exception as exc:  # botocore/aiohttp/OS errors: name the store and the operation
            raise StorageError(f"{what} in {self.where} failed: {_reason(exc)}") from None

    def _commit_key(self, session_id: str) -> str:
        return self._path(COMMITS, f"{session_id}.json")

    def _keys(self, prefix: str) -> list[str]:
        """Object keys under a prefix (no directory entries, which some S3 servers keep)."""
        try:
            found = self.fs.find(prefix, detail=True)  # nothing under it: empty (one LIST, no HEAD first)
        except FileNotFoundError:
            return []
        return sorted(k for k, info in found.items() if info.get("type") != "directory")

    def _committed(self, session_id: str) -> bool:
        return bool(self.fs.exists(self._commit_key(session_id)))

    # ---- operations ----------------------------------------------------------------------
    def write(self, ds: xr.Dataset) -> SessionRef:
        """Write a session and commit it.  Idempotent: a committed session with this id is left
        as it is; leftovers of an interrupted write are removed first."""
        sid = check_session_id(ds.attrs.get("session_id"))
        ref = SessionRef(sid, self.session_url(sid))
        target = self._zarr_url(sid)

        def run() -> SessionRef:
            prefix = self._path(SESSIONS, sid)
            # leftovers listed while the commit record is looked for: two round trips in the time of one
            with ThreadPoolExecutor(1, thread_name_prefix="sdrlab-store-write") as pool:
                leftovers = pool.submit(self._keys, prefix)
                committed = self._committed(sid)
                left = leftovers.result()
            summary = _summary(ds)
            if committed:
                try:
                    existing = self.summary(sid)
                except StorageError:
                    existing = None  # an unreadable record: rewrite below
                    self.fs.rm(self._commit_key(sid))
                if existing is not None:
                    if _fingerprint(existing) != _fingerprint(summary):
                        raise StorageError(f"session {sid} already exists in {self.where} with different "
                                           "content; delete it first or write under a new id")
                    log.info("session %s is already committed in %s", sid, self.where)
                    return SessionRef(sid, ref.url, data_version(existing))
            if left:
                log.warning("removing leftovers of an interrupted write of %s", sid)
                self.fs.rm(prefix, recursive=True)
            if self.protocol == "s3":
                self._ensure_bucket()
            out = model.for_writing(ds).copy(deep=False)  # new Variables: the caller's stay untouched
            out.attrs.pop(DATA_VERSION, None)  # a version is of what was read, not of what is written
            for v in out.variables.values():  # encodings from an opened store would clash
                v.encoding = {}
            if self.protocol == "s3" and out.nbytes <= STAGE_IN_MEMORY_BYTES:
                # a few ms per object however small is what makes S3 servers slow on zarr's many
                # small objects: encode in memory, then store two objects (pack + references)
                summary["layout"] = LAYOUT_PACKED
                summary["objects"] = self._write_packed(out, prefix)
            else:
                with packing.quiet_consolidation():
                    out.to_zarr(target, mode="w", zarr_format=model.ZARR_FORMAT, consolidated=model.CONSOLIDATED,
                                encoding=model.encoding(out), storage_options=self._zarr_options())
                summary["objects"] = self._relative_keys(sid)
            self._put_atomic(self._commit_key(sid), json.dumps(summary, indent=1).encode())
            return SessionRef(sid, ref.url, data_version(summary))

        out = self._do(f"writing session {sid}", run)
        log.info("session %s committed in %s", sid, self.where)
        return out

    def _write_packed(self, out: xr.Dataset, prefix: str) -> list[str]:
        """Store a session packed (see the module's docstring); returns its object names.  The IQ
        is encoded and uploaded in a second thread while the rest is encoded
        (:func:`packing.encode_shell`), then the references are written."""
        enc = packing.packed_encoding(out)
        template = f"s3://{prefix}"
        if "iq" not in out:  # an audio session: small enough to encode at once, no IQ pack
            with packing.quiet_consolidation():
                objects = packing.encode_in_memory(out, enc)
            refs, aux = packing.pack(objects, template, f"{PACK}.1", inline=packing.INLINE_BYTES)
            extra = {f"{prefix}/{PACK}.1": aux} if aux else {}
            self.fs.pipe({f"{prefix}/{REFS}": json.dumps(refs).encode(), **extra})
            return sorted([REFS] + [k.rsplit("/", 1)[1] for k in extra])
        iq_only = out["iq"].reset_coords(drop=True).to_dataset()

        def iq_pack() -> tuple[dict[str, Any], bytes]:
            objects = packing.encode_in_memory(iq_only, {"iq": enc["iq"]})
            chunks = {k: v for k, v in objects.items() if k.startswith("iq/c/")}
            refs, pack = packing.pack(chunks, template, PACK, inline=-1)  # every IQ chunk into the pack
            self.fs.pipe(f"{prefix}/{PACK}", pack)
            return refs["refs"], objects["iq/zarr.json"]

        # catch_warnings is process-wide: one around both threads keeps the filter on throughout
        with packing.quiet_consolidation(), ThreadPoolExecutor(1, thread_name_prefix="sdrlab-store-iq") as pool:
            iq_job = pool.submit(iq_pack)
            rest = packing.encode_shell(out, enc)
            refs, aux = packing.pack(rest, template, f"{PACK}.1", inline=packing.INLINE_BYTES)
            iq_refs, iq_meta = iq_job.result()
        if not packing.same_array(iq_meta, rest["iq/zarr.json"]):  # the IQ chunks fit the group's metadata
            raise StorageError(f"packing session {prefix}: IQ metadata differ between its two encodings")
        refs["refs"].update(iq_refs)
        extra = {f"{prefix}/{PACK}.1": aux} if aux else {}
        self.fs.pipe({f"{prefix}/{REFS}": json.dumps(refs).encode(), **extra})
        return sorted([PACK, REFS] + [k.rsplit("/", 1)[1] for k in extra])

    def _put_atomic(self, key: str, data: bytes) -> None:
        """An S3 PUT is atomic; a local file is written beside and renamed into place (fsynced),
        so a full disk never leaves half a commit record."""
        if self.protocol == "s3":
            self.fs.pipe(key, data)
            return
        tmp = f"{key}.{uuid.uuid4().hex[:8]}.tmp"
        os.makedirs(os.path.dirname(key), exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, key)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @property
    def bucket(self) -> str:
        """The S3 bucket (the first part of the root)."""
        return self.root.split("/", 1)[0]

    def _ensure_bucket(self) -> None:
        """Create the bucket if it is missing (checked once per Store: a round trip per write)."""
        if self._bucket_ok:
            return
        if not self.fs.exists(self.bucket):
            self.fs.mkdir(self.bucket)
        self._bucket_ok = True

    def _no_bucket(self) -> StorageError | None:
        """An error naming the bucket if an S3 store's bucket does not exist."""
        if self.protocol != "s3" or self.fs.exists(self.bucket):
            return None
        return StorageError(f"bucket {self.bucket!r} does not exist in {self.where} (a typo? `sdrlab store "
                            "health` creates it)")

    def _relative_keys(self, session_id: str) -> list[str]:
        """The session's zarr object keys, relative to its group."""
        prefix = self._path(SESSIONS, session_id)
        n = len(prefix) + 1
        return sorted(k[n:] for k in self._keys(prefix) if k.startswith(prefix + "/"))

    def missing_objects(self, session_id: str, summary: dict[str, Any] | None = None,
                        present: list[str] | None = None) -> list[str]:
        """Objects the commit record lists that are not in the store (a damaged session); empty
        for a session committed before records listed their objects."""
        listed = (summary if summary is not None else self.summary(session_id)).get("objects")
        if not listed:
            return []
        found = set(present if present is not None else self._relative_keys(session_id))
        return [k for k in listed if k not in found]

    def open(self, session_id: str, version: str | None = None) -> xr.Dataset:
        """A committed session, lazily: IQ dask-backed with the chunks as stored (one station
        each); a packed session's small records (inline in its references) are read at once.  A
        session whose objects are not all there is a :class:`StorageError` naming them (zarr
        would read the missing chunks as zeros).

        The dataset's ``data_version`` attribute names exactly what was read (see
        :func:`data_version`); with ``version`` the open fails unless the store still holds that
        version, so a report can be reproduced or says why it cannot."""
        check_session_id(session_id)

        def refuse(found: str) -> None:
            if version is not None and found != version:
                raise StorageError(f"session {session_id} in {self.where} is data version {found}, not {version}: "
                                   "it was rewritten or is still recording since that version was read")

        def run() -> xr.Dataset:
            ds = read()
            refuse(str(ds.attrs[DATA_VERSION]))
            return ds

        def read() -> xr.Dataset:
            # record, references (a packed session's; absent otherwise) and object list at once:
            # three round trips in the time of one
            with ThreadPoolExecutor(3, thread_name_prefix="sdrlab-store-open") as pool:
                record = pool.submit(self._read_record, session_id)
                present = pool.submit(self._relative_keys, session_id)
                try:
                    raw_refs: bytes | None = self.fs.cat(self._path(SESSIONS, session_id, REFS))
                except FileNotFoundError:  # not packed (or not there: the record says which)
                    raw_refs = None
                # a packed session is decoded (CPU, ~30 ms) while the record and the object list
                # are still on their way; used only once the record says it is packed and whole
                packed = pool.submit(self._open_packed, session_id, raw_refs) if raw_refs is not None else None
                summary = record.result()  # "no committed session" when there is no record
                if summary.get("layout") != LAYOUT_RECORDING:
                    refuse(data_version(summary))  # a committed session's version is its record's: no need to read it
                if summary.get("layout") == LAYOUT_RECORDING:
                    ds = self._open_recording(session_id, summary)
                    # a growing session: the record and what each station has stored so far
                    ds.attrs[DATA_VERSION] = data_version(summary, [int(n) for n in ds["n_samples"].values])
                    return ds
                gone = self.missing_objects(session_id, summary, present.result())
                if gone:
                    raise StorageError(f"session {session_id} in {self.where} is damaged: {len(gone)} object(s) "
                                       f"missing ({', '.join(gone[:5])}{', ...' if len(gone) > 5 else ''}); "
                                       "run `sdrlab store fsck`")
                if summary.get("layout") == LAYOUT_PACKED:
                    ds = packed.result() if packed is not None else self._open_packed(session_id)
                    ds.attrs[DATA_VERSION] = data_version(summary)
                    return ds
            with packing.quiet_consolidation():
                plain: xr.Dataset = xr.open_zarr(self._zarr_url(session_id), consolidated=model.CONSOLIDATED,
                                                 zarr_format=model.ZARR_FORMAT, storage_options=self._zarr_options())
            plain.attrs[DATA_VERSION] = data_version(summary)
            return plain

        return self._do(f"opening session {session_id}", run)

    def _references(self, session_id: str, raw: bytes | None = None) -> dict[str, Any]:
        """A packed session's kerchunk references, pointing at where the session is now."""
        refs: dict[str, Any] = json.loads(raw if raw is not None else self.fs.cat(self._path(SESSIONS, session_id, REFS)))
        refs["templates"] = {"u": f"{self.protocol}://{self._path(SESSIONS, session_id)}"}
        return refs

    def _zarr_store(self, session_id: str, raw_refs: bytes | None = None, refs: dict[str, Any] | None = None) -> Any:
        """The zarr store of a packed session: fsspec's ReferenceFileSystem over the pack."""
        import zarr
        from fsspec.implementations.reference import ReferenceFileSystem

        if refs is None:
            refs = self._references(session_id, raw_refs)
        rfs = ReferenceFileSystem(refs, fs=packing.block_reader()(self._target_fs(), self.protocol), asynchronous=True)
        return zarr.storage.FsspecStore(rfs, read_only=True, path="")

    def _target_fs(self) -> Any:
        """An asynchronous filesystem for the store, for zarr's event loop (one per Store)."""
        if self._async_fs is None:
            import fsspec

            if self.protocol == "s3":
                # fsspec's instance cache, as zarr's from_url: one client per options, closed at exit
                opts = {"use_listings_cache": False, **self.options}
                self._async_fs = fsspec.filesystem("s3", **opts, asynchronous=True)
            else:
                from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

                self._async_fs = AsyncFileSystemWrapper(fsspec.filesystem("file"), asynchronous=True)
        return self._async_fs

    def _open_packed(self, session_id: str, raw_refs: bytes | None = None,
                     refs: dict[str, Any] | None = None) -> xr.Dataset:
        """A packed session: its small arrays decoded from the references at once
        (:func:`packing.decode_inline`), the rest (IQ, long frame records) dask arrays on their
        zarr chunks in the pack, read when computed; then CF decoding."""
        import asyncio

        import dask.array
        import zarr
        from zarr.core.sync import sync

        if refs is None:
            refs = self._references(session_id, raw_refs)
        variables, meta, attrs = packing.decode_inline(refs["refs"])
        lazy = sorted(k for k, m in meta.items() if m.get("node_type") == "array" and k not in variables)
        if lazy:
            store = self._zarr_store(session_id, refs=refs)

            async def open_arrays() -> list[Any]:
                return list(await asyncio.gather(*(zarr.api.asynchronous.open_array(
                    store=store, path=k, zarr_format=model.ZARR_FORMAT, mode="r") for k in lazy)))

            arrays = sync(open_arrays())  # one hand-over to zarr's event loop for all of them
            # dask names from the references (what and where the chunks are), not a hash of the array
            token = hashlib.sha1(json.dumps(refs["refs"], sort_keys=True).encode()).hexdigest()[:16]
            for name, arr in zip(lazy, arrays):
                m = meta[name]
                data = dask.array.from_array(  # type: ignore[no-untyped-call]
                    zarr.Array(arr), chunks=arr.chunks, name=f"sdrlab-{name}-{token}", inline_array=True)
                variables[name] = xr.Variable(m["dimension_names"], data, dict(m.get("attributes", {})))
        coords = set(attrs.pop("coordinates", "").split())  # none at group level, as xarray writes
        for var in variables.values():
            coords.update(var.attrs.get("coordinates", "").split())
        coords |= {k for k, v in variables.items() if v.dims == (k,)}  # dimension coordinates
        out: xr.Dataset = xr.decode_cf(xr.Dataset({k: v for k, v in variables.items() if k not in coords},
                                                  {k: v for k, v in variables.items() if k in coords}, attrs=attrs))
        return out

    # ---- streaming (see sdrlab.recording) ---------------------------------------------------
    def begin_recording(self, session_id: str, record: dict[str, Any]) -> None:
        """Make a session visible as ``recording`` before its first chunk: its commit record
        (``record``: stations, frequency, duration, chunk_samples, attrs) with that layout."""
        check_session_id(session_id)
        rec = {**record, "session_id": session_id, "layout": LAYOUT_RECORDING, "status": "recording",
               "committed": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "zarr_format": model.ZARR_FORMAT, "sdrlab_version": __version__}
        rec.setdefault("failed", [])
        rec.setdefault("captures", [])

        def run() -> None:
            if self._committed(session_id):
                raise StorageError(f"session {session_id} already exists in {self.where}")
            if self.protocol == "s3":
                self._ensure_bucket()
            self._put_atomic(self._commit_key(session_id), json.dumps(rec, indent=1).encode())

        self._do(f"starting the recording of {session_id}", run)

    def put_stream(self, session_id: str, station: str, k: int, chunk: bytes, sidecar: bytes) -> None:
        """Store chunk ``k`` of a station of a recording session, then its sidecar (an empty
        ``chunk``: a last sidecar with no samples after it)."""
        def run() -> None:
            if chunk:
                self._put_atomic(self._path(SESSIONS, session_id, recording.chunk_key(station, k, "iq")), chunk)
            self._put_atomic(self._path(SESSIONS, session_id, recording.chunk_key(station, k, "npz")), sidecar)

        self._do(f"storing chunk {k} of {station} in session {session_id}", run)

    def stream_runs(self, session_id: str, stations: list[str]) -> dict[str, tuple[list[dict[str, Any]], int]]:
        """Per station: its sidecars 0, 1, ... as far as they form an unbroken run, and how many
        chunk objects that run holds (one LIST, then each station's sidecars read concurrently)."""
        return {st: (cars, n) for st, cars, n in self.iter_stream_runs(session_id, stations)}

    def iter_stream_runs(self, session_id: str, stations: list[str],
                         light: bool = False) -> Iterator[tuple[str, list[dict[str, Any]], int]]:
        """:meth:`stream_runs` one station at a time: an hour of seven stations is ~1,300
        sidecars, and holding all of them read and decoded at once was most of what finalising
        added to a long capture's peak memory."""
        base = self._path(SESSIONS, session_id, recording.STREAM)
        keys = self._keys(base)
        have: dict[str, set[str]] = {}
        for key in keys:
            station, name = key[len(base) + 1:].split("/", 1)
            have.setdefault(station, set()).add(name)
        wanted: dict[str, list[str]] = {}
        chunks: dict[str, int] = {}
        counts: dict[str, int] = {}
        for st in stations:
            names = have.get(st, set())
            k = c = 0
            while f"{k:06d}.npz" in names:
                k += 1
            while f"{c:06d}.iq" in names:
                c += 1
            wanted[st] = [self._path(SESSIONS, session_id, recording.chunk_key(st, i, "npz")) for i in range(min(k, c + 1))]
            chunks[st] = min(c, k)
            counts[st] = k
        for st in stations:
            keys = wanted[st]
            raw = self.fs.cat(keys) if keys else {}
            if isinstance(raw, bytes):
                raw = {keys[0]: raw}
            cars = [recording.read_sidecar(raw.pop(key)) for key in keys]  # each read's bytes freed at once
            if cars and is_audio(cars[0]["meta"]):  # an audio receiver's pieces: no chunk objects beside them
                # ``light``: each piece read on its own and its samples let go at once (sizes kept)
                rest = [self._path(SESSIONS, session_id, recording.chunk_key(st, i, "npz")) for i in range(1, counts[st])]
                if light:
                    cars = [lighten(c) for c in cars] + [lighten(recording.read_sidecar(self.fs.cat(key))) for key in rest]
                else:
                    more = self.fs.cat(rest) if rest else {}
                    if isinstance(more, bytes):
                        more = {rest[0]: more}
                    cars += [recording.read_sidecar(more.pop(key)) for key in rest]
                yield st, cars, 0
                continue
            run, n = min(len(cars), chunks[st]), chunks[st]
            # a last sidecar with no chunk of its own (nothing buffered at the end) belongs to the run;
            # one whose chunk is missing (a crash between the two) does not
            if len(cars) > n and cars[n]["meta"]["stored"] <= n * cars[n]["meta"]["chunk_samples"]:
                run = n + 1
            yield st, cars[:run], min(n, run)

    def recording_captures(self, session_id: str, summary: dict[str, Any] | None = None) -> list[Any]:
        """The captures of a recording session as stored so far (see :func:`sdrlab.recording.assemble`)."""
        rec = summary if summary is not None else self._read_record(session_id)
        return self._recording(session_id, rec)[0]

    def _recording(self, session_id: str, rec: dict[str, Any]) -> tuple[list[Any], dict[str, list[dict[str, Any]]]]:
        stations = [str(s) for s in rec.get("stations", [])]
        live = rec.get("layout") == LAYOUT_RECORDING
        caps = []
        series = {}
        for st, cars, n in self.iter_stream_runs(session_id, stations):
            cap = recording.assemble(st, cars, n, recording=live)
            if cap is not None:
                caps.append(cap)
                series[st] = recording.intervals(cars, recording.stored_samples(cars, n))
            del cars  # one station's sidecars at a time
        return caps, series

    def move_stream(self, session_id: str, target: Store) -> int:
        """Copy this store's stream objects of a recording session into ``target`` (its rescue
        copy going home; the session's record there, if missing, from here); returns how many."""
        def run() -> int:
            base = self._path(SESSIONS, session_id)
            keys = [k for k in self._keys(base) if k.startswith(f"{base}/{recording.STREAM}/")]
            mine = json.loads(self.fs.cat(self._commit_key(session_id)))
            try:
                theirs = target._read_record(session_id)
            except StorageError:
                theirs = None
            if theirs is None:
                target._put_atomic(target._commit_key(session_id), json.dumps(mine, indent=1).encode())
            elif theirs.get("layout") == LAYOUT_RECORDING and mine.get("station_status"):
                theirs["station_status"] = mine["station_status"]  # how the capture went, for finalising
                target._put_atomic(target._commit_key(session_id), json.dumps(theirs, indent=1).encode())
            for key in keys:
                target._put_atomic(target._path(SESSIONS, session_id, key[len(base) + 1:]), self.fs.cat(key))
            return len(keys)

        return self._do(f"moving the stream of {session_id} to {target.where}", run)

    def stale_recordings(self, min_age_s: float) -> list[str]:
        """Sessions still ``recording`` with nothing written for ``min_age_s`` seconds: their
        capture stopped without finalising them (``sdrlab store finalise``)."""
        def run() -> list[str]:
            now = time.time()
            out = []
            for sid, rec in self._records(self._markers()):
                if rec is not None and rec.get("layout") == LAYOUT_RECORDING:
                    newest = max(self._newest(self._path(SESSIONS, sid)) if self._keys(self._path(SESSIONS, sid))
                                 else 0.0, self._newest(self._commit_key(sid)))
                    if now - newest >= min_age_s:
                        out.append(sid)
            return out

        return self._do("finding stopped recordings", run)

    def _stream_refs(self, session_id: str, shell: xr.Dataset, n: int, inline: int) -> tuple[dict[str, Any], bytes]:
        """kerchunk references for a streamed session: its small variables (``shell``, IQ as a
        placeholder) inline up to ``inline`` bytes (the rest in an auxiliary pack, returned), the
        IQ chunks pointing at the stream objects."""
        import dask.array

        ns = shell.sizes["station"]
        # an audio station's row of the IQ is padding (its n_samples count audio samples)
        has_iq = [str(k) != "audio" for k in shell["kind"].values] if "kind" in shell.coords else [True] * ns
        n_max = max([int(v) for v, iq_ in zip(shell["n_samples"].values, has_iq) if iq_], default=0)
        enc = model.stream_encoding(n)
        iq = xr.Variable(("station", "sample", "component"),
                         dask.array.zeros((ns, n_max, 2), dtype=np.int16, chunks=(1, n, 2)), model.IQ_ATTRS)

        def plain(v: xr.Variable) -> xr.Variable:  # strings as read back -> object, as first written
            return v.astype(object) if v.dtype.kind in "UT" else v

        shell = xr.Dataset({k: plain(v.variable) for k, v in shell.data_vars.items()},
                           {k: plain(v.variable) for k, v in shell.coords.items()}, attrs=shell.attrs)
        # the audio stations' samples and rows (read from their pieces): on a regular chunk grid,
        # written chunk by chunk beside the session and referenced there (below)
        big = {k: c for k, c in AUDIO_CHUNKS.items() if k in shell.data_vars and shell[k].chunks is not None}
        enc = {k: dict(v) for k, v in enc.items()} if any(has_iq) else {}
        for name, c in big.items():
            chunks = {d: min(c.get(str(d), shell.sizes[d]), max(1, shell.sizes[d])) for d in shell[name].dims}
            shell[name] = shell[name].chunk(chunks)
            enc[name] = {"chunks": tuple(chunks[d] for d in shell[name].dims)}
        objects = packing.encode_in_memory(shell.assign(iq=iq) if any(has_iq) else shell, enc, compute=False)
        lazy = [k for k, v in shell.data_vars.items() if v.chunks is not None and k not in big]
        if lazy:  # a recording's frame records: their chunks encoded a station at a time
            import dask

            with dask.config.set(scheduler="synchronous"):
                rows = packing.encode_in_memory(shell[lazy], {}, compute=True)
            for key in list(rows):
                name = key.split("/", 1)[0]
                if name in lazy and not key.endswith("zarr.json"):
                    objects[key] = rows.pop(key)
                elif name in lazy and not packing.same_array(objects[key], rows[key]):
                    raise StorageError(f"session {session_id}: {name} encoded differently in two passes")
        written = self._write_audio(session_id, shell, big, enc) if big else {}
        for key, meta in written.items():
            if key.endswith("zarr.json") and not packing.same_array(objects[key], meta):
                raise StorageError(f"session {session_id}: {key} encoded differently in two passes")
        refs, aux = packing.pack(objects, f"{self.protocol}://{self._path(SESSIONS, session_id)}", f"{PACK}.1", inline)
        for key in written:
            if not key.endswith("zarr.json"):
                refs["refs"][key] = ["{{u}}/" + f"{AUDIO_ZARR}/{key}"]
        for i, st in enumerate(shell["station"].values):
            if not has_iq[i]:
                continue
            for k in range(math.ceil(int(shell["n_samples"].values[i]) / n)):
                refs["refs"][f"iq/c/{i}/{k}/0"] = ["{{u}}/" + recording.chunk_key(str(st), k, "iq")]
        return refs, aux

    def _write_audio(self, session_id: str, shell: xr.Dataset, big: dict[str, Any],
                     enc: dict[str, Any]) -> dict[str, bytes]:
        """Write the audio stations' ``audio`` and ``spectrum`` (dask: read from their pieces) as
        a zarr group beside the session (``audio.zarr``), one chunk at a time: each chunk is
        computed on its own (the graph culled to it: the pieces it overlaps, the last two read
        kept for the next chunk) and written.  Computing the whole rechunk graph at once, even
        with dask's synchronous scheduler, held the split parts of many pieces waiting for their
        chunks (``benchmarks/memory.py --network italy7``: ~7 MB more per minute of seven
        stations).  Returns its keys (relative to the group) with each array's metadata (the
        chunks: b"")."""
        import dask.local
        import zarr
        from dask.optimization import cull

        part = xr.Dataset({k: shell[k].variable for k in big}, attrs={})
        url = self._path(SESSIONS, session_id, AUDIO_ZARR)
        url = url if self.protocol == "file" else f"s3://{url}"
        with packing.quiet_consolidation():  # the group and its arrays' metadata; the chunks below
            part.to_zarr(url, mode="w", zarr_format=model.ZARR_FORMAT, consolidated=False,
                         encoding={k: enc[k] for k in big}, storage_options=self._zarr_options(), compute=False)
        group = zarr.open_group(url, mode="r+", zarr_format=model.ZARR_FORMAT, storage_options=self._zarr_options())
        with _PIECES_LOCK:
            self._pieces = {}
        try:
            for name in big:
                data = part[name].data
                target = group[name]
                assert isinstance(target, zarr.Array)
                dsk = dict(data.__dask_graph__())
                starts = [np.cumsum((0,) + c) for c in data.chunks]
                for idx in np.ndindex(*data.numblocks):  # in order: a station's chunks one after another
                    block_key = (data.name, *idx)
                    block = dask.local.get_sync(cull(dsk, [block_key])[0], block_key)  # type: ignore[no-untyped-call]
                    target[tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx))] = block
                    del block
        finally:
            with _PIECES_LOCK:
                self._pieces = None
        base = self._path(SESSIONS, session_id, AUDIO_ZARR)
        out: dict[str, bytes] = {}
        for key in self._keys(base):
            rel = key[len(base) + 1:]
            if rel.split("/", 1)[0] in big:
                out[rel] = self.fs.cat(key) if rel.endswith("zarr.json") else b""
        return out

    def finish_recording(self, ds: xr.Dataset) -> SessionRef:
        """Commit a streamed session: ``ds`` is the session as opened while recording, with its
        metrics and statuses attached.  Its small variables go into the references (and an
        auxiliary pack), the IQ references point at the stream chunks where they are; the commit
        record, written last, replaces the ``recording`` one.  Nothing is copied."""
        sid = check_session_id(ds.attrs.get("session_id"))

        def run() -> SessionRef:
            record = self._read_record(sid)
            if record.get("layout") != LAYOUT_RECORDING:
                raise StorageError(f"session {sid} in {self.where} is not recording (already finalised?)")
            n = int(record["chunk_samples"])
            shell = ds.drop_vars("iq", errors="ignore")
            lazy = [k for k, v in shell.data_vars.items() if v.chunks is not None]  # a recording's frame records
            shell = shell.drop_vars(lazy).compute().assign({k: shell[k].variable for k in lazy})
            shell.attrs["recording_state"] = "final"
            shell.attrs.pop(DATA_VERSION, None)
            refs, aux = self._stream_refs(sid, shell, n, inline=packing.INLINE_BYTES)
            prefix = self._path(SESSIONS, sid)
            extra = {f"{prefix}/{PACK}.1": aux} if aux else {}
            for key, data in {f"{prefix}/{REFS}": json.dumps(refs).encode(), **extra}.items():
                self._put_atomic(key, data)
            summary = _summary(shell)
            summary["layout"] = LAYOUT_PACKED
            summary["streamed"] = {"chunk_samples": n}
            chunks = sorted({v[0].split("/", 1)[1] for v in refs["refs"].values()
                             if isinstance(v, list) and str(v[0]).startswith(("{{u}}/" + recording.STREAM,
                                                                              "{{u}}/" + AUDIO_ZARR))})
            summary["objects"] = sorted([REFS] + [k.rsplit("/", 1)[1] for k in extra] + chunks)
            self._put_atomic(self._commit_key(sid), json.dumps(summary, indent=1).encode())
            self._drop_audio_pieces(sid, shell)
            return SessionRef(sid, self.session_url(sid), data_version(summary))

        return self._do(f"finalising session {sid}", run)

    def _drop_audio_pieces(self, session_id: str, ds: xr.Dataset) -> None:
        """Once a streamed session is committed, its audio stations' pieces are copies of what
        the session holds (their audio, rows and readings went into its pack): removed.  A
        failure leaves them (they are never read again; `sdrlab store delete` takes them)."""
        if "kind" not in ds.coords:
            return
        audio = [str(s) for s, k in zip(ds["station"].values, ds["kind"].values) if str(k) == "audio"]
        base = self._path(SESSIONS, session_id, recording.STREAM)
        keys = [k for k in self._keys(base) if k[len(base) + 1:].split("/", 1)[0] in audio]
        try:
            if keys:
                self.fs.rm(keys)
        except Exception as exc:  # the session is committed: this costs storage, nothing else
            log.warning("session %s: %d audio piece(s) not removed after finalising: %s", session_id, len(keys), exc)

    def _recording_shell(self, session_id: str, summary: dict[str, Any]) -> xr.Dataset:
        """A recording session without its IQ, its frame records lazy (one dask chunk per station,
        read from the station's sidecars when computed): an hour of seven stations holds ~17 MB
        of frame records, which finalising would otherwise hold whole while it measures and packs
        the session.  Everything else is assembled here, one station at a time."""
        live = summary.get("layout") == LAYOUT_RECORDING
        light, series, rssi, runs = [], {}, {}, {}
        pieces: dict[str, list[tuple[int, int, int]]] = {}
        for st, cars, n in self.iter_stream_runs(session_id, [str(s) for s in summary.get("stations", [])], light=True):
            if cars and is_audio(cars[0]["meta"]):  # audio pieces: sizes, messages, rows' metadata, readings
                cap = assemble_audio(st, cars, recording=live, light=True)
                if cap is not None:
                    light.append(cap)
                    pieces[st] = piece_sizes(cars)
                del cars, cap
                continue
            cap = recording.assemble(st, cars, n, recording=live)
            if cap is not None:
                series[st] = recording.intervals(cars, recording.stored_samples(cars, n))
                rssi[st] = model.mean_rssi_dbm(cap)
                runs[st] = (len(cars), n, model.n_frames(cap))
                light.append(_without_frames(cap))
            del cars, cap  # one station's sidecars and frames at a time
        if not light:
            raise StorageError(f"session {session_id} in {self.where} is recording and has no chunk stored yet")
        shell = recording_shell(light, summary, frames=False)
        ids = [str(s) for s in shell["station"].values]
        if runs:  # the IQ stations' RSSI and frame records (an audio station's rows are padding)
            shell = shell.assign_coords(rssi_dbm=shell["rssi_dbm"].copy(data=np.array(
                [rssi.get(s, v) for s, v in zip(ids, shell["rssi_dbm"].values)], float)))
            shell = shell.assign(self._lazy_frames(session_id, ids, runs, live))
        if pieces:  # the audio stations' samples and rows, read from their pieces when computed
            shell = shell.assign(self._lazy_audio(session_id, ids, pieces))
        out: xr.Dataset = recording.interval_variables(shell, series, float(summary.get("interval_s") or 10.0))
        return out

    def _lazy_audio(self, session_id: str, stations: list[str],
                    pieces: dict[str, list[tuple[int, int, int]]]) -> dict[str, xr.Variable]:
        """The ``audio`` and ``spectrum`` variables of a recording session's audio stations as dask
        arrays with one chunk per piece (``pieces``: station -> each piece's audio samples, rows,
        bins), read when computed: finalising an hour holds a piece at a time, not the hour.  Other
        stations' rows (and each station's past its end) are padding."""
        import dask.array
        import dask.base
        from dask.delayed import delayed

        n_max = max(sum(p[0] for p in ps) for ps in pieces.values())
        r_max = max(sum(p[1] for p in ps) for ps in pieces.values())
        bins = max([p[2] for ps in pieces.values() for p in ps] + [0])
        audio, spectrum = [], []
        for st in stations:
            arow: list[Any] = []
            srow: list[Any] = []
            for k, (n, r, _b) in enumerate(pieces.get(st, [])):
                if not (n or r):
                    continue
                token = dask.base.tokenize(self.url, session_id, st, k, bins)
                got = delayed(self._piece_data, pure=True)(session_id, st, k, bins, dask_key_name=f"piece-{st}-{k}-{token}")
                if n:
                    arow.append(dask.array.from_delayed(got["audio"], (1, n), dtype=np.int16,  # type: ignore[no-untyped-call]
                                                        name=f"audio-{st}-{k}-{token}"))
                if r:
                    srow.append(dask.array.from_delayed(got["spectrum"], (1, r, bins), dtype=np.float32,  # type: ignore[no-untyped-call]
                                                        name=f"spectrum-{st}-{k}-{token}"))
            n = sum(a.shape[1] for a in arow)
            r = sum(a.shape[1] for a in srow)
            if n < n_max:
                arow.append(dask.array.zeros((1, n_max - n), dtype=np.int16))
            if r < r_max:
                srow.append(dask.array.full((1, r_max - r, bins), np.nan, dtype=np.float32))  # type: ignore[no-untyped-call]
            audio.append(dask.array.concatenate(arow, axis=1))  # type: ignore[no-untyped-call]
            spectrum.append(dask.array.concatenate(srow, axis=1))  # type: ignore[no-untyped-call]
        from .model_audio import AUDIO_ATTRS, SPECTRUM_ATTRS

        return {"audio": xr.Variable(("station", "audio_sample"), dask.array.concatenate(audio, axis=0),  # type: ignore[no-untyped-call]
                                     dict(AUDIO_ATTRS)),
                "spectrum": xr.Variable(("station", "spectrum_row", "spectrum_bin"),
                                        dask.array.concatenate(spectrum, axis=0), dict(SPECTRUM_ATTRS))}  # type: ignore[no-untyped-call]

    def _piece_data(self, session_id: str, station: str, k: int, bins: int) -> dict[str, npt.NDArray[Any]]:
        """A piece's audio and rows (:func:`piece_data`); while ``audio.zarr`` is written the last
        two read are kept: a chunk overlapping the pieces k and k + 1 is followed by one
        overlapping k + 1 (a piece is 20 s of audio and ~180 rows: 3 chunks of 64)."""
        ident = (session_id, station, k, bins)
        with _PIECES_LOCK:
            got = self._pieces.get(ident) if self._pieces is not None else None
        if got is not None:
            return got
        key = self._path(SESSIONS, session_id, recording.chunk_key(station, k, "npz"))
        raw = self._do(f"reading piece {k} of {station} in session {session_id}", lambda: self.fs.cat(key))
        got = piece_data(recording.read_sidecar(raw), bins)
        with _PIECES_LOCK:
            if self._pieces is None:
                return got
            self._pieces[ident] = got
            while len(self._pieces) > 2:
                del self._pieces[next(iter(self._pieces))]
        return got

    def _lazy_frames(self, session_id: str, stations: list[str], runs: dict[str, tuple[int, int, int]],
                     live: bool) -> dict[str, xr.Variable]:
        """The ``frame_*`` variables of a recording session as dask arrays, one chunk per station
        (``runs``: station -> sidecars and chunks of its run, frames in it); a station's chunks of
        all eight variables come from one read of its sidecars per computation."""
        import dask.array
        import dask.base
        from dask.delayed import delayed

        f_max = max(r[2] for r in runs.values())
        blocks: dict[str, list[Any]] = {name: [] for name in model.FRAME_DTYPES}
        for st in stations:
            if st not in runs:  # an audio station: padding
                for name, dtype in model.FRAME_DTYPES.items():
                    blocks[name].append(dask.array.full(  # type: ignore[no-untyped-call]
                        (1, f_max), model.FRAME_FILL[name], dtype=dtype))
                continue
            cars, n, _ = runs[st]
            token = dask.base.tokenize(self.url, session_id, st, cars, n, live, f_max)
            rows = delayed(self._frame_rows, pure=True)(session_id, st, cars, n, live, f_max,
                                                       dask_key_name=f"frames-{st}-{token}")
            for name, dtype in model.FRAME_DTYPES.items():
                blocks[name].append(dask.array.from_delayed(  # type: ignore[no-untyped-call]
                    rows[name], (1, f_max), dtype=dtype, name=f"{name}-{st}-{token}"))
        return {name: xr.Variable(("station", "frame"), dask.array.concatenate(b, axis=0),  # type: ignore[no-untyped-call]
                                  dict(model.FRAME_ATTRS.get(name, {}))) for name, b in blocks.items()}

    def _frame_rows(self, session_id: str, station: str, sidecars: int, chunks: int, live: bool,
                    f_max: int) -> dict[str, npt.NDArray[Any]]:
        """One station's row (1, ``f_max``) of each ``frame_*`` variable, from its sidecars
        0 .. ``sidecars`` - 1 as :func:`sdrlab.recording.assemble` reads them."""
        def run() -> Capture | None:
            keys = [self._path(SESSIONS, session_id, recording.chunk_key(station, i, "npz")) for i in range(sidecars)]
            raw = self.fs.cat(keys) if keys else {}
            if isinstance(raw, bytes):
                raw = {keys[0]: raw}
            cars = [recording.read_sidecar(raw.pop(key)) for key in keys]
            return recording.assemble(station, cars, chunks, recording=live)

        cap = self._do(f"reading the frame records of {station} in session {session_id}", run)
        cols = model.frame_columns(cap) if cap is not None else {}
        out = {}
        for name, dtype in model.FRAME_DTYPES.items():
            row = np.full((1, f_max), model.FRAME_FILL[name], dtype)
            values = cols.get(name)
            if values is not None:
                row[0, :values.size] = values
            out[name] = row
        return out

    def _open_recording(self, session_id: str, summary: dict[str, Any]) -> xr.Dataset:
        shell = self._recording_shell(session_id, summary)
        recording.release_heap()  # the sidecars and captures it was built from, back to the system
        # the small variables are in memory already: only the IQ goes through zarr (references
        # to the chunk objects), never the frame records (tens of MB for an hour)
        if "frame_seq" not in shell:  # audio stations only: no IQ
            return shell
        iq_only = xr.Dataset({"n_samples": shell["n_samples"].reset_coords(drop=True).variable}).assign_coords(
            station=shell["station"].values, kind=("station", shell["kind"].values))
        refs, _aux = self._stream_refs(session_id, iq_only, int(summary["chunk_samples"]), inline=1 << 62)
        iq = self._open_packed(session_id, refs=refs)["iq"].variable
        iq.attrs = dict(model.IQ_ATTRS)
        out: xr.Dataset = shell.assign(iq=iq)
        return out

    def summary(self, session_id: str) -> dict[str, Any]:
        check_session_id(session_id)
        return self._do(f"reading session {session_id}", lambda: self._read_record(session_id))

    def _read_record(self, session_id: str) -> dict[str, Any]:
        try:
            raw = self.fs.cat(self._commit_key(session_id))
        except FileNotFoundError:
            raise StorageError(f"no committed session {session_id!r} in {self.where}") from None
        try:
            out: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise StorageError(f"the commit record of {session_id} in {self.where} is unreadable "
                               "(run `sdrlab store fsck`)") from None
        return out

    def _session_dirs(self) -> list[str]:
        """Session ids that have objects (S3 servers may keep empty directory entries)."""
        base = self._path(SESSIONS)
        if not self.fs.exists(base):
            return []
        n = len(base) + 1
        return sorted({k[n:].split("/", 1)[0] for k in self._keys(base) if k.startswith(base + "/")})

    def _marker_infos(self) -> dict[str, str]:
        """Committed session id -> a tag that changes when its record does (ETag on S3, size and
        mtime locally), from one LIST of the commit records.  An S3 store whose bucket does not
        exist is an error naming the bucket, not an empty store."""
        base = self._path(COMMITS)
        try:
            infos = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            infos = []
        if not infos and (missing := self._no_bucket()) is not None:
            raise missing
        out = {}
        for info in infos:
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if name.endswith(".json") and info.get("type") != "directory":
                out[name[: -len(".json")]] = str(info.get("ETag") or f"{info.get('size')}:{info.get('mtime')}")
        return out

    def _markers(self) -> list[str]:
        """Ids of the committed sessions, sorted."""
        return sorted(self._marker_infos())

    def _records(self, session_ids: list[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """The commit records of many sessions, fetched concurrently (fsspec's batched ``cat``);
        None for an unreadable one, nothing for one deleted meanwhile."""
        keys = [self._commit_key(s) for s in session_ids]
        found = self.fs.cat(keys, on_error="return") if keys else {}
        for sid, key in zip(session_ids, keys):
            raw = found.get(key)
            if isinstance(raw, FileNotFoundError):
                continue  # deleted since the LIST
            if isinstance(raw, BaseException):
                raise raw  # the store failed, not the record: _do names it
            try:
                record = json.loads(raw) if isinstance(raw, bytes) else None
            except ValueError:
                record = None
            yield sid, record if isinstance(record, dict) else None

    def _listing_cache(self) -> dict[str, Any]:
        try:
            cached = json.loads(self.fs.cat(self._path(LISTING_CACHE)))
        except (FileNotFoundError, ValueError):
            return {}
        rows = cached.get("rows") if isinstance(cached, dict) and cached.get("version") == LISTING_CACHE_VERSION else None
        return rows if isinstance(rows, dict) else {}

    def sessions(self) -> pd.DataFrame:
        """Committed sessions (newest last) with their summary: start, frequency, stations, status.

        One LIST of the commit records decides what is committed; the rows come from a cache
        (``<root>/.cache/sessions.json``) for records whose tag it holds, and only new or changed
        records are read.  Reading a thousand small records costs ~13 s on SeaweedFS even
        concurrently; a cache entry whose record changed, a lost or damaged cache, or a second
        writer of it only means more records to read, never a wrong row."""
        def run() -> pd.DataFrame:
            tags = self._marker_infos()
            cached = self._listing_cache() if tags else {}
            rows: dict[str, Any] = {sid: row for sid, row in cached.items()
                                    if isinstance(row, dict) and tags.get(sid) == row.get("tag")}
            for sid, s in self._records(sorted(set(tags) - set(rows))):
                if s is None:
                    log.warning("session %s has an unreadable commit record; not listed (see fsck)", sid)
                    continue
                rows[sid] = {
                    "tag": tags[sid],
                    "start_time": s.get("start_time"),
                    "center_frequency_hz": s.get("center_frequency_hz"),
                    "duration_s": s.get("duration_s"),
                    "stations": len(s.get("stations", [])),
                    "failed": len(s.get("failed", [])),
                    "status": s.get("status"),
                    # a finished session's record says; a recording one has its attrs
                    **(s.get("campaign") or _campaign_of(s.get("attrs") or {}) or {}),
                }
            if rows.keys() != cached.keys() or any(rows[k] is not cached[k] for k in rows):
                self._write_listing_cache(rows)
            table = pd.DataFrame([{"session_id": sid, **{k: v for k, v in rows[sid].items() if k != "tag"}}
                                  for sid in sorted(rows)], columns=LISTING_COLUMNS)
            table["start_time"] = [_utc(t) for t in table["start_time"]]
            return table.set_index("session_id")

        return self._do("listing sessions", run)

    def _write_listing_cache(self, rows: dict[str, Any]) -> None:
        """Best effort: a store that refuses it (read-only credentials) still lists."""
        try:
            self._put_atomic(self._path(LISTING_CACHE),
                             json.dumps({"version": LISTING_CACHE_VERSION, "rows": rows}).encode())
        except (OSError, PermissionError) as exc:
            log.info("listing cache of %s not written: %s", self.where, _reason(exc))

    def captures(self, session_id: str) -> pd.DataFrame:
        """One row per station of a session: status, samples, rate, UTC start, position, metrics."""
        s = self.summary(session_id)
        df = pd.DataFrame(s["captures"] or {"station": []}).set_index("station")
        for sid, st in s.get("station_status", {}).items():
            if sid not in df.index:
                df.loc[sid, "status"] = st.get("status")
        return df

    def delete(self, session_id: str) -> int:
        """Remove a session: its marker first (it stops listing), then every object under its
        prefix.  Returns the number of objects removed."""
        check_session_id(session_id)

        def run() -> int:
            prefix = self._path(SESSIONS, session_id)
            marker = self._commit_key(session_id)
            has_marker = bool(self.fs.exists(marker))
            objects = self._keys(prefix)
            if not has_marker and not objects:
                raise StorageError(f"no session {session_id!r} in {self.where}")
            if has_marker:
                self.fs.rm(marker)  # it stops listing before any data goes
            if objects:
                self.fs.rm(prefix, recursive=True)
            if self._keys(prefix):
                raise StorageError(f"session {session_id} only partly deleted from {self.where}")
            return len(objects) + int(has_marker)

        return self._do(f"deleting session {session_id}", run)

    def objects(self, session_id: str) -> list[str]:
        """Every object key of a session, its commit record included (relative to the root)."""
        check_session_id(session_id)

        def run() -> list[str]:
            prefix = self._path(SESSIONS, session_id)
            found = self._keys(prefix)
            if self.fs.exists(self._commit_key(session_id)):
                found.append(self._commit_key(session_id))
            n = len(self.root) + 1
            return sorted(p[n:] if p.startswith(self.root) else p for p in found)

        return self._do(f"listing objects of {session_id}", run)

    def fsck(self, *, remove: bool = False, min_age_s: float = FSCK_MIN_AGE_S) -> list[str]:
        """Session prefixes without a commit record (interrupted writes), commit records without
        data, unreadable commit records, and damaged sessions (objects their record lists are
        missing).  With ``remove`` the first three are removed -- but a prefix written to in the
        last ``min_age_s`` seconds is left alone (a write may still be in progress); a damaged
        session is only reported (what is left of it may still be worth reading)."""
        def run() -> list[str]:
            committed = set(self._markers())
            dirs = set(self._session_dirs())
            leftovers = sorted(dirs - committed)
            orphans = sorted(committed - dirs)
            if orphans:  # a session just begun records: its record comes before its first chunk
                young = {sid for sid, rec in self._records(orphans) if rec is not None
                         and rec.get("layout") == LAYOUT_RECORDING
                         and time.time() - self._newest(self._commit_key(sid)) < min_age_s}
                orphans = [d for d in orphans if d not in young]
            unreadable = []
            damaged = []
            for d in sorted(committed & dirs):
                try:
                    if self.missing_objects(d):
                        damaged.append(d)
                except StorageError:
                    unreadable.append(d)
            if remove:
                now = time.time()
                for d in leftovers:
                    if now - self._newest(self._path(SESSIONS, d)) < min_age_s:
                        log.warning("fsck: %s was written to in the last %.0f s; left alone", d, min_age_s)
                        continue
                    self.fs.rm(self._path(SESSIONS, d), recursive=True)
                for d in orphans + unreadable:
                    self.fs.rm(self._commit_key(d))
            if damaged:  # never removed: what is left of them may still be worth reading
                log.warning("fsck: damaged session(s) (objects missing): %s", ", ".join(damaged))
            return leftovers + orphans + unreadable + damaged

        return self._do("checking the store", run)

    def _newest(self, prefix: str) -> float:
        """Unix time of the newest object under a prefix."""
        newest = 0.0
        for info in self.fs.find(prefix, detail=True).values():
            t = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(t, "timestamp"):
                t = t.timestamp()
            if isinstance(t, (int, float)):
                newest = max(newest, float(t))
        return newest

    def health(self) -> dict[str, Any]:
        """Write, read back and delete a probe object; report the latency of each step (ms)."""
        key = self._path(".health", uuid.uuid4().hex)
        payload = uuid.uuid4().bytes * 64
        out: dict[str, Any] = {"store": self.where}

        def run() -> dict[str, Any]:
            if self.protocol == "s3":
                self._ensure_bucket()
            t = time.perf_counter()
            self.fs.pipe(key, payload)
            out["write_ms"] = 1e3 * (time.perf_counter() - t)
            t = time.perf_counter()
            back = self.fs.cat(key)
            out["read_ms"] = 1e3 * (time.perf_counter() - t)
            t = time.perf_counter()
            self.fs.rm(key)
            out["delete_ms"] = 1e3 * (time.perf_counter() - t)
            if back != payload:
                raise StorageError(f"health probe in {self.where} read back different bytes")
            out["ok"] = True
            return out

        return self._do("health check", run)


def _without_frames(cap: Capture) -> Capture:
    """A capture with its segments' frame records let go (what :func:`recording_shell` needs
    with ``frames=False``)."""
    def bare(seg: Any) -> Any:
        return replace(seg, frame_seq=np.zeros(0, np.uint32), frame_flags=np.zeros(0, np.uint8),
                       frame_rssi_dbm=np.zeros(0, np.float32), frame_last_gps=np.zeros(0, np.uint8),
                       frame_gps_ns=np.zeros(0, np.int64), frame_received=np.zeros(0, bool), frame_start=None)

    return replace(cap, segments=[bare(s) for s in cap.segments])


def recording_shell(captures: list[Any], record: dict[str, Any], *, frames: bool = True) -> xr.Dataset:
    """A streamed session's Dataset without its IQ, from its captures as assembled from the
    stream and its commit record (positions from the catalogue at the start, statuses once
    finalised; while recording every station with data is ``recording``, after a stop that was
    never finalised ``partial``)."""
    from .stations import Station

    live = record.get("layout") == LAYOUT_RECORDING
    positions = {sid: Station(sid, str(p.get("name", sid)), "", 0, float(p["latitude"]), float(p["longitude"]),
                              float(p.get("altitude", 0.0)))
                 for sid, p in (record.get("positions") or {}).items()}
    known = record.get("station_status") or {}
    statuses = []
    for sid in record.get("stations", []):
        if sid in known:
            st = known[sid]
            statuses.append(model.StationStatus(sid, st.get("status", "partial"), st.get("error_class"), st.get("message")))
        elif any(c.station == sid for c in captures):
            statuses.append(model.StationStatus(sid, "recording" if live else "partial"))
        else:
            statuses.append(model.StationStatus(sid, "recording" if live else "failed",
                                                None if live else "NoData", None if live else "nothing stored"))
    ds = model.build_dataset(captures, positions, statuses=statuses, session_id=str(record["session_id"]),
                             attrs=record.get("attrs") or {}, with_iq=False, frames=frames)
    ds.attrs["recording_state"] = "recording" if live else "final"
    ds.attrs["chunk_samples"] = int(record["chunk_samples"])
    return ds


def _utc(text: object) -> pd.Timestamp:
    """A stored ``...Z`` time as a tz-naive UTC Timestamp (like the Dataset's datetime64); NaT
    for none (a session recording before its first chunk: pandas gives that row NaN)."""
    return pd.Timestamp(text.rstrip("Z")) if isinstance(text, str) and text else pd.NaT


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


# ---- local shortcuts (a file:// store at a directory) ---------------------------------------
def session_path(root: str | Path, session_id: str) -> Path:
    return Path(root) / SESSIONS / session_id


def write_session(ds: xr.Dataset, root: str | Path) -> Path:
    """Write and commit a session in the local store at ``root``; returns its directory."""
    store = Store(f"file://{Path(root).expanduser().resolve()}")
    store.write(ds)
    return session_path(store.root, ds.attrs["session_id"])


def open_session(path: str | Path) -> xr.Dataset:
    """Open a committed local session by its directory (``<root>/sessions/<id>``)."""
    p = Path(path).resolve()
    return Store(f"file://{p.parent.parent}").open(p.name)
