"""Read TensorFlow checkpoints with NumPy alone: TF1 V1 files and TF2 V2 bundles.

Both formats are built on TensorFlow's LevelDB-style table (core/lib/io/table*.cc,
format.cc, block.cc): data blocks of prefix-compressed ``key -> value`` entries, each
followed by a compression byte and a masked CRC32C, an index block of block handles,
and a 48-byte footer ending in a magic number.

- V1 (``tf.compat.v1.train.Saver`` with ``SaverDef.V1``; the public slim archives): one
  table. Its ``""`` entry is a ``SavedTensorSliceMeta`` (each variable's name, shape, dtype
  and slices); every other entry holds one slice's values in a ``TensorProto``'s repeated
  value field (saved_tensor_slice.proto).
- V2 (``tf.compat.v1.train.Saver`` V2, ``tf.train.Checkpoint``): ``PREFIX.index`` is a table
  of ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C) by name; the
  raw little-endian values lie in ``PREFIX.data-NNNNN-of-MMMMM`` (tensor_bundle.proto).

Protobuf messages are decoded here by hand, for the few fields these formats use. Every
block and every V2 tensor is checked against its CRC32C, as TensorFlow's reader does.
TensorFlow's checkpoint writers store table blocks uncompressed (``kNoCompression`` in
tensor_slice_writer.cc and tensor_bundle.cc), so a Snappy-compressed block is refused.
Sizes read from a file are checked against the file's size before anything is allocated,
and every loop walks a bounded buffer: a truncated, corrupt or hostile file gives a
one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterator, Sequence

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file
    or the variable."""


class _Corrupt(Exception):  # noqa: N818 (internal; never escapes this module)
    """A format violation inside one file; the caller turns it into a CheckpointError naming it."""


# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as TensorFlow's tables and bundles checksum their bytes.
#
# The register update is linear over GF(2), so a buffer's CRC is computed from pieces: every
# 1 KiB lane of every buffer at once in NumPy (one 4-byte step per row of a transposed
# matrix), then lanes chained into 4 KiB chunks (vectorised) and chunks into buffers (a
# Python loop), each link the linear map "so many zero bytes" applied by byte tables.
# Buffers are left-padded with zeros to whole chunks (zeros leave a zero register unchanged);
# the initial register 0xFFFFFFFF is folded into a buffer's first four bytes.

_POLY = 0x82F63B78
_LANE = 1024
_CHUNK = 4096  # a multiple of _LANE
_GROUP_BYTES = 1 << 25  # bytes per vectorised pass: bounds the scratch memory
_MASK_DELTA = 0xA282EAD8


