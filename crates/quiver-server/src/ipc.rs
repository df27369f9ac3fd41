//! Arrow IPC streams from clients (Mutations `Rows.arrow_ipc`, the parameters inside a
//! statement handle), checked before they are read.
//!
//! Arrow's stream reader trusts the lengths a stream declares: it allocates (and
//! zeroes) a message's metadata and body before reading them, so a few bytes declaring
//! a huge body would exhaust memory. [`check_stream`] walks the messages first and
//! refuses any length the input does not actually hold; [`read_stream`] then reads
//! the batches one at a time, refusing more rows than the caller allows before any
//! per-row work.

use std::io::Cursor;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;

use crate::error::{Error, Result};

/// The bytes the values of `column` expand to beyond its own buffers once each row's
/// value is materialised: the values a dictionary's keys name, the bytes a view names
/// (a small message can name one large value many times). 0 for other columns.
pub fn expanded_bytes(column: &ArrayRef) -> usize {
    match column.data_type() {
        DataType::Utf8View => column.as_string_view().lengths().map(|n| n as usize).sum(),
        DataType::BinaryView => column.as_binary_view().lengths().map(|n| n as usize).sum(),
        DataType::Dictionary(..) => dictionary_bytes(column),
        _ => 0,
    }
}

/// The bytes of the values a dictionary-encoded `column`'s keys name.
fn dictionary_bytes(column: &ArrayRef) -> usize {
    // Without values every key is null (and `normalized_keys` would panic).
    let Some(dictionary) = column
        .as_any_dictionary_opt()
        .filter(|d| !d.values().is_empty())
    else {
        return 0;
    };
    let values = dictionary.values();
    let lengths: Vec<usize> = match values.data_type() {
        DataType::Utf8View | DataType::BinaryView => (0..values.len())
            .map(|i| expanded_bytes(&values.slice(i, 1)))
            .collect(),
        _ => match arrow::compute::kernels::length::length(values)
            .and_then(|l| arrow::compute::cast(&l, &DataType::Int64))
        {
            Ok(lengths) => lengths
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|n| usize::try_from(*n).unwrap_or(0))
                .collect(),
            // Fixed-width values: bounded by the rows.
            Err(_) => return 0,
        },
    };
    dictionary
        .normalized_keys()
        .into_iter()
        .map(|key| lengths.get(key).copied().unwrap_or(0))
        .sum()
}

/// The bytes `batch` takes once every row is materialised: its buffers plus what its
/// dictionary and view columns expand to.
pub fn materialised_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(expanded_bytes)
        .fold(batch.get_array_memory_size(), usize::saturating_add)
}

/// Refuses `batches` whose values, once every row is materialised, would take more
/// than `limit` bytes: their buffers plus what dictionary and view columns expand to.
/// `what` and `limit_name` name the input and the setting in the message.
pub fn check_materialised<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
    limit: usize,
    what: &str,
    limit_name: &str,
) -> Result<()> {
    let mut total = 0usize;
    for batch in batches {
        total = total.saturating_add(materialised_bytes(batch));
        if total > limit {
            return Err(Error::ResourceExhausted(format!(
                "the {what} take more than {limit} bytes once read ({limit_name})"
            )));
        }
    }
    Ok(())
}

