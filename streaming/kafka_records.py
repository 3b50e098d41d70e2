"""Faster record decoding for kafka-python 3.0.x consumers (the version in ``uv.lock``).

kafka-python turns every fetched record into a ``ConsumerRecord`` through a chain of generators,
a ``DefaultRecord`` object, seven generic varint calls, two deserializer calls and a header-size
sum: 16-19 µs per record on this machine, the largest single cost of ``tessera stream`` (60% of
a run's time, on the polling thread, holding the GIL). :func:`fast_records` gives one consumer
a ``PartitionRecords`` whose message-format-v2 loop reads the same fields from the same
(decompressed) buffer in one tight loop and yields the same ``ConsumerRecord`` tuples.

Everything else is the library's own code path, kept as it is: batches of message format v0/v1,
consumers with key or value deserializers, and the transactional bookkeeping of
``read_committed`` (aborted and control batches are skipped exactly as the library does). The
batch CRC is still checked when ``check_crcs`` is on (v2 records carry no CRC of their own). A
record whose fields do not add up to its length raises ``CorruptRecordError`` like the library.
Nothing is changed when the internals differ from the ones this was written against.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("tessera.stream")

_NEEDED = ("_unpack_records", "_consume_aborted_transactions_up_to", "_contains_abort_marker",
           "_is_batch_aborted", "drain")
_BATCH = ("_maybe_uncompress", "_buffer", "_pos", "_num_records", "base_offset", "first_timestamp", "max_timestamp",
          "timestamp_type", "LOG_APPEND_TIME", "is_control_batch", "next_offset")


def fast_records(consumer: Any) -> bool:
    """Give ``consumer`` (this instance only) the fast v2 record loop; whether it applied."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    base: Any = getattr(fetcher, "PartitionRecords", None)
    try:
        from kafka.consumer.fetcher import ConsumerRecord
        from kafka.errors import CorruptRecordError
        from kafka.record.default_records import DefaultRecordBatch
        from kafka.record.util import decode_varint
    except ImportError:
        base = None
    if base is None or not all(hasattr(base, n) for n in _NEEDED) or not all(
            hasattr(DefaultRecordBatch, n) for n in _BATCH):
        log.debug("kafka-python fetcher internals differ; fast record decoding not applied")
        return False
    fetcher.PartitionRecords = _fast_class(base, ConsumerRecord, CorruptRecordError,
                                           decode_varint)
    return True


