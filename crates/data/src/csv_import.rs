//! CSV import: every problem reported by line, nothing imported half-way.
//!
//! Two passes. The first reads every row to infer each column's type and to find what is wrong:
//! ragged rows, bytes that are not UTF-8, columns of mixed types (numbers on most lines, text
//! on a few), which arrow's inference would silently turn into strings, a header whose columns
//! are unnamed or share a name, a quote that is never closed (the CSV reader would take the
//! rest of the file as one value) and text after a closing quote (`"5" screen"`, which it would
//! keep without its quotes, or with the lines up to a stray quote taken into the value). Only a
//! clean file gets a second pass, which builds Arrow batches and writes them to a staged output;
//! [`stage_csv`] discards that output on any error, so a failed import leaves the dataset's
//! previous version in place.
//!
//! Both passes stream the file and stop at the [`ImportLimits`]: the file is read through a
//! guard (`Guard`) that follows the CSV syntax byte by byte (as `csv_core` does with the default
//! dialect) and refuses a record over the limit before the CSV reader has buffered more than the
//! limit of it. The guard also knows the line each record starts on, which the CSV reader gets
//! wrong after a blank line or a CRLF line ending.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::kernels::cast_utils::{Parser, string_to_timestamp_nanos};
use arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::DatasetStore;

/// A line that cannot be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line of the file (the header is line 1).
    pub line: u64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} has no header line")]
    NoHeader { path: String },
    #[error("{} problem{} in {path}; nothing was imported", .total, if *.total == 1 { "" } else { "s" })]
    BadLines {
        path: String,
        lines: Vec<BadLine>,
        total: usize,
    },
    /// The file goes beyond one of the [`ImportLimits`]; reading stopped there. The message
    /// names the file, the line, the limit (`limit`, a field of [`ImportLimits`]) and its value.
    #[error("{message}")]
    Limit {
        path: String,
        limit: &'static str,
        line: Option<u64>,
        message: String,
    },
    #[error(transparent)]
    Data(#[from] crate::DataError),
}

/// How much a CSV import may read. Memory stays within a small multiple of `max_line_bytes` (the
/// CSV reader holds one record at a time, the second pass a batch of about 64 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportLimits {
    /// The longest record, in bytes, without its line ending: a line, or, for a record whose
    /// quoted values hold line breaks, its lines together. Default 1 MiB.
    pub max_line_bytes: u64,
    /// The most columns the header may name. Default 4096.
    pub max_columns: usize,
    /// The largest file. Default 10 GiB.
    pub max_file_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> ImportLimits {
        ImportLimits {
            max_line_bytes: 1 << 20,
            max_columns: 4096,
            max_file_bytes: 10 << 30,
        }
    }
}

impl ImportLimits {
    /// The limits the home's `[import]` sets, the defaults for what it does not.
    pub fn of(home: &capstan_core::model::Home) -> ImportLimits {
        let i = &home.instance.import;
        let d = ImportLimits::default();
        ImportLimits {
            max_line_bytes: i
                .max_line
                .as_ref()
                .map_or(d.max_line_bytes, |m| m.value.bytes()),
            max_columns: i
                .max_columns
                .as_ref()
                .map_or(d.max_columns, |c| c.value as usize),
            max_file_bytes: i
                .max_file
                .as_ref()
                .map_or(d.max_file_bytes, |m| m.value.bytes()),
        }
    }
}

/// At most this many bad lines are listed (the total is always given).
const MAX_LISTED: usize = 20;
const BATCH_ROWS: usize = 64 * 1024;
/// A batch of the second pass is cut after this many bytes of records, whatever its rows.
const BATCH_BYTES: usize = 64 << 20;
/// Values quoted in messages are cut to this many characters.
const SHOWN_CHARS: usize = 60;

/// A size as messages give it: `1 MiB`, `1.5 GiB`, `300 bytes`.
fn size(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit {
            return if n.is_multiple_of(unit) {
                format!("{} {name}", n / unit)
            } else {
                format!("{:.1} {name}", n as f64 / unit as f64)
            };
        }
    }
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

/// A value or name cut for a message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `column 2 (`name`)`, or `column 2` where the name is not known (in the header itself).
fn column(names: &[String], field: usize) -> String {
    match names.get(field) {
        Some(n) if !n.is_empty() => format!("column {} (`{}`)", field + 1, clip(n)),
        _ => format!("column {}", field + 1),
    }
}

/// Where the CSV syntax is, after the bytes seen so far (the states of `csv_core`'s reader with
/// the default dialect: `,` between fields, `"` quotes with `""` inside, CR, LF or CRLF ends a
/// record, blank lines skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    /// Between records (and on blank lines).
    StartRecord,
    StartField,
    InField,
    InQuoted,
    /// A quote inside a quoted value: it closes the value, or, doubled, stands for itself.
    QuoteInQuoted,
    /// Blanks after a closing quote (`"a" ,b`): harmless before a `,` or the end of the record.
    BlanksAfterQuote,
}

/// An open quote: its line, its field (0-based) and its character on the line (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quote {
    line: u64,
    field: usize,
    character: u64,
}

/// Text after the quote that closes a quoted value (`"5" screen"`): the CSV reader would drop
/// the quotes and keep the rest, or, where the value ran over lines, have taken those lines into
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AfterQuote {
    quote: Quote,
    /// The line and character of the first byte after the closing quote.
    line: u64,
    character: u64,
}

/// Why the guard stopped the reading.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stop {
    /// The record that starts on `start_line` reached more than `max_line_bytes` on `line`;
    /// `quote` if a quoted value of it is open there.
    TooLong {
        start_line: u64,
        line: u64,
        quote: Option<Quote>,
    },
    /// More than `max_file_bytes` were read.
    FileTooLarge,
    /// The file ended inside a quoted value, whose quote is `quote`; `last_line` is the last.
    OpenQuote { quote: Quote, last_line: u64 },
}

