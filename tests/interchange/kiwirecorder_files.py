"""Write files as ``kiwirecorder.py -m iq --kiwi-wav --station=NAME`` does, byte for byte.

Follows jks-prv/kiwiclient ``kiwirecorder.py`` (``_write_wav_header``, ``_write_samples``,
``_update_wav_header``, ``_get_output_filename``, ``_on_gnss_position``), written independently of
:mod:`sdrlab.interchange.kiwiwav` so that the tests check the reader against the format, not
against itself:

* first frame: a 36-byte header for a 100-byte file (RIFF size 92), PCM ``fmt`` of 16 bytes,
  2 channels, rate and byte rate from ``int(sample_rate)``, block_align 4, 16 bit, no ``data``
  chunk;
* each frame: ``struct.pack('<4sIBBII', b'kiwi', 10, last_gps_solution, 0, gpssec, gpsnsec)``,
  ``struct.pack('<4sI', b'data', 2048)``, the int16 I, Q samples (``tofile``, little-endian),
  then the header rewritten for the new file size;
* name ``'%s_%d%s_%s.wav' % (strftime('%Y%m%dT%H%M%SZ'), int(freq_khz * 1000), '_' + station, 'iq')``;
* ``gnss_pos/<station>.txt``: ``"d.%s = struct('coord', [%f,%f], 'host', '%s', 'port', %d);\\n"``
  with '-' in the variable name replaced by '_'.

The truth of a synthetic recording (:class:`Truth`): sample 0 of the file is at GPS time
``t0_gps_ns``; frame ``k`` starts at ``t0 + round(512 k 1e9 / fs)``.  A GPS fix arrives every
``fix_interval_s`` seconds; ``last_gps_solution`` counts whole seconds since the last fix, so it
drops to 0 on the first frame after each fix (a fresh stamp).  Stale stamps (later frames of a
fix interval) carry ``stale_error_ns_per_s`` of extra error per second since the fix, as a Kiwi
extrapolating its clock would, so a fit that used them would be measurably off.  The first frame
carries a zero GPS block, as the server sends it.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrlab import timing

WEEK_NS = timing.WEEK_S * timing.NS


def _write_wav_header(fp, filesize: int, samplerate: int, num_channels: int, is_kiwi_wav: bool) -> None:
    # kiwirecorder.py _write_wav_header, verbatim in substance
    fp.write(struct.pack("<4sI4s", b"RIFF", filesize - 8, b"WAVE"))
    bits_per_sample = 16
    byte_rate = samplerate * num_channels * bits_per_sample // 8
    block_align = num_channels * bits_per_sample // 8
    fp.write(struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, num_channels, int(samplerate + 0.5), byte_rate,
                         block_align, bits_per_sample))
    if not is_kiwi_wav:
        fp.write(struct.pack("<4sI", b"data", filesize - 12 - 8 - 16 - 8))


class KiwiRecorderFile:
    """kiwirecorder's write sequence for one output file."""

    def __init__(self, directory: Path, station: str | None, freq_khz: float, sample_rate: float,
                 start_utc: np.datetime64) -> None:
        self.output_sample_rate = sample_rate
        unix_s = int(np.datetime64(start_utc, "s").astype(np.int64))
        start_ts = time.gmtime(unix_s)
        ts = time.strftime("%Y%m%dT%H%M%SZ", start_ts)
        st = "" if station is None else "_" + station
        self.path = Path(directory) / ("%s_%d%s_%s.wav" % (ts, int(freq_khz * 1000), st, "iq"))
        with open(self.path, "wb") as fp:
            _write_wav_header(fp, 100, int(self.output_sample_rate), 2, True)

    def write_frame(self, samples: np.ndarray, gps: dict[str, int]) -> None:
        s = np.zeros(2 * len(samples), dtype=np.int16)
        s[0::2] = samples[:, 0]
        s[1::2] = samples[:, 1]
        with open(self.path, "ab") as fp:
            fp.write(struct.pack("<4sIBBII", b"kiwi", 10, gps["last_gps_solution"], 0, gps["gpssec"], gps["gpsnsec"]))
            sample_size = s.itemsize * len(s)
            fp.write(struct.pack("<4sI", b"data", sample_size))
            s.astype("<i2").tofile(fp)
        self._update_wav_header()

    def _update_wav_header(self) -> None:
        with open(self.path, "r+b") as fp:
            fp.seek(0, os.SEEK_END)
            filesize = fp.tell()
            fp.seek(0, os.SEEK_SET)
            if filesize >= 8:
                _write_wav_header(fp, filesize, int(self.output_sample_rate), 2, True)


