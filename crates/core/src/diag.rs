//! Diagnostics: what `capstan check` reports, with file, line, column and field.
//!
//! Loading never stops at the first problem. Every decoder pushes [`Diagnostic`]s into a
//! [`Diagnostics`] sink and carries on with what it could read, so one `check` shows every
//! mistake in every file at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Index of a file in [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub(crate) u32);

/// A place in a home file, for errors and for provenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub file: FileId,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub col: u32,
}

impl Loc {
    /// For values capstan makes itself (a managed environment), which no file wrote.
    pub const NOWHERE: Loc = Loc {
        file: FileId(u32::MAX),
        line: 0,
        col: 0,
    };
}

/// One loaded file: its path relative to the home and its text (lossy if it was not UTF-8).
#[derive(Debug)]
pub struct SourceFile {
    pub rel_path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(rel_path: PathBuf, text: String) -> SourceFile {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            rel_path,
            text,
            line_starts,
        }
    }

    /// Line and column (both 1-based) of a byte offset; offsets past the end clamp to it.
    pub fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        // Count characters, not bytes; `get` keeps a span that splits a character from panicking.
        let col = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - start,
        };
        (line as u32 + 1, col as u32 + 1)
    }
}

/// All files read while loading a home.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        FileId(self.files.len() as u32 - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn path(&self, id: FileId) -> &Path {
        &self.get(id).rel_path
    }

    pub fn find(&self, rel_path: &Path) -> Option<FileId> {
        self.files
            .iter()
            .position(|f| f.rel_path == rel_path)
            .map(|i| FileId(i as u32))
    }

    pub fn loc(&self, file: FileId, span: &Range<usize>) -> Loc {
        let (line, col) = self.get(file).line_col(span.start);
        Loc { file, line, col }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Path relative to the home.
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file (it is missing, say).
    pub line: u32,
    pub col: u32,
    /// Dotted path of the field, e.g. `exec_config.small.memory_limit`; empty for the file itself.
    pub field: String,
    pub message: String,
    /// What would have been accepted, or how to fix it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        write!(f, ": {}: ", self.severity)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while a home loads.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error_at(
        &mut self,
        sources: &SourceMap,
        loc: Loc,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push_at(sources, Severity::Error, loc, field, message.into(), help);
    }

    pub fn warning_at(
        &mut self,
        sources: &SourceMap,
        loc: Loc,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.push_at(sources, Severity::Warning, loc, field, message.into(), help);
    }

    fn push_at(
        &mut self,
        sources: &SourceMap,
        severity: Severity,
        loc: Loc,
        field: &str,
        message: String,
        help: Option<String>,
    ) {
        self.list.push(Diagnostic {
            severity,
            file: sources.path(loc.file).to_path_buf(),
            line: loc.line,
            col: loc.col,
            field: field.to_string(),
            message,
            help,
        });
    }

    /// A problem with a whole file (unreadable, missing, not UTF-8).
    pub fn file_error(&mut self, rel_path: &Path, message: impl Into<String>) {
        self.list.push(Diagnostic {
            severity: Severity::Error,
            file: rel_path.to_path_buf(),
            line: 0,
            col: 0,
            field: String::new(),
            message: message.into(),
            help: None,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }

    /// Sorted by file, then position, so output is stable whatever order checks ran in.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.field, &a.message)
                .cmp(&(&b.file, b.line, b.col, &b.field, &b.message))
        });
        self.list.dedup();
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let f = SourceFile::new("a.toml".into(), "ab\nçé = 1\n".into());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(3), (2, 1));
        // "çé" is 4 bytes, 2 characters.
        assert_eq!(f.line_col(7), (2, 3));
        // Inside a multi-byte character and past the end: no panic.
        assert_eq!(f.line_col(4).0, 2);
        assert_eq!(f.line_col(1000).0, 3);
    }
}
