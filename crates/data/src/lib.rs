//! capstan's datasets: tables stored as Parquet under the home, behind [`DatasetStore`] so that
//! object stores or SQL tables can follow.
//!
//! Writes are staged and committed by an atomic rename: a reader opens either the old file or
//! the new one, never half of one, and an activity that fails leaves the previous version in
//! place (its staged output is discarded instead of committed).

pub mod csv_import;
pub mod display;
pub mod models;
pub mod row_groups;

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
pub use capstan_core::flow::{DatasetState, Provenance, WrittenBy};
pub use parquet;

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
    /// A saved model's files do not say what capstan needs of them.
    #[error("{0}")]
    Model(String),
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
    /// The stored data as one Parquet file, opened (a reader keeps the version it opened whole
    /// across a commit): what the data API serves as it is, with no decoding. `None` for a
    /// store that keeps no such file.
    fn parquet_file(&self, project: &str, name: &str) -> Result<Option<File>> {
        let _ = (project, name);
        Ok(None)
    }
    /// A writer whose output becomes the dataset only when [`DatasetStore::commit`]ted.
    fn stage(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        schema: SchemaRef,
    ) -> Result<StagedWriter>;
    /// Makes a staged output the dataset's current version, recording who wrote it and from
    /// what. Returns the new version's number, or `None` when nothing was staged.
    fn commit(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        provenance: &Provenance,
    ) -> Result<Option<u64>>;
    /// The dataset's current version, with its provenance.
    fn state(&self, project: &str, name: &str) -> DatasetState;
    fn discard(&self, project: &str, name: &str, stage: &str);
}

/// The embedded default: `data/PROJECT/NAME/data.parquet` under the home, and next to it
/// `version.json`, the version's number and provenance. The record names the data file's size
/// and modification time: data replaced behind capstan's back (or a commit cut off between its
/// two renames) reads as [`DatasetState::Untracked`], never as a version it is not.
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

    fn version_file(&self, project: &str, name: &str) -> PathBuf {
        self.dir(project, name).join("version.json")
    }

    fn read_version(&self, project: &str, name: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.version_file(project, name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The current data file, open; a dataset without one is [`DataError::Empty`].
    fn open_current(&self, project: &str, name: &str) -> Result<(File, PathBuf)> {
        let path = self.current(project, name);
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::Empty {
                project: project.into(),
                name: name.into(),
            }),
            Err(e) => Err(io(&path)(e)),
        }
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
        let (file, _) = self.open_current(project, name)?;
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

    fn parquet_file(&self, project: &str, name: &str) -> Result<Option<File>> {
        Ok(Some(self.open_current(project, name)?.0))
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

    fn commit(
        &self,
        project: &str,
        name: &str,
        stage: &str,
        provenance: &Provenance,
    ) -> Result<Option<u64>> {
        let staged = self.staged(project, name, stage);
        let meta = match std::fs::metadata(&staged) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&staged)(e)),
        };
        let version = self
            .read_version(project, name)
            .and_then(|v| v["version"].as_u64())
            .unwrap_or(0)
            + 1;
        let record = version_json(version, &stamp(&meta), provenance);
        let staged_record = staged.with_extension("version.json");
        write_synced(&staged_record, record.to_string().as_bytes())?;
        let current = self.current(project, name);
        // The rename is the commit: readers holding the old file keep reading it whole. The
        // record follows; until it does, the stamp in the old one does not match and the
        // dataset reads as untracked (rebuilt by the next build), never as the old version.
        std::fs::rename(&staged, &current).map_err(io(&current))?;
        let record_path = self.version_file(project, name);
        std::fs::rename(&staged_record, &record_path).map_err(io(&record_path))?;
        if let Ok(dir) = File::open(self.dir(project, name)) {
            let _ = dir.sync_all();
        }
        Ok(Some(version))
    }

    fn state(&self, project: &str, name: &str) -> DatasetState {
        let Ok(meta) = std::fs::metadata(self.current(project, name)) else {
            return DatasetState::Missing;
        };
        match self.read_version(project, name) {
            Some(v) if v["stamp"] == stamp(&meta) => parse_version(&v),
            _ => DatasetState::Untracked,
        }
    }

    fn discard(&self, project: &str, name: &str, stage: &str) {
        let staged = self.staged(project, name, stage);
        let _ = std::fs::remove_file(staged.with_extension("version.json"));
        let _ = std::fs::remove_file(staged);
    }
}