@functools.cache
def _crc_tables() -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Byte table; 16-bit tables of one 4-byte step; byte tables of the lane and chunk shifts."""
    byte = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        byte = (byte >> 1) ^ np.where(byte & 1, np.uint32(_POLY), np.uint32(0))
    step = [byte]  # step[k][i]: byte i's step followed by k zero bytes
    for _ in range(3):
        step.append((step[-1] >> 8) ^ byte[step[-1] & 0xFF])
    half = np.arange(1 << 16, dtype=np.uint32)
    # After ``crc ^= word``, four byte steps map the register linearly: one table per 16-bit half.
    low_table = step[3][half & 0xFF] ^ step[2][half >> 8]
    high_table = step[1][half & 0xFF] ^ step[0][half >> 8]

    def shift(nbytes: int) -> np.ndarray:  # tables[k][v]: the register v << 8k after nbytes zeros
        basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
        for _ in range(nbytes // 4):
            basis = low_table[basis & 0xFFFF] ^ high_table[basis >> 16]
        bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
        return np.stack([np.bitwise_xor.reduce(np.where(bits, basis[8 * k : 8 * k + 8], 0), axis=1)
                         for k in range(4)]).astype(np.uint32)

    return byte.tolist(), low_table, high_table, shift(_LANE), shift(_CHUNK).tolist()


def crc32c(buffers: Sequence) -> list[int]:
    """The CRC32C of each buffer (bytes, memoryview or contiguous array)."""
    byte_table = _crc_tables()[0]
    out = [0] * len(buffers)
    group, chunks = [], 0
    for i, buffer in enumerate(buffers):
        view = memoryview(buffer).cast("B")
        if len(view) < 4:
            crc = 0xFFFFFFFF
            for b in view:
                crc = byte_table[(crc ^ b) & 0xFF] ^ (crc >> 8)
            out[i] = crc ^ 0xFFFFFFFF
            continue
        group.append((i, view))
        chunks += -(-len(view) // _CHUNK)
        if chunks * _CHUNK >= _GROUP_BYTES:
            _crc_group(group, chunks, out)
            group, chunks = [], 0
    if group:
        _crc_group(group, chunks, out)
    return out


def _crc_group(group: list[tuple[int, memoryview]], chunks: int, out: list[int]) -> None:
    _, low_table, high_table, lane_shift, chunk_shift = _crc_tables()
    padded = np.zeros(chunks * _CHUNK, np.uint8)
    spans, row = [], 0
    for i, view in group:
        count = -(-len(view) // _CHUNK)
        start = (row + count) * _CHUNK - len(view)
        padded[start : start + len(view)] = np.frombuffer(view, np.uint8)
        padded[start : start + 4] ^= 0xFF
        spans.append((i, row, count))
        row += count
    lanes = chunks * (_CHUNK // _LANE)
    rows = padded.view("<u4").reshape(lanes, _LANE // 4)
    words = np.empty((_LANE // 4, lanes), np.uint32)  # one row per step: the transpose
    for start in range(0, lanes, 1024):  # in blocks that stay in cache: 4-10x faster than at once
        words[:, start : start + 1024] = rows[start : start + 1024].T
    del padded, rows
    crc, low, high = (np.zeros(lanes, np.uint32) for _ in range(3))
    halves = crc.view(np.uint16)  # little-endian: the low and high 16 bits of each lane
    for word in words:  # in place: a fresh array per step would cost as much as the step
        np.bitwise_xor(crc, word, out=crc)
        np.take(low_table, halves[0::2], out=low)
        np.take(high_table, halves[1::2], out=high)
        np.bitwise_xor(low, high, out=crc)
    per_chunk = crc.reshape(chunks, _CHUNK // _LANE)
    chained = per_chunk[:, 0].copy()
    for j in range(1, per_chunk.shape[1]):
        parts = chained.view(np.uint8).reshape(chunks, 4)
        chained = (lane_shift[0][parts[:, 0]] ^ lane_shift[1][parts[:, 1]] ^ lane_shift[2][parts[:, 2]]
                   ^ lane_shift[3][parts[:, 3]] ^ per_chunk[:, j])
    chunk_crcs = chained.tolist()
    s0, s1, s2, s3 = chunk_shift
    for i, row, count in spans:
        crc = 0
        for chunk in chunk_crcs[row : row + count]:
            crc = s0[crc & 0xFF] ^ s1[(crc >> 8) & 0xFF] ^ s2[(crc >> 16) & 0xFF] ^ s3[crc >> 24] ^ chunk
        out[i] = crc ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """The CRC a LevelDB/TensorFlow masked CRC stands for."""
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: only what the checkpoint messages need.


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint longer than 10 bytes")


def _fields(buf: memoryview) -> dict[int, list]:
    """Each field number's values in order: ints (varint, fixed) or memoryviews (length-delimited)."""
    fields: dict[int, list] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Corrupt("truncated protobuf field")
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Corrupt(f"protobuf field of {size} bytes past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Corrupt(f"unsupported protobuf wire type {wire}")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def _int(fields: dict[int, list], number: int, default: int = 0, signed: bool = True) -> int:
    value = fields.get(number, [default])[-1]
    if not isinstance(value, int):
        raise _Corrupt(f"protobuf field {number} is not a number")
    return value - (1 << 64) if signed and value >= 1 << 63 else value


def _bytes(fields: dict[int, list], number: int) -> memoryview:
    value = fields.get(number, [memoryview(b"")])[-1]
    if isinstance(value, int):
        raise _Corrupt(f"protobuf field {number} is not a message or string")
    return value


def _messages(fields: dict[int, list], number: int) -> list[dict[int, list]]:
    values = fields.get(number, [])
    if any(isinstance(value, int) for value in values):
        raise _Corrupt(f"protobuf field {number} is not a message")
    return [_fields(value) for value in values]


def _shape(fields: dict[int, list]) -> tuple[int, ...]:
    """A TensorShapeProto's dimensions."""
    if _int(fields, 3):
        raise _Corrupt("a shape of unknown rank")
    shape = tuple(_int(dim, 1) for dim in _messages(fields, 2))
    if any(size < 0 for size in shape):
        raise _Corrupt(f"a shape with an unknown dimension {shape}")
    return shape


Extents = tuple[tuple[int, int], ...]  # (start, length) per dimension as stored; length -1: all of it


def _slice(fields: dict[int, list], shape: tuple[int, ...]) -> Extents:
    """A TensorSliceProto's extents, checked against the tensor's shape."""
    extents = _messages(fields, 1)
    if not extents:
        return tuple((0, -1) for _ in shape)
    if len(extents) != len(shape):
        raise _Corrupt(f"a slice of rank {len(extents)} of a tensor of shape {shape}")
    out = tuple((_int(extent, 1), _int(extent, 2, -1)) for extent in extents)
    for (start, length), size in zip(out, shape, strict=True):
        if length != -1 and (start < 0 or length < 0 or start + length > size):
            raise _Corrupt(f"a slice {start}:{start + length} outside a dimension of size {size}")
    return out


def _region(extents: Extents, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lengths = _lengths(extents, shape)
    return tuple(slice(start if n != -1 else 0, (start if n != -1 else 0) + length)
                 for (start, n), length in zip(extents, lengths, strict=True))


def _lengths(extents: Extents, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size if n == -1 else n for (_, n), size in zip(extents, shape, strict=True))


def _count(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


# TensorFlow's DataType enum (types.proto) -> little-endian NumPy dtype.
_DTYPES = {
    1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 8: "<c8", 9: "<i8", 10: "?",
    14: "bfloat16", 17: "<u2", 18: "<c16", 19: "<f2", 22: "<u4", 23: "<u8",
}  # fmt: skip
_NAMES = {20: "resource", 21: "variant"}


def _dtype(code: int, name: str) -> np.dtype:
    if code == 7:
        return np.dtype(object)  # strings, as bytes objects
    if code not in _DTYPES:
        kind = _NAMES.get(code, f"of DataType {code}")
        raise _Corrupt(f"variable {name} is a {kind} tensor; this reader reads numbers and strings")
    if code == 14:
        import ml_dtypes  # Keras's own dependency: NumPy has no bfloat16

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])


# ---------------------------------------------------------------------------------------------
# Tables (core/lib/io/format.cc, block.cc, table.cc).

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48  # two block handles padded to 40 bytes, then the 8-byte magic number
_TRAILER = 5  # compression type, masked CRC32C


def _handle(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos, end)
    size, pos = _varint(buf, pos, end)
    return offset, size, pos


def _block(data: memoryview, handle: tuple[int, int], limit: int) -> memoryview:
    """A block with its trailer, its bounds checked (not yet its checksum)."""
    offset, size = handle
    if offset + size + _TRAILER > limit:
        raise _Corrupt(f"a block of {size} bytes at offset {offset} runs past the end ({limit} bytes)")
    return data[offset : offset + size + _TRAILER]


def _checked(blocks: list[memoryview], offsets: list[int]) -> list[memoryview]:
    """The blocks' contents, after their checksums and compression bytes are checked."""
    crcs = crc32c([block[:-4] for block in blocks])
    for block, offset, crc in zip(blocks, offsets, crcs, strict=True):
        if unmask(int.from_bytes(block[-4:], "little")) != crc:
            raise _Corrupt(f"checksum mismatch in the block at offset {offset}")
        if block[-5] == 1:
            raise _Corrupt(
                f"the block at offset {offset} is Snappy-compressed; TensorFlow's checkpoint writers"
                " store blocks uncompressed, so this file was not written by a TensorFlow Saver"
            )
        if block[-5] != 0:
            raise _Corrupt(f"unknown compression type {block[-5]} in the block at offset {offset}")
    return [block[:-_TRAILER] for block in blocks]


def _entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """A block's ``key -> value`` entries (keys are prefix-compressed against the previous one)."""
    size = len(block)
    if size < 4:
        raise _Corrupt("a block too short for its restart count")
    restarts = int.from_bytes(block[size - 4 :], "little")
    if restarts > (size - 4) // 4:
        raise _Corrupt(f"a block of {size} bytes claiming {restarts} restart points")
    pos, end, key = 0, size - 4 - 4 * restarts, b""
    while pos < end:
        shared, pos = _varint(block, pos, end)
        unshared, pos = _varint(block, pos, end)
        length, pos = _varint(block, pos, end)
        if shared > len(key) or pos + unshared + length > end:
            raise _Corrupt("a block entry past the end of its block")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def _index(data: memoryview) -> tuple[list[tuple[int, int]], int]:
    """The data-block handles of a table held in memory, and where its data blocks end."""
    size = len(data)
    if size < _FOOTER:
        raise _Corrupt(f"{size} bytes, too short for a table footer ({_FOOTER} bytes)")
    footer = data[size - _FOOTER :]
    if int.from_bytes(footer[40:], "little") != _MAGIC:
        raise _Corrupt("no table magic number at its end (not a TensorFlow checkpoint, or cut short)")
    _, _, pos = _handle(footer, 0, 40)  # the metaindex block: TensorFlow writes it empty
    offset, length, _ = _handle(footer, pos, 40)
    limit = size - _FOOTER
    (index,) = _checked([_block(data, (offset, length), limit)], [offset])
    handles = []
    for _, value in _entries(index):
        block_offset, block_size, _ = _handle(value, 0, len(value))
        handles.append((block_offset, block_size))
    return handles, limit


def _table(data: memoryview, first_block_only: bool = False) -> Iterator[tuple[bytes, memoryview]]:
    """Every entry of a table held in memory; all block checksums are checked before the first."""
    handles, limit = _index(data)
    handles = handles[:1] if first_block_only else handles
    blocks = _checked([_block(data, handle, limit) for handle in handles], [h[0] for h in handles])
    seen = set()
    for block in blocks:
        for key, value in _entries(block):
            if key in seen:
                raise _Corrupt(f"the key {key[:60]!r} appears twice")
            seen.add(key)
            yield key, value


def _load(path: str) -> memoryview:
    """A whole file's bytes (read-only: the arrays returned are copies)."""
    with open(path, "rb") as f:
        return memoryview(f.read())


# ---------------------------------------------------------------------------------------------
# V1: one table of SavedTensorSlices.

# TensorProto's repeated value field for each dtype code (saved_tensor_slice_util.h), and its
# encoding: "f" fixed-width little-endian, "v" varint.
_V1_FIELDS = {
    1: (5, "f"), 2: (6, "f"), 8: (9, "f"), 18: (12, "f"),
    3: (7, "v"), 4: (7, "v"), 5: (7, "v"), 6: (7, "v"), 9: (10, "v"), 10: (11, "v"), 19: (13, "v"),
    14: (13, "v"),
}  # fmt: skip


def _varints(buf: bytes) -> np.ndarray:
    """Packed varints as uint64, vectorised."""
    b = np.frombuffer(buf, np.uint8)
    if not (b >= 0x80).any():
        return b.astype(np.uint64)
    ends = np.flatnonzero(b < 0x80)
    if ends.size == 0 or ends[-1] != b.size - 1:
        raise _Corrupt("truncated packed varints")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise _Corrupt("varint longer than 10 bytes")
    shifts = (np.arange(b.size) - np.repeat(starts, lengths)).astype(np.uint64) * np.uint64(7)
    return np.bitwise_or.reduceat((b & 0x7F).astype(np.uint64) << shifts, starts)


def _v1_values(tensor: dict[int, list], code: int, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    """A slice's ``count`` values from its TensorProto."""
    if code == 7:  # string_val
        strings = [bytes(v) for v in tensor.get(8, []) if not isinstance(v, int)]
        if len(strings) != count:
            raise _Corrupt(f"variable {name}: a slice of {count} strings holds {len(strings)}")
        return np.array(strings + [None], object)[:-1]  # never a 2-D array of characters
    if code not in _V1_FIELDS:
        raise _Corrupt(f"variable {name} has dtype {dtype}, which V1 checkpoints do not store")
    number, encoding = _V1_FIELDS[code]
    values = tensor.get(number, [])
    if encoding == "f":
        stored = np.dtype(_DTYPES[code])
        if len(values) == 1 and not isinstance(values[0], int):
            raw = values[0]  # packed, as TensorFlow writes them: no copy
        else:
            unit = stored.itemsize // (2 if stored.kind == "c" else 1)
            raw = b"".join(v.to_bytes(unit, "little") if isinstance(v, int) else bytes(v) for v in values)
        if len(raw) != count * stored.itemsize:
            raise _Corrupt(f"variable {name}: a slice of {count} values holds {len(raw)} bytes")
        return np.frombuffer(raw, stored)
    parts = [_varints(bytes(v)) if not isinstance(v, int) else np.array([v], np.uint64) for v in values]
    numbers = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if numbers.size != count:
        raise _Corrupt(f"variable {name}: a slice of {count} values holds {numbers.size}")
    if code in (19, 14):  # half_val: the 16-bit patterns
        return numbers.astype(np.uint16).view(dtype)
    if code == 10:
        return numbers != 0
    return numbers.view(np.int64).astype(dtype)


def _v1_meta(value: memoryview) -> list[tuple[str, tuple[int, ...], int, list[Extents]]]:
    meta = _messages(_fields(value), 1)
    if not meta:
        raise _Corrupt("its first entry holds no SavedTensorSliceMeta")
    out = []
    for tensor in _messages(meta[0], 1):
        name = bytes(_bytes(tensor, 1)).decode("utf-8", "replace")
        shape = _shape(_fields(_bytes(tensor, 2)))
        out.append((name, shape, _int(tensor, 3), [_slice(s, shape) for s in _messages(tensor, 4)]))
    return out


def _read_v1(path: str, shapes_only: bool = False) -> dict:
    data = _load(path)
    entries = _table(data, first_block_only=shapes_only)
    key, value = next(entries, (None, None))
    if key != b"":
        raise _Corrupt("no SavedTensorSliceMeta entry (the empty key)")
    meta = _v1_meta(value)
    if shapes_only:
        return {name: shape for name, shape, _, _ in meta}
    budget = len(data)  # a V1 value takes at least one byte
    arrays, pending = {}, {}
    for name, shape, code, slices in meta:
        budget -= _count(shape)
        if budget < 0:
            raise _Corrupt(f"variable {name} of shape {shape} does not fit in a file of {len(data)} bytes")
        if name in arrays:
            raise _Corrupt(f"variable {name} appears twice in the metadata")
        arrays[name] = np.empty(shape, _dtype(code, name))
        pending[name] = (code, set(slices))
    for key, value in entries:
        saved = _messages(_fields(value), 2)
        if not saved:
            raise _Corrupt(f"the entry {key[:60]!r} holds no SavedSlice")
        name = bytes(_bytes(saved[0], 1)).decode("utf-8", "replace")
        if name not in arrays:
            raise _Corrupt(f"a slice of {name}, which the metadata does not list")
        array = arrays[name]
        code, missing = pending[name]
        extents = _slice(_fields(_bytes(saved[0], 2)), array.shape)
        if extents not in missing:
            raise _Corrupt(f"variable {name}: a slice the metadata does not list, or listed twice")
        missing.discard(extents)
        counts = _lengths(extents, array.shape)
        values = _v1_values(_fields(_bytes(saved[0], 3)), code, array.dtype, _count(counts), name)
        array[_region(extents, array.shape)] = values.reshape(counts)
    for name, (_, missing) in pending.items():
        if missing:
            raise _Corrupt(f"variable {name}: {len(missing)} slice(s) listed in the metadata are missing")
    for name, shape, _, slices in meta:
        _check_cover(name, shape, slices)
    return arrays


def _check_cover(name: str, shape: tuple[int, ...], slices: list[Extents]) -> None:
    """The slices tile the tensor: each element exactly once."""
    if len(slices) == 1 and _lengths(slices[0], shape) == shape:
        return
    if sum(_count(_lengths(extents, shape)) for extents in slices) != _count(shape):
        raise _Corrupt(f"the slices of variable {name} do not tile its shape {shape}")
    cover = np.zeros(shape, np.uint8)
    for extents in slices:
        cover[_region(extents, shape)] += 1
    if not (cover == 1).all():
        raise _Corrupt(f"the slices of variable {name} do not tile its shape {shape}")


# ---------------------------------------------------------------------------------------------
# V2: an index table of BundleEntryProto and raw data shards.


def _ordered_string(value: bytes) -> bytes:
    return re.sub(rb"[\x00\xff]", lambda m: m.group() + (b"\xff" if m.group() == b"\x00" else b"\x00"), value)


def _ordered_unsigned(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(raw)]) + raw


def _ordered_signed(value: int) -> bytes:
    """OrderedCode's WriteSignedNumIncreasing: the length in leading one bits, then two's complement."""
    length = ((~value if value < 0 else value).bit_length() + 7) // 7  # value bits + sign + header
    bits = 8 * length
    header = ((1 << length) - 1) << (bits - length)
    return ((value & ((1 << bits) - 1)) ^ header).to_bytes(length, "big")


def slice_key(name: str, extents: Extents) -> bytes:
    """A V2 slice entry's key: OrderedCode of (0, name, rank, start and length per dimension),
    as tensor_slice_util's EncodeTensorNameSlice writes it."""
    key = b"\x00" + _ordered_string(name.encode()) + b"\x00\x01" + _ordered_unsigned(len(extents))
    for start, length in extents:
        key += _ordered_signed(start) + _ordered_signed(length)
    return key


def _entry(value: memoryview, name: str) -> dict:
    fields = _fields(value)
    code = _int(fields, 1)
    shape = _shape(_fields(_bytes(fields, 2)))
    return {
        "name": name, "code": code, "shape": shape, "shard": _int(fields, 3), "offset": _int(fields, 4),
        "size": _int(fields, 5), "crc": _int(fields, 6, signed=False),
        "slices": [_slice(s, shape) for s in _messages(fields, 7)],
    }  # fmt: skip


def _v2_index(prefix: str) -> tuple[int, list[dict], dict[bytes, memoryview]]:
    """The shard count, the variables' entries and the slice entries' values."""
    data = _load(f"{prefix}.index")
    header, entries, slices = None, [], {}
    for key, value in _table(data):
        if key == b"":
            header = _fields(value)
        elif key[:1] == b"\x00":
            slices[key] = value
        else:
            entries.append(_entry(value, key.decode("utf-8", "replace")))
    if header is None:
        raise _Corrupt("no BundleHeaderProto entry (the empty key)")
    if _int(header, 2):
        raise _Corrupt("a big-endian bundle; this reader reads little-endian ones")
    consumer = _int(_fields(_bytes(header, 3)), 2)
    if consumer > 1:
        raise _Corrupt(f"written for readers of version {consumer} and newer (TensorFlow's bundle format 1)")
    shards = _int(header, 1)
    if not 1 <= shards <= 99999:
        raise _Corrupt(f"a header claiming {shards} data shards")
    return shards, entries, slices


def _shard_name(prefix: str, shard: int, shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{shards:05d}"


def _read_v2(prefix: str, shapes_only: bool = False) -> dict:
    try:
        shards, entries, slice_values = _v2_index(prefix)
    except (_Corrupt, OSError) as error:
        raise CheckpointError(
            f"cannot read checkpoint index {prefix}.index (truncated or corrupt?): {error}"
        ) from None
    if shapes_only:
        return {entry["name"]: entry["shape"] for entry in entries}
    # Every stored piece: a whole variable, or one slice of a partitioned one.
    pieces, arrays = [], {}
    for entry in entries:
        if not entry["slices"]:
            pieces.append((entry, entry["name"], None))
            continue
        for extents in entry["slices"]:
            key = slice_key(entry["name"], extents)
            if key not in slice_values:
                raise CheckpointError(
                    f"cannot read checkpoint index {prefix}.index (truncated or corrupt?): "
                    f"variable {entry['name']}: a slice's entry is missing"
                )
            counts = _lengths(extents, entry["shape"])
            piece = _entry(slice_values[key], entry["name"])
            if piece["shape"] != counts or piece["code"] != entry["code"]:
                raise CheckpointError(
                    f"cannot read checkpoint index {prefix}.index (truncated or corrupt?): "
                    f"variable {entry['name']}: a slice's shape or dtype differs from its extents"
                )
            pieces.append((piece, entry["name"], extents))
    by_shard: dict[int, list] = {}
    for piece, name, extents in pieces:
        if not 0 <= piece["shard"] < shards:
            raise CheckpointError(
                f"cannot read checkpoint index {prefix}.index (truncated or corrupt?): "
                f"variable {name} in shard {piece['shard']} of {shards}"
            )
        by_shard.setdefault(piece["shard"], []).append((piece, name, extents))
    values = {}
    stored = 0
    for shard, group in sorted(by_shard.items()):
        path = _shard_name(prefix, shard, shards)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint data file {path} is missing (beside {prefix}.index)")
        try:
            values.update(_read_shard(path, group))
        except (_Corrupt, OSError) as error:
            raise CheckpointError(
                f"cannot read checkpoint data file {path} (truncated or corrupt?): {error}"
            ) from None
        stored += os.path.getsize(path)
    for entry in entries:
        name = entry["name"]
        if not entry["slices"]:
            arrays[name] = values[name, None]
            continue
        try:
            _check_cover(name, entry["shape"], entry["slices"])
        except _Corrupt as error:
            raise CheckpointError(f"cannot read checkpoint index {prefix}.index: {error}") from None
        array = np.empty(entry["shape"], values[name, entry["slices"][0]].dtype)
        for extents in entry["slices"]:
            array[_region(extents, entry["shape"])] = values[name, extents]
        arrays[name] = array
    return arrays


def _raw(array: np.ndarray) -> memoryview:
    """A contiguous array's bytes (bfloat16 arrays have no buffer format of their own)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _read_shard(path: str, group: list) -> dict:
    """The pieces stored in one data shard, each checked against its size and CRC32C."""
    out, views, expected = {}, [], []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if sum(max(0, piece["size"]) for piece, _, _ in group) > size:
            raise _Corrupt(f"the index places more bytes in it than its {size}")
        for piece, name, extents in group:
            offset, length, shape = piece["offset"], piece["size"], piece["shape"]
            if offset < 0 or length < 0 or offset + length > size:
                raise _Corrupt(f"variable {name} needs bytes {offset}..{offset + length} of {size}")
            f.seek(offset)
            if piece["code"] == 7:
                array, raw = _strings(f.read(length), shape, name)
            else:
                dtype = _dtype(piece["code"], name)
                if length != _count(shape) * dtype.itemsize:
                    raise _Corrupt(f"variable {name}: {length} bytes for shape {shape} of {dtype}")
                array = np.empty(shape, dtype)
                raw = _raw(array)
                if f.readinto(raw) != length:
                    raise _Corrupt(f"variable {name}: the file ended while read")
            out[name, extents] = array
            views.append(raw)
            expected.append(unmask(piece["crc"]))
    for (name, _), crc, want in zip(out, crc32c(views), expected, strict=True):
        if crc != want:
            raise _Corrupt(f"checksum mismatch for variable {name}")
    return out


def _strings(raw: bytes, shape: tuple[int, ...], name: str) -> tuple[np.ndarray, bytes]:
    """A string tensor (varint lengths, a masked CRC32C of them, then the bytes; tensor_bundle.cc)
    and the bytes its entry's CRC32C covers: the lengths as 4-byte integers, not varints."""
    count, pos, end = _count(shape), 0, len(raw)
    if count > end:
        raise _Corrupt(f"variable {name}: {count} strings in {end} bytes")
    view = memoryview(raw)
    lengths = []
    for _ in range(count):
        length, pos = _varint(view, pos, end)
        lengths.append(length)
    if pos + 4 + sum(lengths) != end:
        raise _Corrupt(f"variable {name}: string lengths that do not add up to its {end} bytes")
    fixed = b"".join(n.to_bytes(4 if n < 1 << 32 else 8, "little") for n in lengths)
    if unmask(int.from_bytes(view[pos : pos + 4], "little")) != crc32c([fixed])[0]:
        raise _Corrupt(f"checksum mismatch for the string lengths of variable {name}")
    checked = fixed + raw[pos:]
    values, pos = np.empty(count, object), pos + 4
    for i, length in enumerate(lengths):
        values[i], pos = bytes(view[pos : pos + length]), pos + length
    return values.reshape(shape), checked


# ---------------------------------------------------------------------------------------------


def read(prefix: str) -> dict[str, np.ndarray]:
    """Every variable of the V2 bundle ``prefix.index`` + data shards, else of the V1 file ``prefix``."""
    return _dispatch(os.fspath(prefix), shapes_only=False)


def variable_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """Every variable's shape, from the metadata: V2's index file; V1's first block, no values decoded."""
    return _dispatch(os.fspath(prefix), shapes_only=True)


def _dispatch(prefix: str, shapes_only: bool) -> dict:
    if sys.byteorder != "little":  # the CRC's NumPy views take the register's bytes in that order
        raise CheckpointError("reading TF checkpoints without TensorFlow needs a little-endian machine")
    if os.path.isfile(f"{prefix}.index"):
        return _read_v2(prefix, shapes_only)
    try:
        return _read_v1(prefix, shapes_only)
    except (_Corrupt, OSError) as error:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {error}") from None
