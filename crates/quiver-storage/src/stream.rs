//! Record batches streamed out of the store.

use std::pin::Pin;

use arrow::array::RecordBatch;
use futures::Stream;

use crate::error::Result;

/// A stream of record batches read from the store.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;
