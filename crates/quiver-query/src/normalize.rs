//! Result types clients read everywhere.
//!
//! DataFusion may produce view types (`Utf8View`, `BinaryView`) that some Arrow
//! clients cannot read yet. Results are cast to the classic types before they leave
//! the engine. Large lists are sent as lists: arrow-flight's encoder (59) writes a
//! `LargeList` field as `List` in the stream's schema message, which drivers refuse
//! (and could not decode), so the batches must be lists too.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::error::Result;

/// The type a result column of `data_type` is sent as.
pub fn client_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(field) => DataType::List(client_field(field)),
        DataType::LargeList(field) | DataType::ListView(field) | DataType::LargeListView(field) => {
            DataType::List(client_field(field))
        }
        DataType::FixedSizeList(field, size) => DataType::FixedSizeList(client_field(field), *size),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(client_field).collect()),
        DataType::Map(field, sorted) => DataType::Map(client_field(field), *sorted),
        other => other.clone(),
    }
}

fn client_field(field: &FieldRef) -> FieldRef {
    Arc::new(
        Field::new(
            field.name(),
            client_type(field.data_type()),
            field.is_nullable(),
        )
        .with_metadata(field.metadata().clone()),
    )
}

/// The schema results with `schema` are sent with; `None` when nothing changes.
pub fn client_schema(schema: &Schema) -> Option<SchemaRef> {
    let changed = schema
        .fields()
        .iter()
        .any(|f| client_type(f.data_type()) != *f.data_type());
    changed.then(|| {
        Arc::new(Schema::new_with_metadata(
            schema.fields().iter().map(client_field).collect::<Vec<_>>(),
            schema.metadata().clone(),
        ))
    })
}

/// Casts `batch` to `schema`: the same columns, with client types (see
/// [`client_schema`]) and the nullability the client was told.
pub fn to_client_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(datafusion::error::DataFusionError::Internal(format!(
            "a result batch has {} columns where {} were announced",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringViewArray};

    use super::*;

    #[test]
    fn view_types_become_classic_types() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
            Field::new_list("l", Field::new_list_field(DataType::Utf8View, true), true),
        ]);
        let client = client_schema(&schema).unwrap();
        assert_eq!(client.field(0).data_type(), &DataType::Utf8);
        assert_eq!(client.field(1).data_type(), &DataType::Int64);
        assert_eq!(
            client.field(2).data_type(),
            &DataType::new_list(DataType::Utf8, true)
        );
        assert!(
            client_schema(&Schema::new(vec![Field::new("n", DataType::Int64, false)])).is_none()
        );

        let small = Arc::new(Schema::new(vec![
            schema.field(0).clone(),
            schema.field(1).clone(),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&small),
            vec![
                Arc::new(StringViewArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let client = client_schema(&small).unwrap();
        let converted = to_client_batch(&batch, &client).unwrap();
        assert_eq!(converted.schema(), client);
        assert_eq!(converted.num_rows(), 2);
    }
}
