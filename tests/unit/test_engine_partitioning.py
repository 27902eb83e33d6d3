"""Run placement must match Kafka's Java client byte for byte (``Utils.murmur2`` + default partitioner).

Reference vectors, verified against their sources:
  * Apache Kafka ``clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java`` (``testMurmur2``).
  * librdkafka ``src/rdmurmur2.c`` (``unittest_murmur2``, ``java_murmur2_results``: values it checks against
    the Java client's output, including unaligned slices and the empty key).
The partitioner is ``BuiltInPartitioner.partitionForKey``: ``Utils.toPositive(Utils.murmur2(key)) % n``, where
``toPositive(x) = x & 0x7fffffff`` (not ``abs``).
"""

from __future__ import annotations

import pytest

from orchestrator._engine.partitioning import murmur2, partition_for

KAFKA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

_UNALIGNED = b"PreAmbleWillBeRemoved,ThePrePartThatIs"
LIBRDKAFKA_JAVA_RESULTS = [  # (key, unsigned 32-bit pattern of the Java int)
    (b"kafka", 0xD067CF64),
    (b"giberish123456789", 0x8F552B0C),
    (b"1234", 0x9FC97B14),
    (b"234", 0xE7C009CA),
    (b"34", 0x873930DA),
    (b"4", 0x5A4B5CA1),
    (_UNALIGNED, 0x78424F1C),
    (_UNALIGNED[1:], 0x4A62B377),
    (_UNALIGNED[2:], 0xE0E4E09E),
    (_UNALIGNED[3:], 0x62B8B43F),
    (b"", 0x106E08D9),
]


def _signed(u32: int) -> int:
    return u32 - (1 << 32) if u32 & 0x80000000 else u32


@pytest.mark.parametrize(("key", "expected"), KAFKA_UTILS_TEST, ids=[k.decode() for k, _ in KAFKA_UTILS_TEST])
def test_murmur2_matches_kafka_utils_test_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), LIBRDKAFKA_JAVA_RESULTS)
def test_murmur2_matches_librdkafka_java_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == _signed(expected)


def test_murmur2_returns_a_signed_32_bit_int() -> None:
    for key, _ in KAFKA_UTILS_TEST + LIBRDKAFKA_JAVA_RESULTS:
        assert -(2**31) <= murmur2(key) < 2**31
    assert murmur2(b"21") < 0  # the Java value is negative: no unsigned leak


def test_empty_key_hashes_like_java() -> None:
    assert murmur2(b"") == 275646681


@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 6, 7, 12, 48, 1000])
@pytest.mark.parametrize(("key", "java_hash"), KAFKA_UTILS_TEST)
def test_partition_for_is_java_default_partitioner(key: bytes, java_hash: int, partitions: int) -> None:
    expected = (java_hash & 0x7FFFFFFF) % partitions  # Utils.toPositive(murmur2(key)) % numPartitions
    assert partition_for(key, partitions) == expected
    assert partition_for(key.decode(), partitions) == expected  # str keys are UTF-8 bytes


def test_partition_for_uses_to_positive_not_abs() -> None:
    # murmur2("21") is negative: toPositive and abs disagree over 3 partitions (0 vs 2).
    h = murmur2(b"21")
    assert (h & 0x7FFFFFFF) % 3 != abs(h) % 3
    assert partition_for("21", 3) == (h & 0x7FFFFFFF) % 3


def test_partition_for_str_is_utf8() -> None:
    key = "run-é-日本"
    assert partition_for(key, 7) == partition_for(key.encode("utf-8"), 7)


def test_partition_for_is_stable_and_in_range() -> None:
    placements = {partition_for(f"run-{i}", 12) for i in range(2000)}
    assert placements == set(range(12))  # every partition used, none outside
    assert [partition_for(f"run-{i}", 12) for i in range(50)] == [
        partition_for(f"run-{i}", 12) for i in range(50)
    ]


def test_high_bytes_are_unsigned() -> None:
    # Java masks every byte with 0xff; bytes >= 0x80 in any position (block and each tail length).
    for n in range(1, 9):
        data = bytes([0x80 + i for i in range(n)])
        assert -(2**31) <= murmur2(data) < 2**31
        assert murmur2(data) != murmur2(bytes(b & 0x7F for b in data))