/// The file as the CSV reader reads it, with the limits enforced on the way (see the module's
/// docs). The reader asks for more bytes only when it has used all it was given, so a check here
/// sees the whole of the current record so far.
struct Guard<R> {
    inner: R,
    max_line_bytes: u64,
    max_file_bytes: u64,
    /// Bytes handed on.
    given: u64,
    /// Line (1-based, counted by LF as the CSV reader does).
    line: u64,
    /// Characters of the current line before the chunk being followed, and where in that chunk
    /// the current line starts, if it does: enough to tell the character of a byte there.
    characters_before: u64,
    chunk_line_start: Option<usize>,
    /// Whether the last byte handed on was an LF.
    after_lf: bool,
    syntax: Syntax,
    /// Where the current (or next) record starts for the CSV reader: after the byte that ended
    /// the previous record (its position, which counts the blank lines and the LF of a CRLF
    /// before the record's first byte).
    record_start: u64,
    /// The line of the current record's first byte and its bytes so far.
    record_line: u64,
    record_bytes: u64,
    field: usize,
    quote: Option<Quote>,
    /// `(record_start, line of the first byte)` of the records read ahead of the CSV reader.
    starts: VecDeque<(u64, u64)>,
    stop: Option<Stop>,
    /// The first [`MAX_LISTED`] texts after a closing quote, and how many there were.
    after_quotes: Vec<AfterQuote>,
    after_quotes_total: usize,
}

/// What a byte is to the CSV syntax.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Other,
    Comma,
    Quote,
    /// CR or LF.
    End,
}

const CLASS: [Class; 256] = {
    let mut t = [Class::Other; 256];
    t[b',' as usize] = Class::Comma;
    t[b'"' as usize] = Class::Quote;
    t[b'\r' as usize] = Class::End;
    t[b'\n' as usize] = Class::End;
    t
};

/// The characters of `bytes`: the bytes that are not UTF-8 continuation bytes.
fn characters(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64
}

impl<R: Read> Guard<R> {
    fn new(inner: R, limits: &ImportLimits) -> Guard<R> {
        Guard {
            inner,
            max_line_bytes: limits.max_line_bytes,
            max_file_bytes: limits.max_file_bytes,
            given: 0,
            line: 1,
            characters_before: 0,
            chunk_line_start: None,
            after_lf: false,
            syntax: Syntax::StartRecord,
            record_start: 0,
            record_line: 1,
            record_bytes: 0,
            field: 0,
            quote: None,
            starts: VecDeque::new(),
            stop: None,
            after_quotes: Vec::new(),
            after_quotes_total: 0,
        }
    }

    /// The line the record at `start` (its position for the CSV reader) begins on.
    fn line_of(&mut self, start: u64, fallback: u64) -> u64 {
        while let Some(&(s, line)) = self.starts.front() {
            if s > start {
                break;
            }
            self.starts.pop_front();
            if s == start {
                return line;
            }
        }
        fallback
    }

    /// The character (1-based, on its line) of `chunk[i]`.
    fn character(&self, chunk: &[u8], i: usize) -> u64 {
        1 + match self.chunk_line_start {
            Some(start) => characters(&chunk[start..i]),
            None => self.characters_before + characters(&chunk[..i]),
        }
    }

    /// Follows the byte `chunk[i]`.
    fn step(&mut self, chunk: &[u8], i: usize) -> Result<(), Stop> {
        let b = chunk[i];
        let end = b == b'\r' || b == b'\n';
        if self.syntax == Syntax::StartRecord && !end {
            self.starts.push_back((self.record_start, self.line));
            self.record_line = self.line;
            self.record_bytes = 0;
            self.field = 0;
            self.syntax = Syntax::StartField;
        }
        let mut ends_record = false;
        self.syntax = match (self.syntax, b) {
            (Syntax::StartRecord, _) => Syntax::StartRecord,
            (Syntax::StartField, b'"') => {
                self.quote = Some(Quote {
                    line: self.line,
                    field: self.field,
                    character: self.character(chunk, i),
                });
                Syntax::InQuoted
            }
            (Syntax::InQuoted, b'"') => Syntax::QuoteInQuoted,
            (Syntax::InQuoted, _) => Syntax::InQuoted,
            (Syntax::QuoteInQuoted, b'"') => Syntax::InQuoted,
            (Syntax::QuoteInQuoted | Syntax::BlanksAfterQuote, b' ' | b'\t') => {
                Syntax::BlanksAfterQuote
            }
            (
                Syntax::StartField
                | Syntax::InField
                | Syntax::QuoteInQuoted
                | Syntax::BlanksAfterQuote,
                b',',
            ) => {
                self.field += 1;
                self.quote = None;
                Syntax::StartField
            }
            (
                Syntax::StartField
                | Syntax::InField
                | Syntax::QuoteInQuoted
                | Syntax::BlanksAfterQuote,
                _,
            ) if end => {
                ends_record = true;
                self.quote = None;
                Syntax::StartRecord
            }
            (
                Syntax::StartField
                | Syntax::InField
                | Syntax::QuoteInQuoted
                | Syntax::BlanksAfterQuote,
                _,
            ) => {
                if matches!(
                    self.syntax,
                    Syntax::QuoteInQuoted | Syntax::BlanksAfterQuote
                ) && let Some(quote) = self.quote
                {
                    self.after_quotes_total += 1;
                    if self.after_quotes.len() < MAX_LISTED {
                        self.after_quotes.push(AfterQuote {
                            quote,
                            line: self.line,
                            character: self.character(chunk, i),
                        });
                    }
                }
                self.quote = None;
                Syntax::InField
            }
        };
        if ends_record {
            self.record_start = self.given + i as u64 + 1;
        } else if self.syntax != Syntax::StartRecord {
            self.record_bytes += 1;
            if self.record_bytes > self.max_line_bytes {
                return Err(Stop::TooLong {
                    start_line: self.record_line,
                    line: self.line,
                    quote: self.quote.filter(|_| self.syntax == Syntax::InQuoted),
                });
            }
        }
        if b == b'\n' {
            self.line += 1;
            self.chunk_line_start = Some(i + 1);
        }
        Ok(())
    }

