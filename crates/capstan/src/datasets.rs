//! `capstan dataset import|head|schema` and `capstan datasets`: managed datasets, read and
//! written in the home on this machine.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use capstan_data::arrow::datatypes::DataType;
use capstan_data::arrow::record_batch::RecordBatchReader;
use capstan_data::csv_import::{self, ImportError, ImportLimits};
use capstan_data::{DatasetStore, ParquetStore};
use serde_json::json;

use crate::cli::{DatasetHeadArgs, DatasetImportArgs, DatasetSchemaArgs, DatasetsArgs};
use crate::home::load_valid;
use crate::jobs::human_bytes;
use crate::{Exit, exit};

fn parse_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((p, d)) if !p.is_empty() && !d.is_empty() && !d.contains('/') => Ok((p, d)),
        _ => bail!("`{target}` is not PROJECT/DATASET"),
    }
}

fn overrides(spec: Option<&str>) -> anyhow::Result<Vec<(String, DataType)>> {
    let mut out = Vec::new();
    for item in spec
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.trim().is_empty())
    {
        let Some((col, ty)) = item.split_once('=') else {
            bail!("--schema `{item}` is not COLUMN=TYPE");
        };
        let t = capstan_data::parse_type(ty.trim()).with_context(|| {
            format!("--schema {col}: unknown type `{ty}` (expected one of: string, int64, float64, bool, timestamp, date)")
        })?;
        out.push((col.trim().to_string(), t));
    }
    Ok(out)
}

fn print_schema(schema: &capstan_data::arrow::datatypes::Schema) -> anyhow::Result<()> {
    for f in schema.fields() {
        say!(
            "  {:<24} {}",
            f.name(),
            capstan_data::type_name(f.data_type())
        );
    }
    Ok(())
}

pub fn import(root: &Path, args: &DatasetImportArgs) -> anyhow::Result<u8> {
    let (project, name) = parse_target(&args.target)?;
    let (schema, rows, declared) =
        import_file(root, project, name, &args.file, args.schema.as_deref())?;
    if let Some(path) = declared {
        say!(
            "declared dataset {name} in {}",
            path.strip_prefix(root).unwrap_or(&path).display()
        );
    }
    say!("imported {rows} rows into {project}/{name}:");
    print_schema(&schema)?;
    Ok(exit::OK)
}

/// Imports a CSV or Parquet file as a new version of `project/name`: the schema and the rows
/// written, and the project file the dataset was declared in if it was not yet.
pub fn import_file(
    root: &Path,
    project: &str,
    name: &str,
    file: &Path,
    schema_overrides: Option<&str>,
) -> anyhow::Result<(
    capstan_data::arrow::datatypes::SchemaRef,
    u64,
    Option<std::path::PathBuf>,
)> {
    capstan_core::check_name(name).map_err(anyhow::Error::msg)?;
    let home = load_valid(root)?;
    let p = home
        .projects
        .get(project)
        .with_context(|| format!("unknown project `{project}`"))?;
    let store = ParquetStore::new(root);
    let stage = format!("import-{}", std::process::id());
    let is_parquet = file.extension().is_some_and(|e| e == "parquet");
    let staged = if is_parquet {
        stage_parquet(&store, project, name, &stage, file)
    } else {
        let overrides = overrides(schema_overrides)?;
        match csv_import::stage_csv(
            &store,
            project,
            name,
            &stage,
            file,
            &overrides,
            &ImportLimits::of(&home),
        ) {
            Ok(staged) => Ok(staged),
            Err(ImportError::BadLines { path, lines, total }) => {
                for l in &lines {
                    eprintln!("{path}:{}: {}", l.line, l.message);
                }
                if total > lines.len() {
                    eprintln!("… and {} more", total - lines.len());
                }
                eprintln!(
                    "error: {total} problem{} in {path}; nothing was imported",
                    if total == 1 { "" } else { "s" }
                );
                return Err(Exit(exit::FAILURE).into());
            }
            Err(e) => Err(anyhow::anyhow!("{e}; nothing was imported")),
        }
    };
    // From here on, any failure discards the staged version: the dataset keeps its previous one.
    let committed = staged.and_then(|(schema, rows)| {
        if let Some(d) = p.datasets.get(name)
            && !d.schema.is_empty()
        {
            let declared: Vec<(String, DataType)> = d
                .schema
                .iter()
                .filter_map(|(c, t)| capstan_data::parse_type(&t.value).map(|t| (c.clone(), t)))
                .collect();
            if let Err(e) = capstan_data::check_schema(&capstan_data::schema_of(&declared), &schema)
            {
                bail!(
                    "{} does not match the schema declared for {project}/{name}: {e}; nothing was imported",
                    file.display()
                );
            }
        }
        let provenance = capstan_data::Provenance {
            written_by: capstan_data::WrittenBy::Import {
                user: std::env::var("USER").unwrap_or_else(|_| "local".into()),
                file: file.file_name().map(|f| f.to_string_lossy().into_owned()),
            },
            inputs: Default::default(),
            definition: Default::default(),
        };
        store.commit(project, name, &stage, &provenance)?;
        Ok((schema, rows))
    });
    let (schema, rows) = match committed {
        Ok(c) => c,
        Err(e) => {
            store.discard(project, name, &stage);
            return Err(e);
        }
    };
    let mut declared = None;
    if !p.datasets.contains_key(name) {
        // Declared for the user, so recipes can name it at once.
        let path = root.join("projects").join(project).join("project.toml");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "\n[dataset.{name}]\nformat = \"parquet\"")?;
        declared = Some(path);
    }
    Ok((schema, rows, declared))
}