def write_gnss_pos(pos_dir: Path, station: str, lat: float, lon: float, host: str = "kiwi.example.org",
                   port: int = 8073) -> Path:
    pos_dir = Path(pos_dir)
    pos_dir.mkdir(parents=True, exist_ok=True)
    path = pos_dir / (station + ".txt")
    with open(path, "w") as f:
        var = station.replace("-", "_")
        f.write("d.%s = struct('coord', [%f,%f], 'host', '%s', 'port', %d);\n" % (var, lat, lon, host, port))
    return path


@dataclass
class Truth:
    station: str
    fs: float
    t0_gps_ns: int
    n_frames: int
    samples: np.ndarray  # (n, 2) int16
    frame_gps_ns: np.ndarray  # what the file's stamps mean (ns since the GPS epoch); -1 = zero block
    last_gps: np.ndarray
    path: Path

    @property
    def start_utc(self) -> np.datetime64:
        return timing.gps_ns_to_utc(self.t0_gps_ns)


def record(
    directory: Path,
    station: str | None,
    *,
    fs: float = 12001.15,
    t0_gps_ns: int,
    n_frames: int = 200,
    freq_khz: float = 7000.0,
    fix_interval_s: float = 2.0,
    fix_phase_s: float = 0.3,
    stale_error_ns_per_s: float = 40_000.0,
    no_gps: bool = False,
    seed: int = 0,
    host_latency_s: float = 0.4,
) -> Truth:
    """One synthetic kiwirecorder file (see the module docstring for the truth)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(-32768, 32768, size=(n_frames * 512, 2), dtype=np.int16)
    k = np.arange(n_frames)
    exact = t0_gps_ns + np.rint(k * 512 * 1e9 / fs).astype(np.int64)
    # GPS fixes at t_fix0 + m * interval; seconds since the latest fix at each frame
    t_rel = (exact - t0_gps_ns) / 1e9 + fix_phase_s
    since = np.mod(t_rel, fix_interval_s)
    last = np.minimum(np.floor(since), 252).astype(np.uint8)
    fresh = np.r_[False, np.diff(last.astype(np.int64)) < 0]  # first frame after each fix
    stamps = exact + np.where(fresh, 0, np.rint(since * stale_error_ns_per_s).astype(np.int64))
    if no_gps:
        last[:] = 255
    frame_gps = stamps.copy()
    start = timing.gps_ns_to_utc(t0_gps_ns) + np.timedelta64(int(host_latency_s * 1e9), "ns")
    f = KiwiRecorderFile(directory, station, freq_khz, fs, start)
    for i in range(n_frames):
        if i == 0 or no_gps:
            gps = {"last_gps_solution": int(last[i]) if no_gps else 0, "gpssec": 0, "gpsnsec": 0}
            frame_gps[i] = -1
        else:
            tow = int(stamps[i]) % WEEK_NS
            gps = {"last_gps_solution": int(last[i]), "gpssec": tow // timing.NS, "gpsnsec": tow % timing.NS}
        f.write_frame(samples[i * 512 : (i + 1) * 512], gps)
    last_written = last.copy()
    if not no_gps:
        last_written[0] = 0
    return Truth(station or "kiwi_noname", fs, t0_gps_ns, n_frames, samples, frame_gps, last_written, f.path)