    /// Follows `chunk`; on a stop, returns how much of it comes before the stop.
    fn follow(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            // Runs of bytes that change nothing but the counts are taken at once (the limit is
            // left to `step`, byte by byte).
            let room = self.max_line_bytes.saturating_sub(self.record_bytes);
            let rest = &chunk[i..];
            let rest = &rest[..rest.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
            let run = match self.syntax {
                // Unquoted values and the commas between them, up to the end of the record or
                // a quote that opens a value.
                Syntax::StartField | Syntax::InField => {
                    let mut at_start = self.syntax == Syntax::StartField;
                    let mut run = 0;
                    for &b in rest {
                        match CLASS[b as usize] {
                            Class::Comma => {
                                self.field += 1;
                                at_start = true;
                            }
                            Class::End => break,
                            Class::Quote if at_start => break,
                            _ => at_start = false,
                        }
                        run += 1;
                    }
                    if run > 0 {
                        self.syntax = if at_start {
                            Syntax::StartField
                        } else {
                            Syntax::InField
                        };
                    }
                    run
                }
                Syntax::InQuoted => {
                    let run = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
                    let lines = rest[..run].iter().filter(|&&b| b == b'\n').count();
                    if lines > 0 {
                        self.line += lines as u64;
                        let last = rest[..run].iter().rposition(|&b| b == b'\n');
                        self.chunk_line_start = last.map(|l| i + l + 1);
                    }
                    run
                }
                _ => 0,
            };
            if run > 0 {
                self.record_bytes += run as u64;
                i += run;
                continue;
            }
            if let Err(stop) = self.step(chunk, i) {
                self.stop = Some(stop);
                return i;
            }
            i += 1;
        }
        chunk.len()
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stopped = || std::io::Error::other("the CSV import stopped at a limit");
        if self.stop.is_some() {
            return Err(stopped());
        }
        let mut n = self.inner.read(buf)?;
        if n == 0 {
            if self.syntax == Syntax::InQuoted
                && let Some(quote) = self.quote
            {
                let last_line = if self.after_lf && self.line > 1 {
                    self.line - 1
                } else {
                    self.line
                };
                self.stop = Some(Stop::OpenQuote { quote, last_line });
                return Err(stopped());
            }
            return Ok(0);
        }
        let room = self.max_file_bytes.saturating_sub(self.given);
        if n as u64 > room {
            n = room as usize;
            self.stop = Some(Stop::FileTooLarge);
        }
        // What comes before a stop is handed on, so the records before it are read.
        let chunk = &buf[..n];
        n = self.follow(chunk);
        self.characters_before = match self.chunk_line_start.take() {
            Some(start) => characters(&chunk[start..n]),
            None => self.characters_before + characters(&chunk[..n]),
        };
        if n > 0 {
            self.after_lf = chunk[n - 1] == b'\n';
        }
        self.given += n as u64;
        if n == 0 && self.stop.is_some() {
            return Err(stopped());
        }
        Ok(n)
    }
}

type CsvReader<R> = csv::Reader<Guard<R>>;

/// A CSV reader (the default dialect, rows of any length) over `inner`, within `limits`.
fn csv_reader<R: Read>(inner: R, limits: &ImportLimits) -> CsvReader<R> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(Guard::new(inner, limits))
}

/// What went wrong with a record: a problem of its line, or the end of the import.
enum Problem {
    Line(BadLine),
    Fatal(ImportError),
}

/// Turns the guard's stop (if it stopped) or the CSV reader's error into a problem.
fn problem<R: Read>(
    rdr: &CsvReader<R>,
    err: csv::Error,
    shown: &str,
    names: &[String],
    limits: &ImportLimits,
) -> Problem {
    let limit = |limit: &'static str, line: Option<u64>, message: String| {
        Problem::Fatal(ImportError::Limit {
            path: shown.to_string(),
            limit,
            line,
            message,
        })
    };
    let max_line = size(limits.max_line_bytes);
    match rdr.get_ref().stop.clone() {
        Some(Stop::TooLong {
            start_line,
            line,
            quote,
        }) => match quote {
            Some(q) if line > q.line => limit(
                "max_line_bytes",
                Some(q.line),
                format!(
                    "line {} of {shown}: the quote at character {} of {} is still not closed on line {line}, beyond the maximum of {max_line} for a record (csv import limit `max_line_bytes`); a closing quote may be missing",
                    q.line,
                    q.character,
                    column(names, q.field)
                ),
            ),
            _ if line > start_line => limit(
                "max_line_bytes",
                Some(start_line),
                format!(
                    "the record on lines {start_line} to {line} of {shown} is longer than the maximum of {max_line} (csv import limit `max_line_bytes`)"
                ),
            ),
            _ => limit(
                "max_line_bytes",
                Some(line),
                format!(
                    "line {line} of {shown} is longer than the maximum of {max_line} (csv import limit `max_line_bytes`)"
                ),
            ),
        },
        Some(Stop::FileTooLarge) => limit(
            "max_file_bytes",
            None,
            format!(
                "{shown} is larger than the maximum of {} (csv import limit `max_file_bytes`)",
                size(limits.max_file_bytes)
            ),
        ),
        Some(Stop::OpenQuote { quote, last_line }) => {
            let rest = if last_line > quote.line {
                format!("lines {} to {last_line}", quote.line)
            } else {
                format!("line {last_line}")
            };
            Problem::Line(BadLine {
                line: quote.line,
                message: format!(
                    "{}: the quote at character {} is never closed, so the rest of the file ({rest}) would be one value",
                    column(names, quote.field),
                    quote.character
                ),
            })
        }
        None => Problem::Fatal(ImportError::Read {
            path: shown.to_string(),
            message: err.to_string(),
        }),
    }
}

