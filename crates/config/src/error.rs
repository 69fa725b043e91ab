//! Configuration errors that name the file, the key and the problem.

use std::fmt;
use std::path::PathBuf;

/// A configuration file that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Dotted key path (`host[2].mac`); empty for whole-file problems.
    pub key: String,
    /// What is wrong, in words.
    pub problem: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.problem
            )
        }
    }
}
