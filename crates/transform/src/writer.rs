//! An output's Parquet file, its columns encoded in parallel.
//!
//! Encoding (dictionaries, compression, statistics) is most of what writing costs, and one
//! `ArrowWriter` does it on one thread while the plan waits for it. Here each leaf column has
//! its own writer, the writers of a row group are spread over `threads` encoder threads, and the
//! plan's batches are handed to them as they come: the plan keeps computing while the columns
//! encode. A row group closes at [`ROW_GROUP_ROWS`] rows, or once the Arrow data handed to it
//! reaches [`WRITER_BUFFER`] (its encoded pages are held until then, outside DataFusion's
//! pool). The file is written under a temporary name and renamed when complete.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use futures_util::StreamExt;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::sync::{mpsc, oneshot};

/// Rows per row group, as capstan's store writes them.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
/// The most Arrow data a row group takes before it closes.
pub const WRITER_BUFFER: usize = 64 << 20;

type Chunks = Result<Vec<(usize, ArrowColumnChunk)>, ParquetError>;

/// What an encoder thread is asked.
enum Job {
    /// The writers of its columns in a new row group, by leaf index.
    Start(Vec<(usize, ArrowColumnWriter)>),
    Write(usize, ArrowLeafColumn),
    /// Close its writers and send their chunks back.
    Close(oneshot::Sender<Chunks>),
}

fn encoder(mut jobs: mpsc::Receiver<Job>) {
    let mut writers: Vec<(usize, ArrowColumnWriter)> = Vec::new();
    let mut failed: Option<ParquetError> = None;
    while let Some(job) = jobs.blocking_recv() {
        match job {
            Job::Start(w) => writers = w,
            Job::Write(leaf, column) => {
                if failed.is_some() {
                    continue;
                }
                if let Some((_, w)) = writers.iter_mut().find(|(i, _)| *i == leaf)
                    && let Err(e) = w.write(&column)
                {
                    failed = Some(e);
                }
            }
            Job::Close(reply) => {
                let chunks = match failed.take() {
                    Some(e) => Err(e),
                    None => writers
                        .drain(..)
                        .map(|(i, w)| w.close().map(|c| (i, c)))
                        .collect(),
                };
                let _ = reply.send(chunks);
            }
        }
    }
}

/// Writes `stream` into `path` with `threads` encoder threads; returns the rows written.
pub async fn write(
    mut stream: SendableRecordBatchStream,
    schema: SchemaRef,
    path: &Path,
    threads: usize,
) -> Result<u64, DataFusionError> {
    let tmp = path.with_extension("parquet.partial");
    let io = |e: std::io::Error| {
        DataFusionError::Execution(format!("cannot write {}: {e}", tmp.display()))
    };
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    // Readers get the exact Arrow types back, as from `ArrowWriter`.
    add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(&schema)?;
    let leaves = parquet_schema.num_columns();
    let file = std::fs::File::create(&tmp).map_err(io)?;
    // The writer buffers what it writes to the file itself.
    let mut writer = SerializedFileWriter::new(file, parquet_schema.root_schema_ptr(), props)?;
    let factory = ArrowRowGroupWriterFactory::new(&writer, schema.clone());

    let n = threads.clamp(1, leaves.max(1));
    let mut encoders = Vec::with_capacity(n);
    for i in 0..n {
        // A few batches ahead of each encoder: the plan runs on while they encode, and no more
        // than that waits in memory.
        let (tx, rx) = mpsc::channel(8);
        std::thread::Builder::new()
            .name(format!("capstan-parquet-{i}"))
            .spawn(move || encoder(rx))
            .map_err(io)?;
        encoders.push(tx);
    }
    let stopped = || DataFusionError::Execution("the Parquet encoder stopped".into());
    let start = |group: usize, encoders: &[mpsc::Sender<Job>]| {
        let mut by_encoder: Vec<Vec<(usize, ArrowColumnWriter)>> =
            (0..encoders.len()).map(|_| Vec::new()).collect();
        for (leaf, w) in factory
            .create_column_writers(group)?
            .into_iter()
            .enumerate()
        {
            by_encoder[leaf % encoders.len()].push((leaf, w));
        }
        Ok::<_, DataFusionError>(by_encoder)
    };
    let mut group = 0;
    for (tx, writers) in encoders.iter().zip(start(group, &encoders)?) {
        tx.send(Job::Start(writers)).await.map_err(|_| stopped())?;
    }
    let (mut rows, mut group_rows, mut group_bytes) = (0u64, 0usize, 0usize);
    loop {
        let batch = stream.next().await.transpose()?;
        let last = batch.is_none();
        if let Some(batch) = batch {
            let mut leaf = 0;
            for (column, field) in batch.columns().iter().zip(schema.fields()) {
                for l in compute_leaves(field, column)? {
                    encoders[leaf % n]
                        .send(Job::Write(leaf, l))
                        .await
                        .map_err(|_| stopped())?;
                    leaf += 1;
                }
            }
            rows += batch.num_rows() as u64;
            group_rows += batch.num_rows();
            group_bytes += batch.get_array_memory_size();
        }
        if (last && group_rows > 0) || group_rows >= ROW_GROUP_ROWS || group_bytes >= WRITER_BUFFER
        {
            let mut replies = Vec::with_capacity(n);
            for tx in &encoders {
                let (reply, answer) = oneshot::channel();
                tx.send(Job::Close(reply)).await.map_err(|_| stopped())?;
                replies.push(answer);
            }
            let mut chunks = Vec::with_capacity(leaves);
            for answer in replies {
                chunks.extend(answer.await.map_err(|_| stopped())??);
            }
            chunks.sort_by_key(|(i, _)| *i);
            let mut row_group = writer.next_row_group()?;
            for (_, chunk) in chunks {
                chunk.append_to_row_group(&mut row_group)?;
            }
            row_group.close()?;
            group += 1;
            (group_rows, group_bytes) = (0, 0);
            if !last {
                for (tx, writers) in encoders.iter().zip(start(group, &encoders)?) {
                    tx.send(Job::Start(writers)).await.map_err(|_| stopped())?;
                }
            }
        }
        if last {
            break;
        }
    }
    drop(encoders);
    let file = writer.into_inner()?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(rows)
}
