//! The one error for a file the program could not read, write, create or move: which file, what
//! was being done, and what the operating system said. Every module's error wraps it, so a file
//! problem reads the same wherever it happens.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A file or folder operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done, as a verb phrase that reads before the path ("read", "create the
    /// episode").
    pub action: Cow<'static, str>,
    /// The file or folder.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// The error of `action` on `path`.
    pub fn new(action: impl Into<Cow<'static, str>>, path: impl Into<PathBuf>, source: std::io::Error) -> FileError {
        FileError { action: action.into(), path: path.into(), source }
    }

    /// For `map_err`: turns the OS error of `action` on `path` into a `FileError`.
    pub fn at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
        move |source| FileError::new(action, path, source)
    }
}

/// Replaces `path` whole: the bytes go to a file beside it, synced, then renamed over it, so a
/// crash leaves the old contents or the new, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(FileError::at("create", &tmp))?;
    std::io::Write::write_all(&mut f, bytes).and_then(|()| f.sync_all()).map_err(FileError::at("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(FileError::at("rename", &tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_where_and_why() {
        let path = Path::new("/nonexistent/skill.toml");
        let e = std::fs::read(path).map_err(FileError::at("read", path)).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cannot read /nonexistent/skill.toml: "), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
