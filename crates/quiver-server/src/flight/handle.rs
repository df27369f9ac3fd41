//! Stateless statement handles.
//!
//! A handle carries everything needed to run its statement — the SQL text, the
//! bound parameter values, the transaction it was prepared in and, in a ticket, the
//! id `CancelFlightInfo` finds the running query by — so any replica can serve it (a
//! transaction itself lives on the replica that began it) and the server keeps no
//! per-handle state. Layout (little endian):
//!
//! ```text
//! "QVH3" | u32 sql length | sql (UTF-8) | u32 params length | params (Arrow IPC stream)
//!        | u32 transaction id length | transaction id | u32 query id length | query id
//!        | u32 FNV-1a of all before
//! ```
//!
//! (`QVH2` handles, without the query id, are still read.) The checksum turns a
//! truncated or corrupted handle into a clean `INVALID_ARGUMENT`; every length is
//! checked against the bytes present, and the parameters' IPC stream is checked
//! before it is read, so a forged handle costs no more than its own size.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"QVH3";
const MAGIC_WITHOUT_QUERY_ID: &[u8; 4] = b"QVH2";

/// A statement and its bound parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementHandle {
    /// The SQL text as the client sent it.
    pub sql: String,
    /// Parameter rows bound with DoPut, if any.
    pub params: Option<RecordBatch>,
    /// The Flight SQL transaction the statement was prepared in, if any.
    pub transaction_id: Option<Bytes>,
    /// In a ticket: the id of this execution, for `CancelFlightInfo`.
    pub query_id: Option<[u8; 16]>,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn take<'a>(input: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(Error::InvalidHandle(format!("truncated {what}")));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

fn take_u32(input: &mut &[u8], what: &str) -> Result<usize> {
    let bytes = take(input, 4, what)?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("take returned exactly 4 bytes")) as usize)
}

