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

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;

use crate::error::{Error, Result};

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
/// length, the metadata (a valid flatbuffer) and the body length. The error says what
/// does not fit.
pub fn check_stream(bytes: &[u8]) -> Result<(), String> {
    let mut input = bytes;
    let mut messages = 0usize;
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
        take(&mut input, body).ok_or("a truncated body")?;
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

fn read_checked_stream(
    bytes: &[u8],
    what: &str,
    max_rows: usize,
    limit_name: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    check_stream(bytes).map_err(|problem| {
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

    #[test]
    fn real_streams_pass_and_read() {
        let bytes = stream(10);
        check_stream(&bytes).unwrap();
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
        assert!(check_stream(&huge).unwrap_err().contains("metadata"));
        // A negative one.
        let mut negative = Vec::new();
        negative.extend_from_slice(&CONTINUATION.to_le_bytes());
        negative.extend_from_slice(&(-5i32).to_le_bytes());
        assert!(check_stream(&negative).unwrap_err().contains("negative"));
        // A real stream cut short in its body.
        let bytes = stream(100);
        for cut in [7, 20, bytes.len() / 2, bytes.len() - 9] {
            assert!(
                check_stream(&bytes[..cut]).is_err()
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
