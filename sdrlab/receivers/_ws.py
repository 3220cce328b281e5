"""A minimal RFC 6455 WebSocket client on ``asyncio.Protocol``, built for many slow binary streams.

Why not a general library: a KiwiSDR IQ stream is ~23 binary frames a second per receiver, and
sdrlab holds hundreds of them on one core, so the per-frame path must be a few attribute lookups.
This client does the HTTP upgrade (reporting redirects), parses server frames straight out of one
receive buffer and hands each message to a callback as a ``memoryview`` that is valid only during
the call (the consumer copies what it keeps), answers pings and closes.  Client frames are masked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Callable, cast

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 1 << 20
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class HandshakeError(Exception):
    """The upgrade did not return 101 (``status``) or returned a bad accept key."""

    def __init__(self, message: str, status: int = 0, location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.location = location


class WSProtocolError(Exception):
    """The server broke RFC 6455 (masked frame, oversized message, bad opcode...)."""


MessageHandler = Callable[[int, memoryview], None]
CloseHandler = Callable[[int | None, str, BaseException | None], None]


class WebSocketClient(asyncio.Protocol):
    """One client connection.  ``opened`` resolves when the upgrade succeeded (or raises
    :class:`HandshakeError`); then ``on_message(opcode, payload)`` is called per message and
    ``on_close(code, reason, exc)`` once at the end."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        on_message: MessageHandler,
        on_close: CloseHandler,
        *,
        user_agent: str = "sdrlab",
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._on_message = on_message
        self._on_close = on_close
        self._ua = user_agent
        self._key = base64.b64encode(os.urandom(16))
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._frag_op = 0
        self._frag = bytearray()
        self._closed = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._error: BaseException | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's TCP transport (uvloop's does not subclass asyncio.Transport)
        self._transport = cast(asyncio.Transport, transport)
        host = f"[{self._host}]" if ":" in self._host else self._host
        req = (
            f"GET {self._path} HTTP/1.1\r\n"
            f"Host: {host}:{self._port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"User-Agent: {self._ua}\r\n\r\n"
        )
        self._transport.write(req.encode("latin-1"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > 65536:
                    self._fail(HandshakeError("HTTP upgrade response too long"))
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            try:
                self._check_upgrade(head)
            except HandshakeError as exc:
                self._fail(exc)
                return
            self._upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        try:
            self._parse()
        except WSProtocolError as exc:
            self._error = exc
            self._send_frame(OP_CLOSE, _U16.pack(1002))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                HandshakeError(f"connection closed during the upgrade{f': {exc}' if exc else ''}")
            )
            self.opened.exception()  # mark retrieved
        if not self._closed:
            self._closed = True
            self._on_close(self._close_code, self._close_reason, self._error or exc)

    # ---- handshake -------------------------------------------------------------------------
    def _check_upgrade(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            raise HandshakeError(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status != 101:
            raise HandshakeError(
                f"HTTP {status} {parts[2] if len(parts) > 2 else ''}".strip(),
                status,
                headers.get("location"),
            )
        want = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise HandshakeError("bad Sec-WebSocket-Accept in the upgrade response", status)

    def _fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._error = exc
        self.abort()

    # ---- frames ----------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        mv = memoryview(buf)
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                hdr = 2
                if length == 126:
                    if n - pos < 4:
                        break
                    (length,) = _U16.unpack_from(buf, pos + 2)
                    hdr = 4
                elif length == 127:
                    if n - pos < 10:
                        break
                    (length,) = _U64.unpack_from(buf, pos + 2)
                    hdr = 10
                if b1 & 0x80:
                    raise WSProtocolError("server frames must not be masked")
                if length > MAX_MESSAGE:
                    raise WSProtocolError(f"frame of {length} bytes exceeds {MAX_MESSAGE}")
                end = pos + hdr + length
                if end > n:
                    break
                op = b0 & 0x0F
                fin = b0 & 0x80
                start = pos + hdr
                pos = end
                if op == OP_BINARY or op == OP_TEXT:
                    if fin:
                        self._on_message(op, mv[start:end])
                    else:
                        self._frag_op = op
                        self._frag[:] = mv[start:end]
                elif op == OP_CONT:
                    if not self._frag_op:
                        raise WSProtocolError("continuation frame without a start")
                    self._frag += mv[start:end]
                    if len(self._frag) > MAX_MESSAGE:
                        raise WSProtocolError("fragmented message too long")
                    if fin:
                        op, self._frag_op = self._frag_op, 0
                        data = bytes(self._frag)
                        self._frag.clear()
                        self._on_message(op, memoryview(data))
                elif op == OP_PING:
                    self._send_frame(OP_PONG, bytes(mv[start:end]))
                elif op == OP_PONG:
                    pass
                elif op == OP_CLOSE:
                    payload = bytes(mv[start:end])
                    if len(payload) >= 2:
                        self._close_code = _U16.unpack_from(payload, 0)[0]
                        self._close_reason = payload[2:].decode("utf-8", "replace")
                    else:
                        self._close_code = 1005
                    self._send_frame(OP_CLOSE, payload[:2])
                    if self._transport is not None:
                        self._transport.close()
                    pos = n
                    break
                else:
                    raise WSProtocolError(f"unknown opcode {op:#x}")
        finally:
            if pos:
                try:
                    mv.release()
                    del buf[:pos]
                except BufferError:
                    # a consumer kept a view (e.g. through an exception's traceback): leave the
                    # old buffer to it and carry on with a copy of the unparsed rest
                    self._buf = bytearray(buf[pos:])
            else:
                mv.release()

    def _send_frame(self, op: int, payload: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | op, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | op, 0x80 | 126)) + _U16.pack(n)
        else:
            head = bytes((0x80 | op, 0x80 | 127)) + _U64.pack(n)
        key = os.urandom(4)
        if n:
            k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
            masked = (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")
        else:
            masked = b""
        t.write(head + key + masked)

    # ---- API -------------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def close(self, code: int = 1001) -> None:
        """Send a close frame (1001 going away, as kiwiclient does) and close the transport."""
        self._send_frame(OP_CLOSE, _U16.pack(code))
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()