impl StatementHandle {
    /// A handle for `sql` with no parameters bound.
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            params: None,
            transaction_id: None,
            query_id: None,
        }
    }

    /// The same handle, prepared inside `transaction_id`.
    pub fn in_transaction(mut self, transaction_id: Option<Bytes>) -> Self {
        self.transaction_id = transaction_id.filter(|id| !id.is_empty());
        self
    }

    /// Serializes the handle.
    pub fn encode(&self) -> Result<Bytes> {
        let params = match &self.params {
            None => Vec::new(),
            Some(batch) => {
                let mut buffer = Vec::new();
                let mut writer = StreamWriter::try_new(&mut buffer, &batch.schema())?;
                writer.write(batch)?;
                writer.finish()?;
                drop(writer);
                buffer
            }
        };
        let too_big =
            |what: &str| Error::InvalidRequest(format!("{what} too large for a statement handle"));
        let sql_len = u32::try_from(self.sql.len()).map_err(|_| too_big("SQL text"))?;
        let params_len = u32::try_from(params.len()).map_err(|_| too_big("parameters"))?;
        let transaction = self.transaction_id.as_deref().unwrap_or_default();
        let transaction_len =
            u32::try_from(transaction.len()).map_err(|_| too_big("transaction id"))?;
        let mut out = Vec::with_capacity(20 + self.sql.len() + params.len() + transaction.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&sql_len.to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        out.extend_from_slice(&params_len.to_le_bytes());
        out.extend_from_slice(&params);
        out.extend_from_slice(&transaction_len.to_le_bytes());
        out.extend_from_slice(transaction);
        match &self.query_id {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some(id) => {
                out.extend_from_slice(&16u32.to_le_bytes());
                out.extend_from_slice(id);
            }
        }
        let checksum = fnv1a(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        Ok(Bytes::from(out))
    }

    /// Parses a handle this server (or another replica) issued.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MAGIC.len() + 16
            || (&bytes[..4] != MAGIC && &bytes[..4] != MAGIC_WITHOUT_QUERY_ID)
        {
            return Err(Error::InvalidHandle(
                "not a Quiver statement handle".to_owned(),
            ));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        let checksum =
            u32::from_le_bytes(checksum.try_into().expect("split_at left exactly 4 bytes"));
        if fnv1a(body) != checksum {
            return Err(Error::InvalidHandle(
                "checksum mismatch (corrupted handle)".to_owned(),
            ));
        }
        let mut input = &body[4..];
        let sql_len = take_u32(&mut input, "SQL length")?;
        let sql = std::str::from_utf8(take(&mut input, sql_len, "SQL text")?)
            .map_err(|_| Error::InvalidHandle("SQL text is not UTF-8".to_owned()))?
            .to_owned();
        let params_len = take_u32(&mut input, "parameter length")?;
        let params_bytes = take(&mut input, params_len, "parameters")?;
        let transaction_len = take_u32(&mut input, "transaction id length")?;
        let transaction = take(&mut input, transaction_len, "transaction id")?;
        let transaction_id = (!transaction.is_empty()).then(|| Bytes::copy_from_slice(transaction));
        let query_id = if &body[..4] == MAGIC {
            let length = take_u32(&mut input, "query id length")?;
            match length {
                0 => None,
                16 => {
                    let id = take(&mut input, 16, "query id")?;
                    Some(id.try_into().expect("take returned exactly 16 bytes"))
                }
                _ => {
                    return Err(Error::InvalidHandle(
                        "a query id of the wrong size".to_owned(),
                    ));
                }
            }
        } else {
            None
        };
        if !input.is_empty() {
            return Err(Error::InvalidHandle("trailing bytes".to_owned()));
        }
        let params = if params_bytes.is_empty() {
            None
        } else {
            crate::ipc::check_stream(params_bytes, crate::ipc::MAX_STREAM_VIEW_BYTES)
                .map_err(|problem| Error::InvalidHandle(format!("parameters: {problem}")))?;
            let read = crate::ipc::guarded("the parameters", || {
                let reader = StreamReader::try_new(Cursor::new(params_bytes), None)
                    .map_err(|err| Error::InvalidHandle(format!("parameters: {err}")))?;
                let schema = reader.schema();
                let batches = reader
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|err| Error::InvalidHandle(format!("parameters: {err}")))?;
                Ok(arrow::compute::concat_batches(&schema, &batches)?)
            });
            Some(read.map_err(|err| Error::InvalidHandle(err.to_string()))?)
        };
        Ok(Self {
            sql,
            params,
            transaction_id,
            query_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn with_params() -> StatementHandle {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![42]))]).unwrap();
        StatementHandle {
            sql: "SELECT * FROM tasks WHERE id = ?".to_owned(),
            params: Some(batch),
            transaction_id: Some(Bytes::from_static(b"tx-1")),
            query_id: Some([7; 16]),
        }
    }

    #[test]
    fn round_trips() {
        let plain = StatementHandle::new("SELECT 1");
        assert_eq!(
            StatementHandle::decode(&plain.encode().unwrap()).unwrap(),
            plain
        );
        let bound = with_params();
        assert_eq!(
            StatementHandle::decode(&bound.encode().unwrap()).unwrap(),
            bound
        );
    }

    #[test]
    fn every_corruption_is_rejected() {
        let bytes = with_params().encode().unwrap();
        for position in 0..bytes.len() {
            let mut corrupted = bytes.to_vec();
            corrupted[position] ^= 0x5a;
            assert!(
                StatementHandle::decode(&corrupted).is_err(),
                "flip at {position} accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                StatementHandle::decode(&bytes[..len]).is_err(),
                "truncation to {len} accepted"
            );
        }
        assert!(StatementHandle::decode(b"uuid_handle").is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any bytes decode to a handle or an INVALID_ARGUMENT, never a panic.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = StatementHandle::decode(&bytes);
            }

            /// Any handle round-trips; any single flipped byte of it is refused.
            #[test]
            fn handles_round_trip_and_detect_corruption(
                sql in ".{0,200}",
                transaction in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)),
                query_id in proptest::option::of(any::<[u8; 16]>()),
                flip in any::<prop::sample::Index>(),
            ) {
                let handle = StatementHandle {
                    sql,
                    params: None,
                    transaction_id: transaction.map(Bytes::from),
                    query_id,
                };
                let bytes = handle.encode().unwrap();
                prop_assert_eq!(StatementHandle::decode(&bytes).unwrap(), handle);
                let mut corrupted = bytes.to_vec();
                let at = flip.index(corrupted.len());
                corrupted[at] ^= 0x01;
                prop_assert!(StatementHandle::decode(&corrupted).is_err());
            }

            /// A handle whose parameters are a mutated IPC stream, checksum fixed up as
            /// a forger would: decoded or refused, never a panic or a huge allocation.
            #[test]
            fn forged_parameters_never_panic(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            ) {
                let mut params = Vec::new();
                {
                    let batch = with_params().params.unwrap();
                    let mut writer = StreamWriter::try_new(&mut params, &batch.schema()).unwrap();
                    writer.write(&batch).unwrap();
                    writer.finish().unwrap();
                }
                for (index, value) in flips {
                    let at = index.index(params.len());
                    params[at] = value;
                }
                let mut out = Vec::new();
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(b"SELECT 1");
                out.extend_from_slice(&(params.len() as u32).to_le_bytes());
                out.extend_from_slice(&params);
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                let checksum = fnv1a(&out);
                out.extend_from_slice(&checksum.to_le_bytes());
                let _ = StatementHandle::decode(&out);
            }
        }
    }
}
