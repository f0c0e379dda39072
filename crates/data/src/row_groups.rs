//! A stored Parquet file as a sequence of small Parquet files, one per row group, with the
//! column chunks copied as they are stored (no decoding, no re-encoding): what the data API
//! streams, so that a reader decodes each row group while the next one is on its way.
//!
//! The first file holds no row group: only the schema (and the Arrow schema in its metadata),
//! so that a dataset with no rows still has its columns.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{Type, TypePtr};

use crate::{DataError, Result};

/// The files of a stored Parquet file's row groups, after its schema's.
pub struct RowGroupFiles {
    file: File,
    metadata: ParquetMetaData,
    /// The schema of the files: the stored one, or its selected columns'.
    root: TypePtr,
    /// The leaf columns the files hold, in the stored order.
    leaves: Vec<usize>,
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
        let descr = metadata.file_metadata().schema_descr_ptr();
        Ok(RowGroupFiles {
            root: descr.root_schema_ptr(),
            leaves: (0..descr.num_columns()).collect(),
            file,
            metadata,
            props: Arc::new(props),
            next: 0,
        })
    }

    /// Only these (top-level) columns, in the stored order: their column chunks are all that
    /// is sent, so a projection costs nothing to decode on either side. `project/name` are for
    /// the error naming an unknown column.
    pub fn select(mut self, columns: &[String], project: &str, name: &str) -> Result<Self> {
        let descr = self.metadata.file_metadata().schema_descr_ptr();
        let fields = descr.root_schema().get_fields();
        let mut roots = Vec::new();
        for c in columns {
            let Some(i) = fields.iter().position(|f| f.name() == c.as_str()) else {
                return Err(DataError::UnknownColumn {
                    project: project.into(),
                    name: name.into(),
                    column: c.clone(),
                    columns: fields
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            roots.push(i);
        }
        roots.sort_unstable();
        roots.dedup();
        self.leaves = (0..descr.num_columns())
            .filter(|&leaf| {
                roots
                    .binary_search(&descr.get_column_root_idx(leaf))
                    .is_ok()
            })
            .collect();
        self.root = Arc::new(
            Type::group_type_builder(descr.root_schema().name())
                .with_fields(roots.iter().map(|&i| fields[i].clone()).collect())
                .build()?,
        );
        // The Arrow schema the files carry is the selected columns' (it keeps the types
        // Parquet cannot say, e.g. a timestamp's zone); pandas' own metadata names the
        // stored columns, so it goes.
        let kv = self.metadata.file_metadata().key_value_metadata();
        let arrow = parquet::arrow::parquet_to_arrow_schema(&descr, kv)?;
        let arrow = arrow::datatypes::Schema::new(
            roots
                .iter()
                .map(|&i| arrow.field(i).clone())
                .collect::<Vec<_>>(),
        );
        let kept: Vec<KeyValue> = kv
            .into_iter()
            .flatten()
            .filter(|e| e.key != parquet::arrow::ARROW_SCHEMA_META_KEY && e.key != "pandas")
            .cloned()
            .collect();
        let mut props = WriterProperties::builder()
            .set_key_value_metadata(Some(kept))
            .build();
        parquet::arrow::add_encoded_arrow_schema_to_metadata(&arrow, &mut props);
        self.props = Arc::new(props);
        Ok(self)
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

    /// One file, as the parts to send one after the other: the column chunks are read from
    /// the stored file into buffers of their own (one read each) and sent from there; only
    /// the magic and the footer around them are written here.
    fn file_of(&self, row_group: Option<usize>) -> Result<Vec<Bytes>> {
        let chunks: Vec<(u64, u64)> = match row_group {
            Some(i) => self
                .leaves
                .iter()
                .map(|&leaf| self.metadata.row_group(i).column(leaf).byte_range())
                .collect(),
            None => Vec::new(),
        };
        let mut frame = Frame {
            kept: Vec::with_capacity(16 << 10),
            written: 0,
            skip: chunks.iter().map(|(_, len)| len).sum(),
        };
        let mut w = SerializedFileWriter::new(&mut frame, self.root.clone(), self.props.clone())?;
        if let Some(i) = row_group {
            let rg = self.metadata.row_group(i);
            let mut rgw = w.next_row_group()?;
            for &leaf in &self.leaves {
                let column = rg.column(leaf);
                rgw.append_column(
                    &Unread(column.byte_range().1),
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
        let mut footer = frame.kept;
        let rest = Bytes::from(footer.split_off(MAGIC));
        let mut parts = Vec::with_capacity(chunks.len() + 2);
        parts.push(Bytes::from(footer));
        for (start, len) in chunks {
            let mut buf = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut buf, start)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            parts.push(Bytes::from(buf));
        }
        parts.push(rest);
        Ok(parts)
    }
}

/// The length of Parquet's magic (`PAR1`), which the column chunks follow.
const MAGIC: usize = 4;

/// What the writer of one file writes, less its column chunks: those are counted (the
/// footer's offsets need them) and dropped, since they are sent from the stored file instead.
struct Frame {
    kept: Vec<u8>,
    written: u64,
    /// The column chunks' bytes, which come right after the magic.
    skip: u64,
}

impl Write for Frame {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let (start, end) = (self.written, self.written + data.len() as u64);
        let (skip_from, skip_to) = (MAGIC as u64, MAGIC as u64 + self.skip);
        // The parts of `data` before and after the column chunks.
        let before = skip_from.saturating_sub(start).min(data.len() as u64) as usize;
        let after = end.saturating_sub(skip_to).min(data.len() as u64) as usize;
        self.kept.extend_from_slice(&data[..before]);
        self.kept.extend_from_slice(&data[data.len() - after..]);
        self.written = end;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A column chunk as the writer copies it into [`Frame`], which drops it: its bytes are
/// never read here (a reader may leave the buffer as it finds it).
struct Unread(u64);

impl Length for Unread {
    fn len(&self) -> u64 {
        self.0
    }
}

impl Read for Unread {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.0);
        self.0 -= n;
        Ok(n as usize)
    }
}

impl ChunkReader for Unread {
    type T = Unread;

    fn get_read(&self, _start: u64) -> parquet::errors::Result<Unread> {
        // The writer asks from the chunk's start and takes exactly its length.
        Ok(Unread(self.0))
    }

    fn get_bytes(&self, _start: u64, _length: usize) -> parquet::errors::Result<Bytes> {
        Err(parquet::errors::ParquetError::General(
            "a column chunk being spliced is not read".into(),
        ))
    }
}

impl Iterator for RowGroupFiles {
    /// One file, in parts to send in order.
    type Item = Result<Vec<Bytes>>;

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

    /// `batch` written to `name` in a fresh folder, in row groups of `rows`.
    fn stored(name: &str, batch: &RecordBatch, rows: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("capstan-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.parquet");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .build();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        path
    }

    #[test]
    fn each_row_group_reads_back_as_a_file_of_its_own_with_the_schema_first() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let n: Vec<i64> = (0..2500).collect();
        let s: Vec<Option<String>> = n
            .iter()
            .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 13)))
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(n)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap();
        let path = stored("row-groups", &batch, 1000);

        let files = RowGroupFiles::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(files.rows(), 2500);
        let files: Vec<Vec<u8>> = files.map(|f| f.unwrap().concat()).collect();
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
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_selection_sends_only_its_columns_with_their_arrow_types() {
        use arrow::array::TimestampMillisecondArray;
        use arrow::datatypes::TimeUnit;
        let at = DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Paris".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("at", at.clone(), true),
        ]));
        let n: Vec<i64> = (0..250).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(n.clone())),
                Arc::new(StringArray::from_iter_values(
                    n.iter().map(|i| format!("v{i}")),
                )),
                Arc::new(TimestampMillisecondArray::from(n.clone()).with_timezone("Europe/Paris")),
            ],
        )
        .unwrap();
        let path = stored("row-groups-sel", &batch, 100);

        let open = || RowGroupFiles::new(std::fs::File::open(&path).unwrap()).unwrap();
        // Asked in another order, served in the stored one.
        let files = open().select(&["at".into(), "n".into()], "p", "d").unwrap();
        let mut seen = Vec::new();
        for f in files {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(f.unwrap().concat()))
                    .unwrap();
            let names: Vec<&str> = reader
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(names, ["n", "at"]);
            assert_eq!(
                reader.schema().field(1).data_type(),
                &at,
                "the zone survives"
            );
            for b in reader.build().unwrap() {
                let b = b.unwrap();
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                seen.extend(col.iter().flatten());
            }
        }
        assert_eq!(seen, n);

        let err = open().select(&["m".into()], "p", "d").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown column `m` in `p/d` (columns: n, s, at)"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