/// What identifies a data file's content cheaply: its size and modification time (a commit
/// renames the staged file, which keeps both).
fn stamp(meta: &std::fs::Metadata) -> serde_json::Value {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    serde_json::json!({"len": meta.len(), "mtime_ns": mtime_ns})
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn version_json(version: u64, stamp: &serde_json::Value, p: &Provenance) -> serde_json::Value {
    let written_by = match &p.written_by {
        WrittenBy::Activity { job, idx, recipe } => {
            serde_json::json!({"activity": {"job": job, "idx": idx, "recipe": recipe}})
        }
        WrittenBy::Import { user, file } => {
            serde_json::json!({"import": {"user": user, "file": file}})
        }
    };
    serde_json::json!({
        "version": version,
        "at_ms": now_ms(),
        "stamp": stamp,
        "written_by": written_by,
        "inputs": p.inputs,
        "definition": p.definition,
    })
}

fn parse_version(v: &serde_json::Value) -> DatasetState {
    let (Some(version), Some(at_ms)) = (v["version"].as_u64(), v["at_ms"].as_i64()) else {
        return DatasetState::Untracked;
    };
    let by = &v["written_by"];
    let written_by = if let Some(a) = by.get("activity") {
        match (a["job"].as_i64(), a["idx"].as_i64(), a["recipe"].as_str()) {
            (Some(job), Some(idx), Some(recipe)) => WrittenBy::Activity {
                job,
                idx,
                recipe: recipe.to_string(),
            },
            _ => return DatasetState::Untracked,
        }
    } else if let Some(i) = by.get("import") {
        WrittenBy::Import {
            user: i["user"].as_str().unwrap_or_default().to_string(),
            file: i["file"].as_str().map(String::from),
        }
    } else {
        return DatasetState::Untracked;
    };
    let map = |key: &str| -> Option<&serde_json::Map<String, serde_json::Value>> {
        v.get(key).and_then(|m| m.as_object())
    };
    let inputs = map("inputs")
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
        .collect();
    let definition = map("definition")
        .into_iter()
        .flatten()
        .filter_map(|(k, h)| h.as_str().map(|h| (k.clone(), h.to_string())))
        .collect();
    DatasetState::Version {
        version,
        at_ms,
        provenance: Provenance {
            written_by,
            inputs,
            definition,
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one_row(store: &ParquetStore, stage: &str) {
        let schema = schema_of(&[("n".into(), DataType::Int64)]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![1]))],
        )
        .unwrap();
        let mut w = store.stage("p", "d", stage, schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn each_commit_is_a_version_with_its_provenance_and_data_replaced_by_hand_is_untracked() {
        let home = std::env::temp_dir().join(format!("capstan-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let store = ParquetStore::new(&home);
        assert_eq!(store.state("p", "d"), DatasetState::Missing);
        let by = |job| Provenance {
            written_by: WrittenBy::Activity {
                job,
                idx: 0,
                recipe: "r".into(),
            },
            inputs: [("raw".to_string(), 3)].into(),
            definition: [("code".to_string(), "abc".to_string())].into(),
        };
        assert_eq!(store.commit("p", "d", "s", &by(1)).unwrap(), None);
        one_row(&store, "s1");
        assert_eq!(store.commit("p", "d", "s1", &by(1)).unwrap(), Some(1));
        one_row(&store, "s2");
        assert_eq!(store.commit("p", "d", "s2", &by(2)).unwrap(), Some(2));
        match store.state("p", "d") {
            DatasetState::Version {
                version,
                provenance,
                ..
            } => {
                assert_eq!(version, 2);
                assert_eq!(provenance, by(2));
            }
            other => panic!("{other:?}"),
        }
        // Replaced outside capstan: the record no longer describes the data.
        let data = home.join("data/p/d/data.parquet");
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, [bytes.as_slice(), b"x"].concat()).unwrap();
        assert_eq!(store.state("p", "d"), DatasetState::Untracked);
        // The next commit counts on from the last record.
        one_row(&store, "s3");
        assert_eq!(store.commit("p", "d", "s3", &by(3)).unwrap(), Some(3));
        let _ = std::fs::remove_dir_all(&home);
    }
}
