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
        take(&mut input, body).ok_or("a truncated body")?;
        messages += 1;
        if messages > MAX_MESSAGES {
            return Err(format!("more than {MAX_MESSAGES} messages"));
        }
    }
    Ok(())
}

/// The schema and batches of the IPC stream `bytes` (`what` names it in messages),
/// refusing more than `max_rows` rows in all before converting a batch further.
pub fn read_stream(
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
}
