//! Config errors that point at the offending place: `file:line:column`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config that cannot be used. Every variant names the file; parse and
/// validation errors also name the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    #[error("{path}: {message}", path = .path.display())]
    File { path: PathBuf, message: String },
}

/// A place in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// The text of one config file, for turning byte spans into locations.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column of byte offset `at`.
    pub fn location(&self, at: usize) -> Location {
        let at = at.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..at].chars().count() + 1;
        Location {
            path: self.path.to_owned(),
            line,
            column,
        }
    }

    /// An error at a span of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: self.location(span.start),
            message: message.into(),
        }
    }

    /// An error about the whole file (a required section missing, say).
    pub fn file_error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::File {
            path: self.path.to_owned(),
            message: message.into(),
        }
    }

    /// Turns a toml parse or type error into a located error.
    pub fn toml_error(&self, e: toml::de::Error) -> ConfigError {
        let at = self.location(e.span().map_or(0, |s| s.start));
        ConfigError::Invalid {
            at,
            message: e.message().trim().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_lines_and_columns() {
        let s = Source {
            path: Path::new("x.toml"),
            text: "a = 1\nbb = 2\n",
        };
        assert_eq!(s.location(0).to_string(), "x.toml:1:1");
        assert_eq!(s.location(6).to_string(), "x.toml:2:1");
        assert_eq!(s.location(11).to_string(), "x.toml:2:6");
    }
}