/// Opens `path` for reading within `limits`.
fn open(path: &Path, limits: &ImportLimits) -> Result<CsvReader<File>, ImportError> {
    let shown = path.display().to_string();
    let read_error = |e: std::io::Error| ImportError::Read {
        path: shown.clone(),
        message: e.to_string(),
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    if len > limits.max_file_bytes {
        return Err(ImportError::Limit {
            path: shown.clone(),
            limit: "max_file_bytes",
            line: None,
            message: format!(
                "{shown} is {}, larger than the maximum of {} (csv import limit `max_file_bytes`)",
                size(len),
                size(limits.max_file_bytes)
            ),
        });
    }
    Ok(csv_reader(file, limits))
}

/// Reads the header: the column names (trimmed, without a byte-order mark), or why not.
fn header<R: Read>(
    rdr: &mut CsvReader<R>,
    shown: &str,
    limits: &ImportLimits,
) -> Result<Vec<String>, Problem> {
    let headers = match rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(problem(rdr, e, shown, &[], limits)),
    };
    // The header's start is read: forget it (records are looked up by their start).
    rdr.get_mut().line_of(0, 1);
    if headers.is_empty() {
        return Err(Problem::Fatal(ImportError::NoHeader {
            path: shown.to_string(),
        }));
    }
    if headers.len() > limits.max_columns {
        return Err(Problem::Fatal(ImportError::Limit {
            path: shown.to_string(),
            limit: "max_columns",
            line: Some(1),
            message: format!(
                "the header of {shown} has {} columns, more than the maximum of {} (csv import limit `max_columns`)",
                headers.len(),
                limits.max_columns
            ),
        }));
    }
    Ok(headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = String::from_utf8_lossy(h);
            let name = if i == 0 {
                name.trim_start_matches('\u{feff}')
            } else {
                &name
            };
            name.trim().to_string()
        })
        .collect())
}

/// The problems of the header's names: unnamed columns and names given to several columns.
fn name_problems(names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        out.push(format!("column {} has no name", i + 1));
    }
    let mut columns: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (i, n) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        let seen = columns.entry(n).or_default();
        if seen.len() == 1 {
            order.push(n.as_str());
        }
        seen.push(i + 1);
    }
    for n in order {
        let cols = &columns[n];
        let (last, rest) = cols.split_last().expect("a repeated name has columns");
        let rest: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
        out.push(format!(
            "columns {} and {last} are {} named `{}`; each column needs its own name",
            rest.join(", "),
            if cols.len() == 2 { "both" } else { "all" },
            clip(n)
        ));
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Date,
    Timestamp,
    Text,
}

/// What the first pass learned of one column.
#[derive(Default, Clone)]
struct ColumnStats {
    values: u64,
    ints: u64,
    floats: u64,
    bools: u64,
    dates: u64,
    timestamps: u64,
    /// Lines whose value is not a number, kept to report a mostly-numeric column.
    non_numeric: Vec<(u64, String)>,
}

fn is_bool(s: &str) -> bool {
    matches!(s, "true" | "false" | "True" | "False" | "TRUE" | "FALSE")
}

impl ColumnStats {
    fn see(&mut self, v: &str, line: u64) {
        if v.is_empty() {
            return;
        }
        self.values += 1;
        let int = v.parse::<i64>().is_ok();
        let float = int || v.parse::<f64>().is_ok();
        self.ints += int as u64;
        self.floats += float as u64;
        self.bools += is_bool(v) as u64;
        let date = Date32Type::parse(v).is_some() && v.len() == 10;
        self.dates += date as u64;
        self.timestamps += (!date && string_to_timestamp_nanos(v).is_ok()) as u64;
        if !float && self.non_numeric.len() < 5 {
            self.non_numeric.push((line, clip(v)));
        }
    }

    fn kind(&self) -> Kind {
        let all = |n: u64| n == self.values && n > 0;
        if all(self.ints) {
            Kind::Int
        } else if all(self.floats) {
            Kind::Float
        } else if all(self.bools) {
            Kind::Bool
        } else if all(self.dates) {
            Kind::Date
        } else if all(self.timestamps)
            || (self.dates + self.timestamps == self.values && self.timestamps > 0)
        {
            Kind::Timestamp
        } else {
            Kind::Text
        }
    }

    /// Mostly numbers (four in five or more), a few words: almost always a typo or a placeholder (`n/a`), not text.
    fn mixed(&self) -> bool {
        self.kind() == Kind::Text && self.values >= 4 && self.floats * 5 >= self.values * 4
    }
}

fn data_type(k: Kind) -> DataType {
    match k {
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Date => DataType::Date32,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::Text => DataType::Utf8,
    }
}

/// Infers the schema of a CSV file, or reports every bad line, within the default
/// [`ImportLimits`]. `overrides` fix a column's type (`--schema amount=string`).
pub fn infer(path: &Path, overrides: &[(String, DataType)]) -> Result<SchemaRef, ImportError> {
    infer_with(path, overrides, &ImportLimits::default())
}

/// [`infer`] within `limits`.
pub fn infer_with(
    path: &Path,
    overrides: &[(String, DataType)],
    limits: &ImportLimits,
) -> Result<SchemaRef, ImportError> {
    let rdr = open(path, limits)?;
    infer_csv(rdr, &path.display().to_string(), overrides, limits)
}

