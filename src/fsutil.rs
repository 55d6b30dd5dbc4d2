//! File-system helpers shared by every module that writes user-visible files.
//!
//! Writes never leave a half-written file behind: data goes to a temporary file in the target
//! directory, is flushed to disk, and only then renamed over the destination. [`OutputFile`] is
//! the one way a command writes what `-o` names, and it never destroys what it replaces: `-`
//! is stdout; a character device or FIFO is written through; a symlink is followed, so the rename
//! lands on its target; an existing file keeps its mode and owner; a new file gets the umask's
//! mode (private keys 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
///
/// When `overwrite` is false and `path` already exists, nothing is written and the error kind is
/// [`std::io::ErrorKind::AlreadyExists`].
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> std::io::Result<()> {
    let mut file = AtomicFile::new(path)?;
    file.write_all(bytes).map_err(|e| annotate(e, path))?;
    file.commit(overwrite)
}

/// Writes a command's output (`-o`) in one go through [`OutputFile`].
pub fn write_output(path: &Path, bytes: &[u8], privacy: Privacy) -> std::io::Result<()> {
    let mut out = OutputFile::create(path, privacy)?;
    out.write_all(bytes).map_err(|e| annotate(e, path))?;
    out.commit()
}

/// Who may read a new output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privacy {
    /// The umask decides, as for any file a tool creates (usually 0644).
    Public,
    /// Only the owner (0600): private keys.
    Private,
}

/// Where a command's output goes, decided once from what `-o` names. Write to it, then
/// [`OutputFile::commit`]; dropped without a commit, a replaced file is left as it was.
pub struct OutputFile {
    sink: Sink,
    path: PathBuf,
}

enum Sink {
    /// A regular file (existing or new), written through a temp file and renamed into place.
    Replace(AtomicFile),
    /// A character device or FIFO, written in place: renaming over it would destroy it.
    Through(fs_err::File),
    /// `-`.
    Stdout(std::io::Stdout),
}

/// Whether an output named `path` is written as a stream (stdout, a device, a FIFO) rather than
/// replaced when complete.
pub fn streams_to(path: &Path) -> bool {
    if path == Path::new("-") {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        follow_symlinks(path)
            .and_then(fs_err::metadata)
            .is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    false
}

/// How many symlinks are followed before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

impl OutputFile {
    /// Opens the output `path` names: `-` is stdout.
    pub fn create(path: &Path, privacy: Privacy) -> std::io::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self { sink: Sink::Stdout(std::io::stdout()), path: path.to_owned() });
        }
        let target = follow_symlinks(path)?;
        let sink = match fs_err::metadata(&target) {
            Ok(meta) => Self::existing(&target, &meta, privacy)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Sink::Replace(AtomicFile::new_with_mode(&target, privacy.new_mode())?)
            }
            Err(e) => return Err(e),
        };
        Ok(Self { sink, path: target })
    }

    fn existing(
        target: &Path,
        meta: &std::fs::Metadata,
        privacy: Privacy,
    ) -> std::io::Result<Sink> {
        let refuse = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: is {what}; give a file, a device, a FIFO or - for stdout",
                    target.display()
                ),
            )
        };
        if meta.is_dir() {
            return Err(refuse("a directory"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
            let ft = meta.file_type();
            if ft.is_char_device() || ft.is_fifo() {
                let f = fs_err::OpenOptions::new().write(true).open(target)?;
                return Ok(Sink::Through(f));
            }
            if ft.is_block_device() {
                return Err(refuse("a block device (write it with dd, not through otaforge)"));
            }
            if ft.is_socket() {
                return Err(refuse("a socket"));
            }
            let mut tmp = AtomicFile::new(target)?;
            tmp.set_mode(privacy.mode_of_existing(meta.permissions().mode() & 0o7777))?;
            // Keep the owner where this process may (as root, or the same user); otherwise the
            // new file is ours, as after any editor's save.
            let (uid, gid) = (meta.uid(), meta.gid());
            match std::os::unix::fs::fchown(tmp.tmp.as_file(), Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(annotate(e, tmp.tmp.path())),
            }
            Ok(Sink::Replace(tmp))
        }
        #[cfg(not(unix))]
        Ok(Sink::Replace(AtomicFile::new(target)?))
    }

    /// What the output is written to (the symlink's target, where `-o` named a symlink).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether bytes reach their destination as they are written (stdout, a device, a FIFO), so
    /// a failure found after writing cannot be undone; callers say so in the error.
    pub fn is_streaming(&self) -> bool {
        !matches!(self.sink, Sink::Replace(_))
    }

    /// Finishes: renames a replaced file into place, or flushes a stream.
    pub fn commit(self) -> std::io::Result<()> {
        match self.sink {
            Sink::Replace(tmp) => tmp.commit(true),
            Sink::Through(mut f) => f.flush(),
            Sink::Stdout(mut s) => s.flush(),
        }
    }
}

impl Privacy {
    /// The mode a replaced file keeps: its own, except that a private one loses whatever
    /// group and others could do (a key file that existed with a loose mode becomes 0600).
    fn mode_of_existing(self, mode: u32) -> u32 {
        match self {
            Privacy::Public => mode,
            Privacy::Private => mode & !0o077,
        }
    }