/// The bytes the `Utf8View` columns of one IPC record batch name, read from the views
/// themselves before Arrow decodes the batch. Arrow checks that every viewed value is
/// UTF-8 when it decodes, so a message of a few megabytes whose views all name one
/// large value would cost minutes of CPU: callers refuse such a message first. 0 when
/// `schema` has no `Utf8View` column or the message is not a record batch.
pub fn string_view_bytes(schema: &Schema, metadata: &[u8], body: &[u8]) -> Result<usize, String> {
    if !schema
        .fields()
        .iter()
        .any(|f| has_string_view(f.data_type()))
    {
        return Ok(0);
    }
    let message = arrow::ipc::root_as_message(metadata)
        .map_err(|err| format!("a message that is not Arrow IPC metadata ({err})"))?;
    let Some(batch) = message.header_as_record_batch() else {
        return Ok(0);
    };
    if batch.compression().is_some() {
        return Err("compressed record batches with Utf8View columns are not accepted".to_owned());
    }
    let mut walk = ViewWalk {
        nodes: batch
            .nodes()
            .map(|n| n.iter().map(|n| n.length()).collect())
            .unwrap_or_default(),
        buffers: batch
            .buffers()
            .map(|b| b.iter().map(|b| (b.offset(), b.length())).collect())
            .unwrap_or_default(),
        variadic: batch
            .variadicBufferCounts()
            .map(|v| v.iter().collect())
            .unwrap_or_default(),
        body,
        node: 0,
        buffer: 0,
        variadic_at: 0,
        total: 0,
    };
    for field in schema.fields() {
        walk.field(field.data_type())?;
    }
    Ok(walk.total)
}

fn has_string_view(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8View => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => has_string_view(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_string_view(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_string_view(f.data_type())),
        DataType::RunEndEncoded(_, values) => has_string_view(values.data_type()),
        _ => false,
    }
}

/// The field nodes and buffers of one record batch, walked in schema order (the IPC
/// format's depth-first layout).
struct ViewWalk<'a> {
    nodes: Vec<i64>,
    buffers: Vec<(i64, i64)>,
    variadic: Vec<i64>,
    body: &'a [u8],
    node: usize,
    buffer: usize,
    variadic_at: usize,
    total: usize,
}

impl ViewWalk<'_> {
    fn field(&mut self, data_type: &DataType) -> Result<(), String> {
        let short = || "a record batch with fewer field nodes or buffers than its schema";
        let rows = *self.nodes.get(self.node).ok_or_else(short)?;
        self.node += 1;
        let own_buffers = match data_type {
            DataType::Null | DataType::RunEndEncoded(..) => 0,
            DataType::Utf8View | DataType::BinaryView => {
                let data = *self.variadic.get(self.variadic_at).ok_or_else(short)?;
                self.variadic_at += 1;
                if *data_type == DataType::Utf8View {
                    let (offset, length) = *self.buffers.get(self.buffer + 1).ok_or_else(short)?;
                    let views = usize::try_from(offset)
                        .ok()
                        .zip(usize::try_from(length).ok())
                        .and_then(|(at, n)| self.body.get(at..at.checked_add(n)?))
                        .ok_or("a views buffer outside the message body")?;
                    let count = usize::try_from(rows).unwrap_or(0).min(views.len() / 16);
                    self.total = views
                        .chunks_exact(16)
                        .take(count)
                        .map(|view| {
                            u32::from_le_bytes([view[0], view[1], view[2], view[3]]) as usize
                        })
                        .fold(self.total, usize::saturating_add);
                }
                2 + usize::try_from(data).map_err(|_| "a negative variadic buffer count")?
            }
            DataType::Utf8
            | DataType::Binary
            | DataType::LargeUtf8
            | DataType::LargeBinary
            | DataType::ListView(_)
            | DataType::LargeListView(_) => 3,
            DataType::FixedSizeList(..) | DataType::Struct(_) => 1,
            DataType::Union(_, arrow::datatypes::UnionMode::Sparse) => 1,
            _ => 2,
        };
        self.buffer += own_buffers;
        match data_type {
            DataType::List(f)
            | DataType::LargeList(f)
            | DataType::FixedSizeList(f, _)
            | DataType::ListView(f)
            | DataType::LargeListView(f)
            | DataType::Map(f, _) => self.field(f.data_type()),
            DataType::Struct(fields) => fields.iter().try_for_each(|f| self.field(f.data_type())),
            DataType::Union(fields, _) => fields
                .iter()
                .try_for_each(|(_, f)| self.field(f.data_type())),
            DataType::RunEndEncoded(run_ends, values) => {
                self.field(run_ends.data_type())?;
                self.field(values.data_type())
            }
            _ => Ok(()),
        }
    }
}