/// [`infer_with`] of any reader, `shown` as its name.
fn infer_csv<R: Read>(
    mut rdr: CsvReader<R>,
    shown: &str,
    overrides: &[(String, DataType)],
    limits: &ImportLimits,
) -> Result<SchemaRef, ImportError> {
    let shown = shown.to_string();
    let mut bad = Vec::new();
    let mut total_bad = 0usize;
    let mut report = |line: u64, message: String| {
        total_bad += 1;
        if bad.len() < MAX_LISTED {
            bad.push(BadLine { line, message });
        }
    };
    let names = match header(&mut rdr, &shown, limits) {
        Ok(names) => names,
        Err(Problem::Line(l)) => {
            report(l.line, l.message);
            Vec::new()
        }
        Err(Problem::Fatal(e)) => return Err(e),
    };
    for message in name_problems(&names) {
        report(1, message);
    }
    let mut stats = vec![ColumnStats::default(); names.len()];
    let mut record = csv::ByteRecord::new();
    while !names.is_empty() {
        match rdr.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => match problem(&rdr, e, &shown, &names, limits) {
                Problem::Line(l) => {
                    report(l.line, l.message);
                    break;
                }
                Problem::Fatal(e) => return Err(e),
            },
        }
        let (start, fallback) = record.position().map_or((0, 0), |p| (p.byte(), p.line()));
        let line = rdr.get_mut().line_of(start, fallback);
        if record.len() != names.len() {
            report(
                line,
                format!(
                    "{} fields, where the header has {}",
                    record.len(),
                    names.len()
                ),
            );
            continue;
        }
        for (i, field) in record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(v) => stats[i].see(v.trim(), line),
                Err(e) => report(
                    line,
                    format!(
                        "column `{}`: bytes that are not UTF-8 (at byte {}); re-encode the file as UTF-8",
                        clip(&names[i]),
                        e.valid_up_to()
                    ),
                ),
            }
        }
    }
    let guard = rdr.get_mut();
    for a in std::mem::take(&mut guard.after_quotes) {
        let (line, message) = if a.line > a.quote.line {
            (
                a.quote.line,
                format!(
                    "{}: the quote at character {} opens a value that runs to line {}, where text follows its closing quote; is a closing quote missing on line {}?",
                    column(&names, a.quote.field),
                    a.quote.character,
                    a.line,
                    a.quote.line
                ),
            )
        } else {
            (
                a.line,
                format!(
                    "{}: text follows the closing quote of a quoted value (at character {}); a quote inside a quoted value is written twice (`\"\"`)",
                    column(&names, a.quote.field),
                    a.character
                ),
            )
        };
        report(line, message);
    }
    let unlisted = guard.after_quotes_total.saturating_sub(MAX_LISTED);
    let mut fields = Vec::new();
    for (name, s) in names.iter().zip(&stats) {
        let over = overrides
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone());
        if over.is_none() && s.mixed() {
            for (line, v) in &s.non_numeric {
                report(
                    *line,
                    format!(
                        "column `{name}` holds `{v}` where {} of its {} values are numbers (fix the line, or import it as text with --schema {name}=string)",
                        s.floats, s.values
                    ),
                );
            }
        }
        fields.push(Field::new(
            name,
            over.unwrap_or_else(|| data_type(s.kind())),
            true,
        ));
    }
    if !names.is_empty() {
        for (n, _) in overrides {
            if !names.contains(n) {
                report(
                    1,
                    format!("--schema names column `{n}`, which the header does not have"),
                );
            }
        }
    }
    total_bad += unlisted;
    if total_bad > 0 {
        bad.sort_by_key(|b| b.line);
        return Err(ImportError::BadLines {
            path: shown,
            lines: bad,
            total: total_bad,
        });
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Reads a (checked) CSV file as batches of `schema`, handing each to `sink`, within the default
/// [`ImportLimits`].
pub fn read(
    path: &Path,
    schema: &SchemaRef,
    sink: impl FnMut(RecordBatch) -> Result<(), crate::DataError>,
) -> Result<u64, ImportError> {
    read_with(path, schema, &ImportLimits::default(), sink)
}

/// [`read`] within `limits`. A file that no longer matches what [`infer_with`] found (it changed
/// in between) is an error, never a batch with values missing.
pub fn read_with(
    path: &Path,
    schema: &SchemaRef,
    limits: &ImportLimits,
    mut sink: impl FnMut(RecordBatch) -> Result<(), crate::DataError>,
) -> Result<u64, ImportError> {
    let shown = path.display().to_string();
    let changed = |line: u64, what: String| ImportError::Read {
        path: shown.clone(),
        message: format!("line {line}: {what} (did the file change during the import?)"),
    };
    let mut rdr = open(path, limits)?;
    let names = header(&mut rdr, &shown, limits).map_err(|p| match p {
        Problem::Fatal(e) => e,
        Problem::Line(l) => changed(l.line, l.message),
    })?;
    let columns = schema.fields().len();
    if names.len() != columns {
        return Err(changed(
            1,
            format!("{} columns, where {columns} were found", names.len()),
        ));
    }
    let mut rows = 0u64;
    let mut chunk: Vec<csv::StringRecord> = Vec::with_capacity(1024);
    let mut chunk_bytes = 0usize;
    let mut flush = |chunk: &mut Vec<csv::StringRecord>| -> Result<(), ImportError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let batch = to_batch(schema, chunk).map_err(|e| ImportError::Read {
            path: shown.clone(),
            message: e,
        })?;
        rows += batch.num_rows() as u64;
        chunk.clear();
        sink(batch).map_err(ImportError::Data)
    };
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(match problem(&rdr, e, &shown, &names, limits) {
                    Problem::Fatal(e) => e,
                    Problem::Line(l) => changed(l.line, l.message),
                });
            }
        }
        let (start, fallback) = record.position().map_or((0, 0), |p| (p.byte(), p.line()));
        let line = rdr.get_mut().line_of(start, fallback);
        if record.len() != columns {
            return Err(changed(
                line,
                format!("{} fields, where the header has {columns}", record.len()),
            ));
        }
        // A copy without the spare room of the record read into (it may have held a long one).
        let bytes = record.as_byte_record().as_slice().len();
        let mut kept = csv::StringRecord::with_capacity(bytes, columns);
        for field in &record {
            kept.push_field(field);
        }
        chunk_bytes += bytes;
        chunk.push(kept);
        if chunk.len() == BATCH_ROWS || chunk_bytes >= BATCH_BYTES {
            flush(&mut chunk)?;
            chunk_bytes = 0;
        }
    }
    flush(&mut chunk)?;
    Ok(rows)
}

/// Imports the CSV file at `path` as the staged output `stage` of `project/name`: infers its
/// schema (see [`infer_with`]), then writes its rows. On any error the stage is discarded, so the
/// dataset keeps its previous version; on success the caller commits the stage (or discards it).
/// Returns the schema and the rows written.
pub fn stage_csv(
    store: &dyn DatasetStore,
    project: &str,
    name: &str,
    stage: &str,
    path: &Path,
    overrides: &[(String, DataType)],
    limits: &ImportLimits,
) -> Result<(SchemaRef, u64), ImportError> {
    let schema = infer_with(path, overrides, limits)?;
    let rows = stage_rows(store, project, name, stage, path, &schema, limits)?;
    Ok((schema, rows))
}

