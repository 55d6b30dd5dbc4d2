//! File-system helpers shared by every module that writes user-visible files.
//!
//! Writes never leave a half-written file behind: data goes to a temporary file in the target
//! directory, is flushed to disk, and only then renamed over the destination.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
///
/// When `overwrite` is false and `path` already exists, nothing is written and the error kind is
/// [`std::io::ErrorKind::AlreadyExists`].
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".otaforge-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| annotate(e, dir))?;
    tmp.write_all(bytes).map_err(|e| annotate(e, tmp.path()))?;
    tmp.as_file().sync_all().map_err(|e| annotate(e, tmp.path()))?;
    if overwrite {
        tmp.persist(path).map_err(|e| annotate(e.error, path))?;
    } else {
        // `persist_noclobber` fails with AlreadyExists instead of replacing an existing file,
        // which closes the race between an existence check and the rename.
        tmp.persist_noclobber(path).map_err(|e| annotate(e.error, path))?;
    }
    Ok(())
}

/// Adds the path to an I/O error's message, keeping its kind.
pub fn annotate(err: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}