/// Most messages one stream may hold (schema, dictionaries and batches).
const MAX_MESSAGES: usize = 100_000;

/// The IPC continuation marker that precedes a message length.
const CONTINUATION: u32 = 0xFFFF_FFFF;

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Some(head)
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    take(input, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks that every message of the IPC stream `bytes` fits in `bytes`: the metadata
/// length, the metadata (a valid flatbuffer) and the body length; and that no batch's
/// `Utf8View` columns name more than `max_view_bytes` (see [`string_view_bytes`]).
/// The error says what does not fit.
pub fn check_stream(bytes: &[u8], max_view_bytes: usize) -> Result<(), String> {
    let mut input = bytes;
    let mut messages = 0usize;
    let mut schema: Option<Schema> = None;
    while !input.is_empty() {
        let mut length = take_u32(&mut input).ok_or("a truncated message length")?;
        if length == CONTINUATION {
            length = take_u32(&mut input).ok_or("a truncated message length")?;
        }
        let length = i32::from_le_bytes(length.to_le_bytes());
        if length == 0 {
            // The end-of-stream marker.
            return Ok(());
        }
        let length =
            usize::try_from(length).map_err(|_| format!("a negative message length ({length})"))?;
        if length > input.len() {
            return Err(format!(
                "a message declares {length} bytes of metadata where {} remain",
                input.len()
            ));
        }
        let metadata = take(&mut input, length).ok_or("truncated metadata")?;
        let message = arrow::ipc::root_as_message(metadata)
            .map_err(|err| format!("a message that is not Arrow IPC metadata ({err})"))?;
        let body = usize::try_from(message.bodyLength())
            .map_err(|_| format!("a negative body length ({})", message.bodyLength()))?;
        if body > input.len() {
            return Err(format!(
                "a message declares a body of {body} bytes where {} remain",
                input.len()
            ));
        }
        check_message(metadata, body)?;
        let body_bytes = take(&mut input, body).ok_or("a truncated body")?;
        if let Some(fields) = message.header_as_schema() {
            if schema.is_none() {
                schema = Some(schema_of(fields)?);
            }
        } else if let Some(schema) = &schema {
            let viewed = string_view_bytes(schema, metadata, body_bytes)?;
            if viewed > max_view_bytes {
                return Err(format!(
                    "a batch's Utf8View columns name {viewed} bytes; at most {max_view_bytes}"
                ));
            }
        }
        messages += 1;
        if messages > MAX_MESSAGES {
            return Err(format!("more than {MAX_MESSAGES} messages"));
        }
    }
    Ok(())
}

/// Checks one IPC message — its metadata `metadata` and a body of `body` bytes —
/// before Arrow reads it: every buffer lies inside the body, every count is
/// non-negative, and nothing is compressed. Arrow slices the body by these offsets
/// and would panic on one beyond it.
pub fn check_message(metadata: &[u8], body: usize) -> Result<(), String> {
    let message = arrow::ipc::root_as_message(metadata)
        .map_err(|err| format!("a message that is not Arrow IPC metadata ({err})"))?;
    let batch = match (
        message.header_as_record_batch(),
        message.header_as_dictionary_batch(),
    ) {
        (Some(batch), _) => Some(batch),
        (None, Some(dictionary)) => {
            Some(dictionary.data().ok_or("a dictionary batch without data")?)
        }
        (None, None) => None,
    };
    let Some(batch) = batch else {
        return Ok(());
    };
    if batch.length() < 0 {
        return Err(format!("a batch of {} rows", batch.length()));
    }
    if batch.compression().is_some() {
        return Err("compressed batches are not accepted".to_owned());
    }
    for node in batch.nodes().into_iter().flatten() {
        if node.length() < 0 || node.null_count() < 0 || node.null_count() > node.length() {
            return Err(format!(
                "a column of {} values with {} nulls",
                node.length(),
                node.null_count()
            ));
        }
    }
    for buffer in batch.buffers().into_iter().flatten() {
        let end = buffer
            .offset()
            .checked_add(buffer.length())
            .and_then(|end| usize::try_from(end).ok());
        let fits = buffer.offset() >= 0 && buffer.length() >= 0 && end.is_some_and(|e| e <= body);
        if !fits {
            return Err(format!(
                "a buffer at {} of {} bytes outside a body of {body} bytes",
                buffer.offset(),
                buffer.length()
            ));
        }
    }
    Ok(())
}

/// A schema message as a schema. Arrow panics on some forged schemas (an integer of 7
/// bits): caught here and refused.
fn schema_of(fields: arrow::ipc::Schema<'_>) -> Result<Schema, String> {
    std::panic::catch_unwind(|| arrow::ipc::convert::fb_to_schema(fields))
        .map_err(|_| "a schema Arrow cannot read".to_owned())
}

/// A Flight message's schema when it is a schema message (`None` for others); a
/// schema Arrow cannot read is refused (panics on forged schemas caught, as
/// `schema_of`).
pub fn flight_schema(message: &arrow_flight::FlightData) -> Result<Option<Schema>, String> {
    let header = arrow::ipc::root_as_message(&message.data_header)
        .map_err(|err| format!("a message that is not Arrow IPC metadata ({err})"))?;
    match header.header_as_schema() {
        Some(fields) => schema_of(fields).map(Some),
        None => Ok(None),
    }
}

/// Runs Arrow's decoding of client bytes, turning a panic inside it (a case the
/// checks above missed) into the client's error instead of a failed request task.
pub fn guarded<T>(what: &str, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(Error::InvalidRequest(format!(
            "{what} is not valid Arrow IPC data"
        )))
    })
}

