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
    let mut file = AtomicFile::new(path)?;
    file.write_all(bytes).map_err(|e| annotate(e, path))?;
    file.commit(overwrite)
}

/// Adds the path to an I/O error's message, keeping its kind.
pub fn annotate(err: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A read-only view of a whole file: memory-mapped, or empty for an empty file.
pub enum Mapped {
    /// A memory map of the file.
    Map(memmap2::Mmap),
    /// The file is empty (zero-length maps are not allowed).
    Empty,
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

/// Maps `path` read-only.
///
/// Callers must treat the bytes as untrusted input that may change under them if another process
/// writes the file; every user in this crate verifies a digest of what it read before relying on
/// it, and a truncation by another process while mapped ends the process with SIGBUS, as for any
/// tool that maps its inputs (bspatch, zstd).
pub fn map_file(path: &Path) -> std::io::Result<Mapped> {
    let file = fs_err::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Mapped::Empty);
    }
    #[allow(unsafe_code)]
    // SAFETY: the map is read-only and private to this process; see the function's docs for
    // what happens if another process modifies or truncates the file while it is mapped.
    let map = unsafe { memmap2::Mmap::map(file.file()) }.map_err(|e| annotate(e, path))?;
    Ok(Mapped::Map(map))
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// A file written through a temp file in the destination's directory and renamed into place by
/// [`AtomicFile::commit`]. Dropped without a commit, the temp file is deleted.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`.
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".otaforge-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| annotate(e, dir))?;
        Ok(Self { tmp, path: path.to_path_buf() })
    }

    /// Sets the permission bits (Unix) the file will have once committed; the temp file starts
    /// as 0600.
    pub fn set_mode(&mut self, mode: u32) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let perm = std::fs::Permissions::from_mode(mode);
            self.tmp.as_file().set_permissions(perm).map_err(|e| annotate(e, self.tmp.path()))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    }

    /// Like [`AtomicFile::commit`], but to another path (in the same directory or file system).
    pub fn commit_to(mut self, path: &Path, overwrite: bool) -> std::io::Result<()> {
        self.path = path.to_path_buf();
        self.commit(overwrite)
    }

    /// Flushes to disk and renames into place. Without `overwrite`, an existing destination is
    /// an [`std::io::ErrorKind::AlreadyExists`] error and the temp file is deleted.
    pub fn commit(self, overwrite: bool) -> std::io::Result<()> {
        self.tmp.as_file().sync_all().map_err(|e| annotate(e, self.tmp.path()))?;
        let path = self.path;
        if overwrite {
            self.tmp.persist(&path).map_err(|e| annotate(e.error, &path))?;
        } else {
            // `persist_noclobber` fails with AlreadyExists instead of replacing an existing file,
            // which closes the race between an existence check and the rename.
            self.tmp.persist_noclobber(&path).map_err(|e| annotate(e.error, &path))?;
        }
        Ok(())
    }
}
