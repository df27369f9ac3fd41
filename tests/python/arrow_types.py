"""Arrow data of every type a client may ingest, shared by the type-fidelity tests
(ingest, parameters) and the subscription tests (change streams of such a table)."""

import pyarrow as pa


def every_type_table():
    """One column per Arrow type a client may ingest, with edge values and a NULL in
    each: the acceptance table of the type matrix."""
    import datetime as dt
    from decimal import Decimal

    def column(values, arrow_type):
        return pa.array(values, arrow_type)

    day = dt.date
    return pa.table(
        {
            "n": column([1, 2, 3], pa.int64()),
            "flag": column([True, False, None], pa.bool_()),
            "i8": column([-128, 127, None], pa.int8()),
            "i16": column([-32768, 32767, None], pa.int16()),
            "i32": column([-(2**31), 2**31 - 1, None], pa.int32()),
            "i64": column([-(2**63), 2**63 - 1, None], pa.int64()),
            "u8": column([0, 255, None], pa.uint8()),
            "u16": column([0, 65535, None], pa.uint16()),
            "u32": column([0, 2**32 - 1, None], pa.uint32()),
            # SQLite's integers end at 2^63 - 1 (a larger value is refused, see below).
            "u64": column([0, 2**63 - 1, None], pa.uint64()),
            "f32": column([-1.5, 3.4028234663852886e38, None], pa.float32()),
            "f64": column([2.2250738585072014e-308, -1.7976931348623157e308, None], pa.float64()),
            "dec": column([Decimal("12345678901234567890.1234567891"), Decimal("-0.0000000001"), None], pa.decimal128(38, 10)),
            "text": column(["", "ü" * 5, None], pa.string()),
            "large_text": column(["a", "€" * 3, None], pa.large_string()),
            "bytes": column([b"", b"\x00\xff", None], pa.binary()),
            "large_bytes": column([b"\x01", b"", None], pa.large_binary()),
            "fixed": column([bytes(range(16)), b"\xff" * 16, None], pa.binary(16)),
            "d32": column([day(1900, 1, 1), day(2262, 4, 11), None], pa.date32()),
            "d64": column([day(1970, 1, 1), day(2024, 2, 29), None], pa.date64()),
            "t32s": column([dt.time(0, 0), dt.time(23, 59, 59), None], pa.time32("s")),
            "t32ms": column([dt.time(12, 30, 5, 123000), dt.time(0, 0, 0, 1000), None], pa.time32("ms")),
            "t64us": column([dt.time(23, 59, 59, 999999), dt.time(0, 0, 0, 1), None], pa.time64("us")),
            "t64ns": column([86_399_999_999_999, 1, None], pa.time64("ns")),
            "ts_s": column([0, 4_102_444_800, None], pa.timestamp("s")),
            "ts_ms": column([-1, 1_709_251_199_999, None], pa.timestamp("ms")),
            "ts_us": column([-86_400_000_001, 1_709_251_199_999_999, None], pa.timestamp("us")),
            "ts_ns": column([1, 1_700_000_000_123_456_789, None], pa.timestamp("ns")),
            "ts_utc": column([0, 1_709_251_199_999_999, None], pa.timestamp("us", tz="UTC")),
            "ts_paris": column([0, 1_709_251_199_999, None], pa.timestamp("ms", tz="Europe/Paris")),
            "ts_offset": column([5, 1_700_000_000_000_000_001, None], pa.timestamp("ns", tz="+05:30")),
            "dur_s": column([0, -5, None], pa.duration("s")),
            "dur_ms": column([86_400_000, 1, None], pa.duration("ms")),
            "dur_us": column([-1, 10**12, None], pa.duration("us")),
            "dur_ns": column([1, 10**15 + 7, None], pa.duration("ns")),
            "all_null": pa.nulls(3),
        }
    )


def to_microseconds(column):
    """`column` as PostgreSQL keeps it: nanoseconds below the microsecond dropped
    (rounded down; these values are not negative)."""
    t = column.type
    coarse = {
        pa.types.is_time: pa.time64("us"),
        pa.types.is_timestamp: pa.timestamp("us", tz=getattr(t, "tz", None)),
        pa.types.is_duration: pa.duration("us"),
    }
    for is_kind, micro_type in coarse.items():
        if is_kind(t) and t.unit == "ns":
            return column.cast(micro_type, safe=False).cast(t)
    return column
