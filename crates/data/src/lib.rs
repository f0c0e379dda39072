//! capstan's datasets: tables stored as Parquet under the home, behind [`DatasetStore`] so that
//! object stores or SQL tables can follow.
//!
//! Writes are staged and committed by an atomic rename: a reader opens either the old file or
//! the new one, never half of one, and an activity that fails leaves the previous version in
//! place (its staged output is discarded instead of committed).

pub mod csv_import;
pub mod display;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub use arrow;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset `{project}/{name}` has no data yet")]
    Empty { project: String, name: String },
    #[error("unknown column `{column}` in `{project}/{name}` (columns: {columns})")]
    UnknownColumn {
        project: String,
        name: String,
        column: String,
        columns: String,
    },
    #[error("column `{column}`: {message}")]
    Schema { column: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

pub type Result<T> = std::result::Result<T, DataError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `capstan datasets` shows of a dataset.
#[derive(Clone, Debug)]
pub struct DatasetInfo {
    pub rows: u64,
    pub size_bytes: u64,
    pub schema: SchemaRef,
    pub modified: Option<std::time::SystemTime>,
}

/// A stream of batches being written to a staged output.
pub struct StagedWriter {
    writer: ArrowWriter<File>,
    path: PathBuf,
    rows: u64,
}

impl StagedWriter {
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        Ok(())
    }

    /// Flushes and syncs the staged file; returns the rows written.
    pub fn finish(self) -> Result<u64> {
        let file = self.writer.into_inner()?;
        file.sync_all().map_err(io(&self.path))?;
        Ok(self.rows)
    }
}

/// Where datasets live.
pub trait DatasetStore: Send + Sync {
    fn info(&self, project: &str, name: &str) -> Result<Option<DatasetInfo>>;
    /// The dataset's batches, with only `columns` (all if `None`), at most `limit` rows.
    fn read(
        &self,
        project: &str,
        name: &str,
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<Box<dyn RecordBatchReader + Send>>;
    /// A writer whose output becomes the dataset only when [`DatasetStore::commit`]ted.
    fn stage(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        schema: SchemaRef,
    ) -> Result<StagedWriter>;
    fn commit(&self, project: &str, name: &str, stage: &str) -> Result<bool>;
    fn discard(&self, project: &str, name: &str, stage: &str);
}

/// The embedded default: `data/PROJECT/NAME/data.parquet` under the home.
pub struct ParquetStore {
    root: PathBuf,
}

impl ParquetStore {
    pub fn new(home_root: &Path) -> ParquetStore {
        ParquetStore {
            root: home_root.join("data"),
        }
    }

    fn dir(&self, project: &str, name: &str) -> PathBuf {
        self.root.join(project).join(name)
    }

    fn current(&self, project: &str, name: &str) -> PathBuf {
        self.dir(project, name).join("data.parquet")
    }

    fn staged(&self, project: &str, name: &str, stage: &str) -> PathBuf {
        self.dir(project, name)
            .join(".staging")
            .join(format!("{stage}.parquet"))
    }
}

impl DatasetStore for ParquetStore {
    fn info(&self, project: &str, name: &str) -> Result<Option<DatasetInfo>> {
        let path = self.current(project, name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let meta = file.metadata().map_err(io(&path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        Ok(Some(DatasetInfo {
            rows: builder.metadata().file_metadata().num_rows().max(0) as u64,
            size_bytes: meta.len(),
            schema: builder.schema().clone(),
            modified: meta.modified().ok(),
        }))
    }

    fn read(
        &self,
        project: &str,
        name: &str,
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<Box<dyn RecordBatchReader + Send>> {
        let path = self.current(project, name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::Empty {
                    project: project.into(),
                    name: name.into(),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mut builder =
            ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(64 * 1024);
        if let Some(cols) = columns {
            let schema = builder.schema().clone();
            let mut indices = Vec::new();
            for c in cols {
                match schema.index_of(c) {
                    Ok(i) => indices.push(i),
                    Err(_) => {
                        return Err(DataError::UnknownColumn {
                            project: project.into(),
                            name: name.into(),
                            column: c.clone(),
                            columns: schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    }
                }
            }
            let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
            builder = builder.with_projection(mask);
        }
        if let Some(n) = limit {
            builder = builder.with_limit(n);
        }
        Ok(Box::new(builder.build()?))
    }

    fn stage(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        schema: SchemaRef,
    ) -> Result<StagedWriter> {
        let path = self.staged(project, name, stage);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let file = File::create(&path).map_err(io(&path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(props))?;
        Ok(StagedWriter {
            writer,
            path,
            rows: 0,
        })
    }

    fn commit(&self, project: &str, name: &str, stage: &str) -> Result<bool> {
        let staged = self.staged(project, name, stage);
        if !staged.exists() {
            return Ok(false);
        }
        let current = self.current(project, name);
        // The rename is the commit: readers holding the old file keep reading it whole.
        std::fs::rename(&staged, &current).map_err(io(&current))?;
        if let Ok(dir) = File::open(self.dir(project, name)) {
            let _ = dir.sync_all();
        }
        Ok(true)
    }

    fn discard(&self, project: &str, name: &str, stage: &str) {
        let _ = std::fs::remove_file(self.staged(project, name, stage));
    }
}

/// Checks a written schema against a declared one: every declared column present with its type.
pub fn check_schema(declared: &Schema, written: &Schema) -> Result<()> {
    for field in declared.fields() {
        match written.field_with_name(field.name()) {
            Err(_) => {
                return Err(DataError::Schema {
                    column: field.name().clone(),
                    message: format!(
                        "declared as {}, missing from the written data",
                        type_name(field.data_type())
                    ),
                });
            }
            Ok(w) if !compatible(field.data_type(), w.data_type()) => {
                return Err(DataError::Schema {
                    column: field.name().clone(),
                    message: format!(
                        "declared as {}, written as {}",
                        type_name(field.data_type()),
                        type_name(w.data_type())
                    ),
                });
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn compatible(declared: &DataType, written: &DataType) -> bool {
    use DataType::*;
    match (declared, written) {
        (Utf8, Utf8 | LargeUtf8 | Utf8View) => true,
        (Int64, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32) => true,
        (Float64, Float16 | Float32 | Float64) => true,
        (Timestamp(_, _), Timestamp(_, _)) => true,
        (Date32, Date32 | Date64) => true,
        (a, b) => a == b,
    }
}

/// The names users write in `schema = { … }` and see in messages.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "bool".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Date32 => "date".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// Parses a type name of a declared schema.
pub fn parse_type(s: &str) -> Option<DataType> {
    Some(match s {
        "string" | "str" | "text" => DataType::Utf8,
        "int" | "int64" | "integer" => DataType::Int64,
        "float" | "float64" | "double" => DataType::Float64,
        "bool" | "boolean" => DataType::Boolean,
        "timestamp" | "datetime" => {
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None)
        }
        "date" => DataType::Date32,
        _ => return None,
    })
}

/// A schema from `(column, type)` pairs.
pub fn schema_of(columns: &[(String, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t)| arrow::datatypes::Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// A reader over any Parquet file (for imports).
pub fn parquet_reader(
    file: File,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(64 * 1024)
        .build()?)
}