/// The second half of [`stage_csv`]: the rows of `path` as `schema`, written to the stage.
fn stage_rows(
    store: &dyn DatasetStore,
    project: &str,
    name: &str,
    stage: &str,
    path: &Path,
    schema: &SchemaRef,
    limits: &ImportLimits,
) -> Result<u64, ImportError> {
    let written = (|| -> Result<u64, ImportError> {
        let mut w = store.stage(project, name, stage, schema.clone())?;
        read_with(path, schema, limits, |b| w.write(&b))?;
        Ok(w.finish()?)
    })();
    if written.is_err() {
        store.discard(project, name, stage);
    }
    written
}

fn to_batch(schema: &SchemaRef, rows: &[csv::StringRecord]) -> Result<RecordBatch, String> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        fn cell(r: &csv::StringRecord, i: usize) -> Option<&str> {
            r.get(i).map(str::trim).filter(|v| !v.is_empty())
        }
        let bad = |v: &str| {
            format!(
                "column `{}`: `{v}` is not a {}",
                f.name(),
                crate::type_name(f.data_type())
            )
        };
        let array: ArrayRef = match f.data_type() {
            DataType::Int64 => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(
                        cell(r, i)
                            .map(|v| v.parse::<i64>().map_err(|_| bad(v)))
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            DataType::Float64 => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(
                        cell(r, i)
                            .map(|v| v.parse::<f64>().map_err(|_| bad(v)))
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(
                        cell(r, i)
                            .map(|v| {
                                if is_bool(v) {
                                    Ok(v.eq_ignore_ascii_case("true"))
                                } else {
                                    Err(bad(v))
                                }
                            })
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            DataType::Date32 => {
                let mut b = Date32Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(
                        cell(r, i)
                            .map(|v| Date32Type::parse(v).ok_or_else(|| bad(v)))
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            DataType::Timestamp(_, _) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(
                        cell(r, i)
                            .map(|v| {
                                string_to_timestamp_nanos(v)
                                    .map(|n| n / 1000)
                                    .map_err(|_| bad(v))
                            })
                            .transpose()?,
                    );
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
                for r in rows {
                    b.append_option(r.get(i).filter(|v| !v.is_empty()));
                }
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("capstan-csv-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn infers_types() {
        let p = write("ok.csv", b"id,price,ok,day,at,name\n1,2.5,true,2026-01-02,2026-01-02T03:04:05Z,a\n2,3,false,2026-01-03,2026-01-02 03:04:05,\n");
        let s = infer(&p, &[]).unwrap();
        let types: Vec<String> = s
            .fields()
            .iter()
            .map(|f| crate::type_name(f.data_type()))
            .collect();
        assert_eq!(
            types,
            ["int64", "float64", "bool", "date", "timestamp", "string"]
        );
        let mut batches = Vec::new();
        assert_eq!(
            read(&p, &s, |b| {
                batches.push(b);
                Ok(())
            })
            .unwrap(),
            2
        );
        assert_eq!(batches[0].column(5).null_count(), 1);
    }

    #[test]
    fn reports_every_bad_line() {
        let mut text = b"id,amount\n1,10\n2,20,extra\n3,n/a\n4,40\n5,50\n6,6\xff0\n".to_vec();
        text.extend_from_slice(b"7,70\n8,80\n9,90\n10,100\n");
        let p = write("bad.csv", &text);
        let Err(ImportError::BadLines { lines, total, .. }) = infer(&p, &[]) else {
            panic!()
        };
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.line, l.message.as_str())).collect();
        assert_eq!(total, 3, "{got:?}");
        assert_eq!(got[0].0, 3);
        assert!(got[0].1.contains("3 fields, where the header has 2"));
        assert_eq!(got[1].0, 4);
        assert!(
            got[1].1.contains("`n/a`") && got[1].1.contains("--schema amount=string"),
            "{}",
            got[1].1
        );
        assert_eq!(got[2].0, 7);
        assert!(got[2].1.contains("not UTF-8"));
        // With the override, the mixed column imports as text (the other problems remain).
        let Err(ImportError::BadLines { total, .. }) =
            infer(&p, &[("amount".into(), DataType::Utf8)])
        else {
            panic!()
        };
        assert_eq!(total, 2);
    }

    /// The bad lines of a refused file, as `(line, message)`.
    fn refused(p: &Path, limits: &ImportLimits) -> Vec<(u64, String)> {
        match infer_with(p, &[], limits) {
            Err(ImportError::BadLines { lines, total, .. }) => {
                assert_eq!(total, lines.len());
                lines.into_iter().map(|l| (l.line, l.message)).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    /// The message of a limit reached, and which limit.
    fn limit(result: Result<SchemaRef, ImportError>) -> (&'static str, String) {
        match result {
            Err(ImportError::Limit { limit, message, .. }) => (limit, message),
            other => panic!("{other:?}"),
        }
    }

    fn small(max_line_bytes: u64) -> ImportLimits {
        ImportLimits {
            max_line_bytes,
            ..ImportLimits::default()
        }
    }

    #[test]
    fn a_duplicate_header_is_refused_with_its_columns() {
        let p = write("dup.csv", b"a,b,a, b,c,c,c\n1,2,3,4,5,6,7\n");
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [
                (
                    1,
                    "columns 1 and 3 are both named `a`; each column needs its own name".into()
                ),
                (
                    1,
                    "columns 2 and 4 are both named `b`; each column needs its own name".into()
                ),
                (
                    1,
                    "columns 5, 6 and 7 are all named `c`; each column needs its own name".into()
                ),
            ]
        );
        let p = write("unnamed.csv", b"a,,b\n1,2,3\n");
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [(1, "column 2 has no name".into())]
        );
    }

    #[test]
    fn an_unterminated_quote_is_refused_with_its_line() {
        let p = write("quote.csv", b"id,name\n1,ann\n2,\"bob\n3,cy\n4,dee\n5,ed\n");
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [(
                3,
                "column 2 (`name`): the quote at character 3 is never closed, so the rest of the file (lines 3 to 6) would be one value".into()
            )]
        );
        // Found with the other problems of the file, on the last line too.
        let p = write("quote-last.csv", b"id,name\n1,a,b\n2,x\"y\n3,\"z");
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [
                (2, "3 fields, where the header has 2".into()),
                (
                    4,
                    "column 2 (`name`): the quote at character 3 is never closed, so the rest of the file (line 4) would be one value".into()
                ),
            ]
        );
        // Characters, not bytes, counted over the reader's chunks.
        let p = write(
            "quote-far.csv",
            format!("id,name\n{},\"open\n2,3\n", "é".repeat(6000)).as_bytes(),
        );
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [(
                2,
                "column 2 (`name`): the quote at character 6002 is never closed, so the rest of the file (lines 2 to 3) would be one value".into()
            )]
        );
        // In the header, there are no names yet.
        let p = write("quote-header.csv", b"id,\"name\n1,2\n");
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [(
                1,
                "column 2: the quote at character 4 is never closed, so the rest of the file (lines 1 to 2) would be one value".into()
            )]
        );
        // Closed quotes, doubled quotes, quotes inside a value and values over lines are fine.
        let p = write(
            "quotes-ok.csv",
            "id,name\n1,\"a, \"\"b\"\"\"\n2,5\" screen\n3,\"two\nlines\"\n4,\"x\" \n5,\"\"\n6,\"é\"\n".as_bytes(),
        );
        let s = infer(&p, &[]).unwrap();
        let mut names = Vec::new();
        read(&p, &s, |b| {
            use arrow::array::Array;
            let a = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            names.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
            Ok(())
        })
        .unwrap();
        let got: Vec<Option<&str>> = names.iter().map(|n| n.as_deref()).collect();
        assert_eq!(
            got,
            [
                Some("a, \"b\""),
                Some("5\" screen"),
                Some("two\nlines"),
                Some("x "),
                None,
                Some("é")
            ]
        );
    }

    #[test]
    fn text_after_a_closing_quote_is_refused() {
        // A stray quote that a later one closes would take the lines between into one value.
        let p = write(
            "stray.csv",
            b"id,name\n1,ann\n2,\"bob\n3,cy\n4,dee\n5,\"ed\"\"\n6,\"5\" screen\"\n",
        );
        assert_eq!(
            refused(&p, &ImportLimits::default()),
            [
                (
                    3,
                    "column 2 (`name`): the quote at character 3 opens a value that runs to line 6, where text follows its closing quote; is a closing quote missing on line 3?".into()
                ),
                (
                    7,
                    "column 2 (`name`): text follows the closing quote of a quoted value (at character 7); a quote inside a quoted value is written twice (`\"\"`)".into()
                ),
            ]
        );
    }

    #[test]
    fn the_guard_finds_the_records_the_csv_reader_finds() {
        // Random files of the bytes that matter to the syntax: every record the CSV reader
        // returns starts where the guard saw one start.
        let alphabet = b"a,\"\r\n \xc3\xa9";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut text = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for _ in 0..(seed % 48) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let limits = ImportLimits::default();
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(Guard::new(text.as_slice(), &limits));
            let mut record = csv::ByteRecord::new();
            while let Ok(true) = rdr.read_byte_record(&mut record) {
                let start = record.position().unwrap().byte();
                assert_eq!(
                    rdr.get_mut().line_of(start, 0),
                    1 + text[..start as usize]
                        .iter()
                        .chain(
                            text[start as usize..]
                                .iter()
                                .take_while(|b| **b == b'\r' || **b == b'\n')
                        )
                        .filter(|b| **b == b'\n')
                        .count() as u64,
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }

    #[test]
    fn lines_are_counted_over_blank_lines_crlf_and_values_over_lines() {
        for (name, text) in [
            ("crlf.csv", "id,amount\r\n1,1\r\n2,2,2\r\n3,3\r\n"),
            ("blank.csv", "id,amount\n\n1,1\n2,2,2\n\n3,3\n"),
            ("multi.csv", "id,amount\n1,\"1\n\"\n2,2,2\n3,3\n"),
            ("cr.csv", "id,amount\n1,1\r\r\n2,2,2\r3,3\n"),
        ] {
            let p = write(name, text.as_bytes());
            let line = if name == "crlf.csv" || name == "cr.csv" {
                3
            } else {
                4
            };
            assert_eq!(
                refused(&p, &ImportLimits::default()),
                [(line, "3 fields, where the header has 2".into())],
                "{name}"
            );
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_it_whole() {
        // A line of exactly the limit is imported; one byte more is refused.
        let line = "x".repeat(62);
        let p = write(
            "limit.csv",
            format!("id,name\n1,{line}\r\n2,{line}y\n").as_bytes(),
        );
        assert_eq!(
            limit(infer_with(&p, &[], &small(64))),
            (
                "max_line_bytes",
                format!(
                    "line 3 of {} is longer than the maximum of 64 bytes (csv import limit `max_line_bytes`)",
                    p.display()
                )
            )
        );
        assert!(infer_with(&p, &[], &small(65)).is_ok());
        // With the default limit, a line of 1 MiB and a byte (the header and a line are fine).
        let p = write(
            "big.csv",
            format!("id,name\n1,{}\n", "x".repeat((1 << 20) + 1 - 2)).as_bytes(),
        );
        assert_eq!(
            limit(infer(&p, &[])).1,
            format!(
                "line 2 of {} is longer than the maximum of 1 MiB (csv import limit `max_line_bytes`)",
                p.display()
            )
        );
        let _ = std::fs::remove_file(&p);
        // An endless line: the guard stops it after the limit and what the CSV reader buffers.
        let taken = std::rc::Rc::new(std::cell::Cell::new(0u64));
        struct Counted(std::rc::Rc<std::cell::Cell<u64>>, Box<dyn Read>);
        impl Read for Counted {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.read(buf)?;
                self.0.set(self.0.get() + n as u64);
                Ok(n)
            }
        }
        let endless = Counted(
            taken.clone(),
            Box::new(b"id,name\n1,".chain(std::io::repeat(b'x'))),
        );
        let limits = small(1 << 20);
        assert_eq!(
            limit(infer_csv(
                csv_reader(endless, &limits),
                "endless.csv",
                &[],
                &limits
            ))
            .1,
            "line 2 of endless.csv is longer than the maximum of 1 MiB (csv import limit `max_line_bytes`)"
        );
        assert!(taken.get() < (1 << 20) + 64 * 1024, "{}", taken.get());
    }

    #[test]
    fn a_record_over_lines_is_held_to_the_line_limit() {
        // An open quote: the rest of the file would be one value.
        let mut text = b"id,note\n1,ok\n2,\"runs on\n".to_vec();
        for _ in 0..20 {
            text.extend_from_slice(b"3,more text\n");
        }
        let p = write("open-quote.csv", &text);
        assert_eq!(
            limit(infer_with(&p, &[], &small(64))).1,
            format!(
                "line 3 of {}: the quote at character 3 of column 2 (`note`) is still not closed on line 8, beyond the maximum of 64 bytes for a record (csv import limit `max_line_bytes`); a closing quote may be missing",
                p.display()
            )
        );
        // Closed values over lines count together.
        let p = write(
            "long-record.csv",
            b"id,a,b\n1,\"one\ntwo\",\"three\nfour\"\n2,3,4\n5,\"six\nseven\",eight nine and ten!\n",
        );
        assert_eq!(
            limit(infer_with(&p, &[], &small(32))).1,
            format!(
                "the record on lines 6 to 7 of {} is longer than the maximum of 32 bytes (csv import limit `max_line_bytes`)",
                p.display()
            )
        );
        assert!(infer_with(&p, &[], &small(33)).is_ok());
    }

    #[test]
    fn too_many_columns_are_refused() {
        let p = write("wide.csv", b"a,b,c,d\n1,2,3,4\n");
        let limits = ImportLimits {
            max_columns: 3,
            ..ImportLimits::default()
        };
        assert_eq!(
            limit(infer_with(&p, &[], &limits)),
            (
                "max_columns",
                format!(
                    "the header of {} has 4 columns, more than the maximum of 3 (csv import limit `max_columns`)",
                    p.display()
                )
            )
        );
        let header: Vec<String> = (0..4097).map(|i| format!("c{i}")).collect();
        let p = write("wider.csv", format!("{}\n", header.join(",")).as_bytes());
        assert_eq!(
            limit(infer(&p, &[])).1,
            format!(
                "the header of {} has 4097 columns, more than the maximum of 4096 (csv import limit `max_columns`)",
                p.display()
            )
        );
        let p = write(
            "wide-ok.csv",
            format!("{}\n", header[..4096].join(",")).as_bytes(),
        );
        assert_eq!(infer(&p, &[]).unwrap().fields().len(), 4096);
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let p = write("large.csv", b"id,name\n1,ann\n2,bob\n");
        let limits = ImportLimits {
            max_file_bytes: 16,
            ..ImportLimits::default()
        };
        assert_eq!(
            limit(infer_with(&p, &[], &limits)),
            (
                "max_file_bytes",
                format!(
                    "{} is 20 bytes, larger than the maximum of 16 bytes (csv import limit `max_file_bytes`)",
                    p.display()
                )
            )
        );
        // A file that grows (or a pipe) is stopped as it is read.
        let limits = ImportLimits {
            max_file_bytes: 4 << 10,
            ..ImportLimits::default()
        };
        let endless = b"id\n".chain(std::io::repeat(b'1').take(u64::MAX));
        assert_eq!(
            limit(infer_csv(
                csv_reader(endless, &limits),
                "growing.csv",
                &[],
                &limits
            ))
            .1,
            "growing.csv is larger than the maximum of 4 KiB (csv import limit `max_file_bytes`)"
        );
        assert_eq!(ImportLimits::default().max_file_bytes, 10 << 30);
        assert_eq!(size(10 << 30), "10 GiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn a_failed_import_leaves_the_previous_version() {
        let home = std::env::temp_dir().join(format!("capstan-csv-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let store = crate::ParquetStore::new(&home);
        let limits = small(64 << 10);
        let rows = |store: &crate::ParquetStore| -> Vec<i64> {
            let mut out = Vec::new();
            for b in store.read("p", "d", None, None).unwrap() {
                let b = b.unwrap();
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                out.extend(a.values().iter().copied());
            }
            out
        };
        let good = write("v1.csv", b"id,name\n1,ann\n2,bob\n");
        stage_csv(&store, "p", "d", "s1", &good, &[], &limits).unwrap();
        let import = crate::Provenance {
            written_by: crate::WrittenBy::Import {
                user: "alice".into(),
                file: Some("v1.csv".into()),
            },
            inputs: Default::default(),
            definition: Default::default(),
        };
        assert_eq!(store.commit("p", "d", "s1", &import).unwrap(), Some(1));
        assert_eq!(rows(&store), [1, 2]);
        let staging = home.join("data/p/d/.staging");
        let long = format!("id,name\n3,{}\n", "x".repeat(100_000));
        let wide = format!(
            "{}\n",
            (0..5000)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (name, text) in [
            ("long.csv", long.as_bytes()),
            ("wide.csv", wide.as_bytes()),
            ("dup.csv", b"id,id\n3,4\n".as_slice()),
            ("quote.csv", b"id,name\n3,\"cy\n4,dee\n".as_slice()),
            ("ragged.csv", b"id,name\n3,cy,x\n".as_slice()),
            ("empty.csv", b"".as_slice()),
        ] {
            let p = write(name, text);
            assert!(
                stage_csv(&store, "p", "d", "s2", &p, &[], &limits).is_err(),
                "{name}"
            );
            assert_eq!(rows(&store), [1, 2], "{name}");
            assert!(!staging.join("s2.parquet").exists(), "{name}");
        }
        // A failure in the second pass, after the stage was written to: discarded too.
        let changed = write("changed.csv", b"id,name\n3,cy\n");
        let wrong: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Int64, true),
        ]));
        let err = stage_rows(&store, "p", "d", "s3", &changed, &wrong, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read {}: column `name`: `cy` is not a int64",
                changed.display()
            )
        );
        assert!(!staging.join("s3.parquet").exists());
        assert_eq!(rows(&store), [1, 2]);
        let _ = std::fs::remove_dir_all(&home);
    }
}