/// The schema and batches of the IPC stream `bytes` (`what` names it in messages),
/// refusing more than `max_rows` rows in all before converting a batch further.
pub fn read_stream(
    bytes: &[u8],
    what: &str,
    max_rows: usize,
    limit_name: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    guarded(what, || {
        read_checked_stream(bytes, what, max_rows, limit_name)
    })
}

/// Most bytes the `Utf8View` values of a stream read whole ([`read_stream`], handle
/// parameters) may name: what one message may carry by default (64 MiB). Views name
/// bytes of the stream itself, so this refuses only streams that name them again and
/// again.
pub const MAX_STREAM_VIEW_BYTES: usize = 64 << 20;

fn read_checked_stream(
    bytes: &[u8],
    what: &str,
    max_rows: usize,
    limit_name: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    check_stream(bytes, MAX_STREAM_VIEW_BYTES).map_err(|problem| {
        Error::InvalidRequest(format!("{what} is not a valid Arrow IPC stream: {problem}"))
    })?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|err| {
        Error::InvalidRequest(format!("{what} is not an Arrow IPC stream: {err}"))
    })?;
    let schema = reader.schema();
    let mut rows = 0usize;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|err| {
            Error::InvalidRequest(format!("{what}: a batch cannot be read: {err}"))
        })?;
        rows = rows.saturating_add(batch.num_rows());
        if rows > max_rows {
            return Err(Error::ResourceExhausted(format!(
                "{what} holds more than {max_rows} rows ({limit_name})"
            )));
        }
        batches.push(batch);
    }
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;

    use super::*;

    fn stream(rows: usize) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        out
    }

    fn encode(batch: &RecordBatch) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
        writer.write(batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        out
    }

    #[test]
    fn string_views_are_counted_before_arrow_reads_them() {
        use arrow::array::{ArrayRef, BinaryViewArray, StringViewArray, StructArray};
        use arrow::buffer::{Buffer, ScalarBuffer};
        // Every view names the same 1 KiB value: 4,000 rows name 4,000 KiB.
        let value = "v".repeat(1024);
        let view = {
            let mut bytes = [0u8; 16];
            bytes[0..4].copy_from_slice(&1024u32.to_le_bytes());
            bytes[4..8].copy_from_slice(b"vvvv");
            u128::from_le_bytes(bytes)
        };
        let views: ArrayRef = Arc::new(StringViewArray::new(
            ScalarBuffer::from(vec![view; 4_000]),
            vec![Buffer::from(value.as_bytes())],
            None,
        ));
        let plain: ArrayRef = Arc::new(BinaryViewArray::from_iter_values([b"xyz"; 4_000]));
        let nested: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(Field::new("b", DataType::BinaryView, false)),
                Arc::clone(&plain),
            ),
            (
                Arc::new(Field::new("s", DataType::Utf8View, false)),
                Arc::clone(&views),
            ),
        ]));
        let batch = RecordBatch::try_from_iter([
            (
                "n",
                Arc::new(Int64Array::from_iter_values(0..4_000)) as ArrayRef,
            ),
            ("s", views),
            ("t", nested),
        ])
        .unwrap();
        let bytes = encode(&batch);
        assert!(bytes.len() < 300_000, "{}", bytes.len());
        let named = 2 * 4_000 * 1024;
        check_stream(&bytes, named).unwrap();
        let err = check_stream(&bytes, named - 1).unwrap_err();
        assert!(err.contains(&format!("name {named} bytes")), "{err}");
        assert_eq!(expanded_bytes(batch.column(1)), 4_000 * 1024);
    }

    #[test]
    fn real_streams_pass_and_read() {
        let bytes = stream(10);
        check_stream(&bytes, MAX_STREAM_VIEW_BYTES).unwrap();
        let (schema, batches) = read_stream(&bytes, "rows", 10, "max").unwrap();
        assert_eq!(schema.fields().len(), 1);
        assert_eq!(batches[0].num_rows(), 10);
        let err = read_stream(&bytes, "rows", 9, "max_mutation_rows").unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_refused() {
        // A metadata length far beyond the input.
        let mut huge = Vec::new();
        huge.extend_from_slice(&CONTINUATION.to_le_bytes());
        huge.extend_from_slice(&0x7FFF_FFF0i32.to_le_bytes());
        huge.extend_from_slice(&[0; 16]);
        assert!(
            check_stream(&huge, MAX_STREAM_VIEW_BYTES)
                .unwrap_err()
                .contains("metadata")
        );
        // A negative one.
        let mut negative = Vec::new();
        negative.extend_from_slice(&CONTINUATION.to_le_bytes());
        negative.extend_from_slice(&(-5i32).to_le_bytes());
        assert!(
            check_stream(&negative, MAX_STREAM_VIEW_BYTES)
                .unwrap_err()
                .contains("negative")
        );
        // A real stream cut short in its body.
        let bytes = stream(100);
        for cut in [7, 20, bytes.len() / 2, bytes.len() - 9] {
            assert!(
                check_stream(&bytes[..cut], MAX_STREAM_VIEW_BYTES).is_err()
                    || read_stream(&bytes[..cut], "rows", 1000, "m").is_err(),
                "cut at {cut}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Arbitrary bytes are checked or refused, never read past their end.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = read_stream(&bytes, "rows", 1_000, "limit");
            }

            /// A real stream with bytes overwritten (declared lengths and counts
            /// included) is read or refused, never a panic or an allocation its bytes
            /// do not hold.
            #[test]
            fn mutated_streams_never_panic(
                rows in 0usize..50,
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let mut bytes = stream(rows);
                for (index, value) in flips {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                let _ = read_stream(&bytes, "rows", 1_000, "limit");
            }
        }
    }
}