def _fast_class(base: Any, record_type: Any, corrupt: type[Exception],
                varint: Any) -> type:
    class FastPartitionRecords(base):  # type: ignore[valid-type,misc]
        def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any,
                            value_deserializer: Any) -> Iterator[Any]:
            if key_deserializer is not None or value_deserializer is not None:
                yield from base._unpack_records(self, tp, records, key_deserializer,
                                                value_deserializer)
                return
            try:
                yield from self._fast(tp, records)
            except StopIteration:  # as the library: never let it end the caller's loop
                log.exception("StopIteration raised unpacking messageset")
                raise RuntimeError("StopIteration raised unpacking messageset") from None

        def _fast(self, tp: Any, records: Any) -> Iterator[Any]:
            from kafka.consumer.fetcher import IsolationLevel

            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise corrupt(f"Record batch for partition {self.topic_partition} at "
                                  f"offset {batch.base_offset} failed crc check")
                if batch.magic != 2:  # the library's loop, one record at a time
                    yield from self._legacy(tp, batch)
                    batch = records.next_batch()
                    continue
                self.leader_epoch = batch.leader_epoch
                if (self.isolation_level == IsolationLevel.READ_COMMITTED
                        and batch.has_producer_id()):
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                yield from self._records_v2(tp, batch)
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

        def _legacy(self, tp: Any, batch: Any) -> Iterator[Any]:
            for record in batch:
                if self.check_crcs and not record.validate_crc():
                    raise corrupt(f"Record for partition {self.topic_partition} at offset "
                                  f"{record.offset} failed crc check")
                key, value = record.key, record.value
                self.records_read += 1
                self.bytes_read += record.size_in_bytes
                self.next_fetch_offset = record.offset + 1
                yield record_type(tp.topic, tp.partition, self.leader_epoch, record.offset,
                                  record.timestamp, record.timestamp_type, key, value,
                                  record.headers, record.checksum,
                                  len(key) if key is not None else -1,
                                  len(value) if value is not None else -1, -1)

        def _records_v2(self, tp: Any, batch: Any) -> Iterator[Any]:
            batch._maybe_uncompress()  # decompresses the buffer once (compressed batches)
            buf = batch._buffer
            pos = batch._pos
            end = len(buf)
            topic, partition, epoch = tp.topic, tp.partition, self.leader_epoch
            base_offset, first_ts = batch.base_offset, batch.first_timestamp
            ts_type = batch.timestamp_type
            append_ts = batch.max_timestamp if ts_type == batch.LOG_APPEND_TIME else None
            out = []
            read = 0
            try:
                for _ in range(batch._num_records):
                    b = buf[pos]  # length: one or two bytes for any record under 8 KiB
                    if b < 0x80:
                        length, pos = (b >> 1) ^ -(b & 1), pos + 1
                    else:
                        length, pos = varint(buf, pos)
                    start = pos
                    pos += 1  # attributes (unused, as in the library)
                    b = buf[pos]
                    if b < 0x80:
                        ts_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
                    else:
                        ts_delta, pos = varint(buf, pos)
                    b = buf[pos]
                    if b < 0x80:
                        offset_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
                    else:
                        offset_delta, pos = varint(buf, pos)
                    b = buf[pos]
                    if b < 0x80:
                        key_len, pos = (b >> 1) ^ -(b & 1), pos + 1
                    else:
                        key_len, pos = varint(buf, pos)
                    if key_len >= 0:
                        key = bytes(buf[pos:pos + key_len])
                        pos += key_len
                    else:
                        key = None
                    value_len, pos = varint(buf, pos)
                    if value_len >= 0:
                        value = bytes(buf[pos:pos + value_len])
                        pos += value_len
                    else:
                        value = None
                    b = buf[pos]
                    if b == 0:  # no headers: the common case
                        headers: list[Any] = []
                        header_size = -1
                        pos += 1
                    else:
                        headers, header_size, pos = _headers(buf, pos, varint, corrupt)
                    if pos - start != length or pos > end:
                        raise corrupt(f"Invalid record size: expected to read {length} bytes "
                                      f"in record payload, but instead read {pos - start}")
                    offset = base_offset + offset_delta
                    out.append(record_type(
                        topic, partition, epoch, offset,
                        append_ts if append_ts is not None else first_ts + ts_delta, ts_type,
                        key, value, headers, None, -1 if key is None else key_len,
                        -1 if value is None else value_len, header_size))
                    read += length
            except (ValueError, IndexError) as e:
                raise corrupt(f"Found invalid record structure: {e!r}") from None
            if pos != end:
                raise corrupt(f"{end - pos} unconsumed bytes after all records consumed")
            self.records_read += len(out)
            self.bytes_read += read
            # The whole batch is parsed before any record is handed out; the fetch position
            # still moves one record at a time: poll() may take only part of a batch.
            for record in out:
                self.next_fetch_offset = record.offset + 1
                yield record

    return FastPartitionRecords


def _headers(buf: Any, pos: int, varint: Any,
             corrupt: type[Exception]) -> tuple[list[Any], int, int]:
    count, pos = varint(buf, pos)
    if count < 0:
        raise corrupt(f"Found invalid number of record headers {count}")
    headers = []
    size = 0
    for _ in range(count):
        key_len, pos = varint(buf, pos)
        if key_len < 0:
            raise corrupt(f"Invalid negative header key size {key_len}")
        key = buf[pos:pos + key_len].decode("utf-8")
        pos += key_len
        value_len, pos = varint(buf, pos)
        if value_len >= 0:
            value: bytes | None = bytes(buf[pos:pos + value_len])
            pos += value_len
            size += value_len
        else:
            value = None
        size += len(key.encode("utf-8"))
        headers.append((key, value))
    return headers, size, pos


__all__ = ["fast_records"]