    fn new_mode(self) -> Option<u32> {
        match self {
            Privacy::Public => Some(0o666),
            Privacy::Private => None,
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.sink {
            Sink::Replace(t) => t.write(buf),
            Sink::Through(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Replace(t) => t.flush(),
            Sink::Through(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

/// Reads a secret file (a key, a connection string) and takes away whatever group and others
/// may do with it, so a file that existed before with a loose mode is 0600 (or tighter) from
/// then on. A file this process may not change (another user's) is read and left as it is.
pub fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = fs_err::read(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs_err::metadata(path)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            match fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(bytes)
}

/// `path` with every symlink along its last component followed; a dangling link gives the path
/// the link points to (which is then created).
fn follow_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match fs_err::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs_err::read_link(&p)?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{}: more than {MAX_SYMLINKS} symlinks to follow", path.display()),
    ))
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

/// Bytes read in passes, whose memory a pass may give back when it is done with a range (a
/// delta's new image: hashed, matched front to back, then read again).
pub trait Pages: Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// Nothing reads `range` again until a later pass: a mapped file's pages there may be
    /// dropped (the next read brings them back from the file). Memory held otherwise stays.
    fn release(&self, _range: std::ops::Range<usize>) {}
}

impl Pages for [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Pages for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Pages for Mapped {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn release(&self, range: std::ops::Range<usize>) {
        let Mapped::Map(map) = self else { return };
        // Whole pages only, inside the range: a page partly outside may still be in use.
        const PAGE: usize = 4096;
        let start = range.start.div_ceil(PAGE) * PAGE;
        let end = range.end.min(map.len()) / PAGE * PAGE;
        if start < end {
            #[allow(unsafe_code)]
            // SAFETY: the map is a private, read-only map of a file (PROT_READ; nothing can
            // write it), so MADV_DONTNEED only drops clean pages, and the next read of them
            // faults them in again from the file: no reference sees different bytes unless
            // another process wrote the file, the case `map_file` documents (every user
            // checks a digest). A failure only means the pages stay.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
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
    /// Starts writing `path`; the temp file is 0600 until [`AtomicFile::set_mode`].
    pub fn new(path: &Path) -> std::io::Result<Self> {
        Self::new_with_mode(path, None)
    }

    /// Starts writing `path`, creating the temp file with `mode` less the umask (Unix), as
    /// `open(2)` does for a new file; `None` keeps 0600.
    pub fn new_with_mode(path: &Path, mode: Option<u32>) -> std::io::Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut b = tempfile::Builder::new();
        b.prefix(".otaforge-").suffix(".tmp");
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt as _;
            b.permissions(std::fs::Permissions::from_mode(mode));
        }
        #[cfg(not(unix))]
        let _ = mode;
        let tmp = b.tempfile_in(dir).map_err(|e| {
            // tempfile's message names its random temp path; say what the user can act on.
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "the folder does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                k => k.to_string(),
            };
            std::io::Error::new(e.kind(), format!("cannot write into {}: {why}", dir.display()))
        })?;
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

/// The soft limit of open files this process has now.
#[allow(unsafe_code)] // one libc call on a struct we own; std has no rlimit API
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 here, not on every target
pub fn open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim.rlim_cur as u64)
}

/// Makes sure this process may hold `want` open files: raises the soft limit (towards the hard
/// limit) when it is lower, as servers holding a connection per client do. When the hard limit
/// is lower than `want`, raises it that far and errors naming both, so the fix (`ulimit -n`)
/// is plain.
#[allow(unsafe_code)] // two libc calls on a struct we own; std has no rlimit API
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 here, not on every target
pub fn raise_open_files(want: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur as u64 >= want {
        return Ok(());
    }
    let was = lim.rlim_cur;
    lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (lim.rlim_cur as u64) < want {
        return Err(std::io::Error::other(format!(
            "the open-file limit is {was} (hard {}); raise it with `ulimit -n {want}` or run fewer",
            lim.rlim_max
        )));
    }
    Ok(())
}

#[cfg(test)]
mod private_tests {
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &std::path::Path) -> u32 {
        fs_err::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_private_file_that_existed_with_a_loose_mode_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        fs_err::write(&key, b"secret").unwrap();
        fs_err::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(super::read_private(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        fs_err::set_permissions(&key, std::fs::Permissions::from_mode(0o664)).unwrap();
        super::write_output(&key, b"new", super::Privacy::Private).unwrap();
        assert_eq!(mode(&key), 0o600, "a replaced private output");
        let public = dir.path().join("p.txt");
        fs_err::write(&public, b"x").unwrap();
        fs_err::set_permissions(&public, std::fs::Permissions::from_mode(0o664)).unwrap();
        super::write_output(&public, b"y", super::Privacy::Public).unwrap();
        assert_eq!(mode(&public), 0o664, "a public one keeps its mode");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages given back are read again from the file, the same bytes; ranges that end outside
    /// the map or hold no whole page are harmless.
    #[test]
    fn released_pages_read_back_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes: Vec<u8> =
            (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        fs_err::write(&path, &bytes).unwrap();
        let map = map_file(&path).unwrap();
        assert!(map.bytes() == &bytes[..]);
        map.release(0..bytes.len());
        map.release(5000..9000);
        map.release(100..200);
        map.release(250_000..1 << 30);
        assert!(map.bytes() == &bytes[..]);
        let empty = dir.path().join("empty");
        fs_err::write(&empty, b"").unwrap();
        let none = map_file(&empty).unwrap();
        none.release(0..10);
        assert!(none.bytes().is_empty());
    }
}