/// Stages a Parquet file as a new version of `project/name` (the caller commits or discards it).
fn stage_parquet(
    store: &ParquetStore,
    project: &str,
    name: &str,
    stage: &str,
    file: &Path,
) -> anyhow::Result<(capstan_data::arrow::datatypes::SchemaRef, u64)> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let reader = capstan_data::parquet_reader(opened)
        .with_context(|| format!("{} is not a Parquet file", file.display()))?;
    let schema = reader.schema();
    // Columns are looked up by name (`dataset head --json`, recipes): each needs its own.
    let mut seen = std::collections::HashMap::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if let Some(first) = seen.insert(f.name().as_str(), i) {
            bail!(
                "columns {} and {} of {} are both named `{}`; each column needs its own name; nothing was imported",
                first + 1,
                i + 1,
                file.display(),
                f.name()
            );
        }
    }
    let mut w = store.stage(project, name, stage, schema.clone())?;
    for batch in reader {
        w.write(&batch.with_context(|| format!("cannot read {}", file.display()))?)?;
    }
    Ok((schema, w.finish()?))
}

pub fn head(root: &Path, args: &DatasetHeadArgs) -> anyhow::Result<u8> {
    let (project, name) = parse_target(&args.target)?;
    let store = ParquetStore::new(root);
    let reader = store.read(project, name, None, Some(args.rows))?;
    let batches: Vec<_> = reader.collect::<Result<_, _>>()?;
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&capstan_data::display::json_rows(&batches))?
        );
    } else {
        say!("{}", capstan_data::display::table(&batches));
    }
    Ok(exit::OK)
}

pub fn schema(root: &Path, args: &DatasetSchemaArgs) -> anyhow::Result<u8> {
    let (project, name) = parse_target(&args.target)?;
    let store = ParquetStore::new(root);
    let info = store.info(project, name)?.with_context(|| {
        format!("dataset `{project}/{name}` has no data yet (import or write it first)")
    })?;
    if args.json {
        let cols: Vec<_> = info
            .schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": capstan_data::type_name(f.data_type())}))
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"columns": cols, "rows": info.rows, "size_bytes": info.size_bytes})
            )?
        );
    } else {
        say!(
            "{project}/{name}: {} rows, {}",
            info.rows,
            human_bytes(info.size_bytes)
        );
        print_schema(&info.schema)?;
    }
    Ok(exit::OK)
}

/// Every dataset of the home; given a token, those of the projects its user may read.
pub fn list(root: &Path, args: &DatasetsArgs, token: Option<&str>) -> anyhow::Result<u8> {
    let home = load_valid(root)?;
    let user = crate::home::token_user(&home, token)?;
    let store = ParquetStore::new(root);
    let mut rows = Vec::new();
    let readable = |project: &str| {
        user.as_ref().is_none_or(|(name, admin)| {
            capstan_core::access::check(
                &home,
                project,
                name,
                *admin,
                capstan_core::model::Permission::Read,
            )
            .is_ok()
        })
    };
    for p in home.projects.values().filter(|p| readable(&p.key)) {
        for d in p.datasets.values() {
            let info = store.info(&p.key, &d.name)?;
            rows.push(json!({
                "project": p.key,
                "name": d.name,
                "rows": info.as_ref().map(|i| i.rows),
                "size_bytes": info.as_ref().map(|i| i.size_bytes),
                "columns": info.as_ref().map(|i| i.schema.fields().len()),
                "description": d.description,
            }));
        }
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(exit::OK);
    }
    say!(
        "{:<32} {:>12} {:>10} {:>8}",
        "DATASET",
        "ROWS",
        "SIZE",
        "COLUMNS"
    );
    for r in rows {
        say!(
            "{:<32} {:>12} {:>10} {:>8}",
            format!(
                "{}/{}",
                r["project"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            ),
            r["rows"].as_u64().map_or("-".into(), |n| n.to_string()),
            r["size_bytes"].as_u64().map_or("-".into(), human_bytes),
            r["columns"].as_u64().map_or("-".into(), |n| n.to_string()),
        );
    }
    Ok(exit::OK)
}
