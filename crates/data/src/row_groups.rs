//! A stored Parquet file as a sequence of small Parquet files, one per row group, with the
//! column chunks copied as they are stored (no decoding, no re-encoding): what the data API
//! streams, so that a reader decodes each row group while the next one is on its way.
//!
//! The first file holds no row group: only the schema (and the Arrow schema in its metadata),
//! so that a dataset with no rows still has its columns.

use std::fs::File;
use std::sync::Arc;

use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::Result;

/// The files of a stored Parquet file's row groups, after its schema's.
pub struct RowGroupFiles {
    file: File,
    metadata: ParquetMetaData,
    props: Arc<WriterProperties>,
    /// The next file: 0 for the schema's, then row group `next - 1`.
    next: usize,
}

impl RowGroupFiles {
    pub fn new(file: File) -> Result<RowGroupFiles> {
        let metadata = ParquetMetaDataReader::new().parse_and_finish(&file)?;
        let props = WriterProperties::builder()
            .set_key_value_metadata(metadata.file_metadata().key_value_metadata().cloned())
            .build();
        Ok(RowGroupFiles {
            file,
            metadata,
            props: Arc::new(props),
            next: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.metadata.file_metadata().num_rows().max(0) as u64
    }

    /// The file itself, from its start, and its length: to serve whole.
    pub fn into_file(self) -> std::io::Result<(File, u64)> {
        use std::io::Seek;
        let mut file = self.file;
        // Reading the footer moved the offset.
        let len = file.seek(std::io::SeekFrom::End(0))?;
        file.seek(std::io::SeekFrom::Start(0))?;
        Ok((file, len))
    }

    fn file_of(&self, row_group: Option<usize>) -> Result<Vec<u8>> {
        let schema = self.metadata.file_metadata().schema_descr_ptr();
        let mut out = Vec::new();
        let mut w =
            SerializedFileWriter::new(&mut out, schema.root_schema_ptr(), self.props.clone())?;
        if let Some(i) = row_group {
            let rg = self.metadata.row_group(i);
            let mut rgw = w.next_row_group()?;
            for column in rg.columns() {
                rgw.append_column(
                    &self.file,
                    ColumnCloseResult {
                        bytes_written: column.compressed_size().max(0) as u64,
                        rows_written: rg.num_rows().max(0) as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: None,
                        offset_index: None,
                    },
                )?;
            }
            rgw.close()?;
        }
        w.close()?;
        Ok(out)
    }
}

impl Iterator for RowGroupFiles {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        if i > self.metadata.num_row_groups() {
            return None;
        }
        self.next += 1;
        Some(self.file_of(i.checked_sub(1)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::properties::WriterProperties;

    use super::RowGroupFiles;

    #[test]
    fn each_row_group_reads_back_as_a_file_of_its_own_with_the_schema_first() {
        let dir = std::env::temp_dir().join(format!("capstan-row-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .build();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema.clone(),
            Some(props),
        )
        .unwrap();
        let n: Vec<i64> = (0..2500).collect();
        let s: Vec<Option<String>> = n
            .iter()
            .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 13)))
            .collect();
        w.write(
            &RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)),
                    Arc::new(StringArray::from(s)),
                ],
            )
            .unwrap(),
        )
        .unwrap();
        w.close().unwrap();

        let files = RowGroupFiles::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(files.rows(), 2500);
        let files: Vec<Vec<u8>> = files.map(|f| f.unwrap()).collect();
        assert_eq!(files.len(), 4, "the schema's, then 3 row groups");
        let mut seen = Vec::new();
        for (i, f) in files.into_iter().enumerate() {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(f)).unwrap();
            assert_eq!(reader.schema().fields(), schema.fields(), "file {i}");
            for b in reader.build().unwrap() {
                let b = b.unwrap();
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                seen.extend(col.iter().flatten());
                let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                assert_eq!(
                    s.null_count(),
                    (0..b.num_rows()).filter(|r| col.value(*r) % 7 == 0).count()
                );
            }
        }
        assert_eq!(seen, (0..2500).collect::<Vec<i64>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
