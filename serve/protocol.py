"""The wire protocol of `diffagent serve`: versioned, length-prefixed binary frames over TCP.

Every message, in both directions, is one frame: a fixed 24-byte little-endian header followed by
`payload_len` bytes of payload. Tensors travel as raw little-endian float32, row-major, so a client
in any language can build a request with a struct and a memcpy. serve/PROTOCOL.md is the normative
description (byte layouts, error codes, a hex dump); this module is its Python implementation and
must stay in step with it.

Nothing here ever unpickles or evaluates data: a frame is parsed with `struct` and `numpy.frombuffer`.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

import numpy as np

MAGIC = b"DFSV"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIII")
HEADER_SIZE = HEADER.size  # 24
DEFAULT_PORT = 8870
# A payload limit keeps a hostile or broken header from making the server allocate gigabytes.
# 16 MiB holds a batch of 1024 observations of 4,000 floats, far above any MuJoCo task.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
ERROR_CODE = struct.Struct("<I")
MAX_ERROR_MESSAGE = 1024
# The one tensor encoding on the wire, as a dtype object: numpy parses a dtype string on every call that takes one.
WIRE_FLOAT32 = np.dtype("<f4")


class MsgType(IntEnum):
    """Message types; a reply is its request's type with the high bit set (ERROR excepted)."""

    ACT = 0x01
    PING = 0x02
    METADATA = 0x03
    AUTH = 0x04
    ACT_REPLY = 0x81
    PONG = 0x82
    METADATA_REPLY = 0x83
    AUTH_OK = 0x84
    ERROR = 0xFF


class DType(IntEnum):
    """Element type of a tensor payload. Only float32 exists in version 1."""

    NONE = 0
    FLOAT32 = 1


class Flags(IntFlag):
    """ACT request flags."""

    NONE = 0
    DETERMINISTIC = 0x01  # zero chain noise: the deterministic action
    NOISE = 0x02  # the payload carries the chain noise after the observations


# A plain int: `~` of an IntFlag keeps only the defined bits, which would hide unknown ones.
KNOWN_FLAGS = int(Flags.DETERMINISTIC | Flags.NOISE)


class ErrorCode(IntEnum):
    """Codes carried by ERROR replies. Codes marked fatal are followed by the server closing the connection."""

    BAD_MAGIC = 1  # fatal: the bytes are not a diffagent frame
    UNSUPPORTED_VERSION = 2  # fatal: the header's version is not one this server speaks
    FRAME_TOO_LARGE = 3  # fatal: payload_len exceeds the server's limit
    UNKNOWN_TYPE = 4
    BAD_DTYPE = 5
    BAD_SHAPE = 6
    NON_FINITE = 7
    BAD_FLAGS = 8
    UNAUTHORIZED = 9  # fatal: a token is required and was missing or wrong
    BUSY = 10  # fatal: every connection slot is taken, and this connection got none or gave its up
    INTERNAL = 11
    TIMED_OUT = 12  # fatal: no AUTH within the AUTH deadline, or no request within the idle timeout


FATAL_ERRORS = frozenset({ErrorCode.BAD_MAGIC, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.FRAME_TOO_LARGE,
                          ErrorCode.UNAUTHORIZED, ErrorCode.BUSY, ErrorCode.TIMED_OUT})


class ProtocolError(Exception):
    """A frame that breaks the protocol; `code` says how, and the message says what to do."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    @property
    def fatal(self) -> bool:
        """Whether the connection cannot go on after this error (framing can no longer be trusted)."""
        return self.code in FATAL_ERRORS


class Header(NamedTuple):
    """A parsed frame header (a NamedTuple: it is built once per frame on the hot path)."""

    type: int
    dtype: int
    flags: int
    request_id: int
    rows: int
    cols: int
    payload_len: int


def pack_header(msg_type: int, request_id: int, payload_len: int, *, dtype: int = DType.NONE, flags: int = 0,
                rows: int = 0, cols: int = 0) -> bytes:
    """The 24 header bytes of a frame."""
    return HEADER.pack(MAGIC, VERSION, msg_type, dtype, flags, request_id, rows, cols, payload_len)


def parse_header(data: bytes | bytearray, offset: int = 0, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Header:
    """Parse and check the framing fields of the 24-byte header at `data[offset:]`.

    Raises ProtocolError with a fatal code when the stream cannot be trusted to continue (magic,
    version, size); the remaining fields are checked per message type by the receiver.
    """
    magic, version, msg_type, dtype, flags, request_id, rows, cols, payload_len = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_MAGIC, f"not a diffagent serve frame (magic {bytes(magic)!r}, "
                                                 f"expected {MAGIC!r}); see serve/PROTOCOL.md")
    if version != VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version} is not supported; this "
                                                           f"server speaks version {VERSION}: upgrade the client "
                                                           "or the server so they match")
    if payload_len > max_payload:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"payload of {payload_len} bytes exceeds the limit of "
                                                       f"{max_payload} bytes; split the batch or raise the "
                                                       "server's --max-payload")
    return Header(msg_type, dtype, flags, request_id, rows, cols, payload_len)


def error_frame(request_id: int, code: ErrorCode, message: str) -> bytes:
    """A complete ERROR frame: u32 code then the UTF-8 message (truncated to 1024 bytes)."""
    text = message.encode("utf-8")[:MAX_ERROR_MESSAGE]
    return pack_header(MsgType.ERROR, request_id, ERROR_CODE.size + len(text)) + ERROR_CODE.pack(code) + text


def parse_error(payload: bytes | memoryview) -> tuple[int, str]:
    """(code, message) of an ERROR payload."""
    if len(payload) < ERROR_CODE.size:
        return int(ErrorCode.INTERNAL), "malformed ERROR frame from the server"
    (code,) = ERROR_CODE.unpack_from(payload)
    return code, bytes(payload[ERROR_CODE.size:]).decode("utf-8", errors="replace")


def float32_payload(array: np.ndarray) -> np.ndarray:
    """`array` as contiguous little-endian float32, the only tensor encoding on the wire."""
    return np.ascontiguousarray(array, dtype=WIRE_FLOAT32)


__all__ = ["MAGIC", "VERSION", "HEADER", "HEADER_SIZE", "DEFAULT_PORT", "DEFAULT_MAX_PAYLOAD", "KNOWN_FLAGS",
           "WIRE_FLOAT32", "MsgType", "DType", "Flags", "ErrorCode", "FATAL_ERRORS", "ProtocolError", "Header",
           "pack_header", "parse_header", "error_frame", "parse_error", "float32_payload"]
