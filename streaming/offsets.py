"""Per entity, the last Kafka offset applied to its online values, for each partition.

The streaming consumer keeps, next to an entity's window and lifetime values (same hash tag, so
the same Redis Cluster slot), an *offsets value*: the topic it reads and, per partition, the last
offset of an event applied to this entity. An event at ``(partition, offset)`` is applied to an
entity only when ``offset`` is above the stored one, and the new values are written with the new
offsets in one atomic step that first checks the offsets value is still the one read (a
compare-and-set, :data:`CAS_SCRIPT`). Events of one partition arrive in offset order, so:

- a replay after a crash (``kill -9`` included) skips exactly the events already applied;
- two consumers that briefly both hold a partition (a rebalance, a stalled process) cannot both
  apply one event: the second write finds the offsets changed, re-reads and skips it.

Bytes (little-endian): ``version:u8 topic_len:u16 topic count:u16 (partition:u32 offset:i64)*``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

VERSION = 1
_HEAD = struct.Struct("<BH")
_COUNT = struct.Struct("<H")
_ITEM = struct.Struct("<Iq")

# KEYS[1] offsets, KEYS[2..] values; ARGV[1] expected offsets ('' = absent), ARGV[2] new
# offsets, ARGV[3] its expiry (ms since epoch, -1 never), then per value key: value, expiry
# (-1 never; 0: delete the key). Returns 1 when written, 0 when the offsets changed meanwhile.
CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
local function put(key, value, expire)
  if expire == '0' then redis.call('DEL', key)
  elseif expire == '-1' then redis.call('SET', key, value)
  else redis.call('SET', key, value, 'PXAT', expire) end
end
put(KEYS[1], ARGV[2], ARGV[3])
for i = 2, #KEYS do put(KEYS[i], ARGV[2 * i], ARGV[2 * i + 1]) end
return 1
"""


# The same for a group of entities in one call (single node: one script call per entity cost
# more than the merge). ARGV[1] = keys per entity n (2 or 3), then per entity the 2n + 1
# arguments above; returns 1 or 0 per entity. Groups stay small (GROUP) so one call never
# blocks Redis for long: online reads wait behind it.
CAS_MANY_SCRIPT = """
local n = tonumber(ARGV[1])
local out, a = {}, 2
local function put(key, value, expire)
  if expire == '0' then redis.call('DEL', key)
  elseif expire == '-1' then redis.call('SET', key, value)
  else redis.call('SET', key, value, 'PXAT', expire) end
end
for k = 1, #KEYS, n do
  local current = redis.call('GET', KEYS[k])
  if (current or '') == ARGV[a] then
    put(KEYS[k], ARGV[a + 1], ARGV[a + 2])
    for j = 1, n - 1 do put(KEYS[k + j], ARGV[a + 1 + 2 * j], ARGV[a + 2 + 2 * j]) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 1 + 2 * n
end
return out
"""
GROUP = 200  # entities per CAS_MANY_SCRIPT call (~1-2 ms of Redis time)


def _prefix(topic: str) -> bytes:
    """version, topic length and topic: how every offsets value of ``topic`` starts."""
    name = topic.encode()
    return _HEAD.pack(VERSION, len(name)) + name


def encode(topic: str, offsets: Mapping[int, int]) -> bytes:
    parts = [_prefix(topic), _COUNT.pack(len(offsets))]
    parts += [_ITEM.pack(p, offsets[p]) for p in sorted(offsets)]
    return b"".join(parts)


def decode(blob: bytes | None, topic: str) -> dict[int, int]:
    """Partition -> last applied offset; empty when absent or written for another topic (the
    view's ``kafka_topic`` changed: its events are new to these values)."""
    if not blob:
        return {}
    version, n = _HEAD.unpack_from(blob, 0)
    if version != VERSION:
        raise ValueError(f"stream offsets value has version {version}, expected {VERSION}")
    pos = _HEAD.size
    if blob[pos:pos + n].decode() != topic:
        return {}
    pos += n
    (count,) = _COUNT.unpack_from(blob, pos)
    pos += _COUNT.size
    out = {}
    for _ in range(count):
        p, o = _ITEM.unpack_from(blob, pos)
        out[p] = o
        pos += _ITEM.size
    return out


_ITEMS = "<u4,<i8"  # numpy dtype of packed (partition, offset) items, 12 bytes each


def decode_many(blobs: Sequence[bytes | None], topic: str) -> tuple[Any, Any, Any]:
    """:func:`decode` of many values at once: (value index, partition, offset) of every stored
    item as numpy arrays, in value order then partition order."""
    import numpy as np

    prefix = _prefix(topic)
    start = len(prefix) + _COUNT.size
    owners, counts, parts = [], [], []
    for i, blob in enumerate(blobs):
        if not blob:
            continue
        if not blob.startswith(prefix):
            if blob[0] != VERSION:
                raise ValueError(f"stream offsets value has version {blob[0]}, expected "
                                 f"{VERSION}")
            continue  # written for another topic: its events are new to these values
        (count,) = _COUNT.unpack_from(blob, len(prefix))
        if len(blob) != start + count * _ITEM.size:
            raise ValueError(f"stream offsets value of {len(blob)} bytes holds {count} items")
        owners.append(i)
        counts.append(count)
        parts.append(blob[start:])
    items = np.frombuffer(b"".join(parts), np.dtype(_ITEMS))
    index = np.repeat(np.asarray(owners, np.int64), np.asarray(counts, np.int64))
    return index, items["f0"].astype(np.int64), items["f1"].astype(np.int64)


def encode_many(topic: str, values: int, index: Any, partitions: Any,
                offsets: Any) -> list[bytes]:
    """:func:`encode` of ``values`` values at once from (value index, partition, offset) items
    sorted by value index then partition; a value without items holds none."""
    import numpy as np

    prefix = _prefix(topic)
    items = np.zeros(len(index), np.dtype(_ITEMS))
    items["f0"], items["f1"] = partitions, offsets
    raw = items.tobytes()
    counts = np.bincount(np.asarray(index, np.int64), minlength=values)
    ends = np.cumsum(counts) * _ITEM.size
    out = []
    pack = _COUNT.pack
    for count, end in zip(counts.tolist(), ends.tolist(), strict=True):
        out.append(b"".join((prefix, pack(count), raw[end - count * _ITEM.size:end])))
    return out
