//! The update's version when `otaforge.toml` gives `version-command`: the command runs with
//! `sh -c` in the file's folder, in its own process group, with stdin closed; it has a time
//! limit and may print at most [`MAX_OUTPUT`] bytes, and when either is exceeded the whole
//! group is killed (a command's own children included) and nothing more is read.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::check::Problems;
use super::config::UpdateSection;
use crate::manifest::UpdateId;

/// What a version command may print on stdout, and what of its stderr is kept for an error: a
/// version is a few characters; 4 KiB leaves room for a banner a wrapper prints first.
pub const MAX_OUTPUT: usize = 4096;

/// Why a version command gave no version.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// `sh` could not be started.
    #[error("cannot run it with sh: {0}")]
    Spawn(std::io::Error),
    /// It ran longer than allowed.
    #[error(
        "did not finish within {}; it must print the version and exit (raise version-command-timeout if it needs longer)",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
    /// It printed more than [`MAX_OUTPUT`] bytes.
    #[error("printed more than {MAX_OUTPUT} bytes; it must print only the version")]
    TooLong,
    /// It failed.
    #[error("failed ({status}): {stderr}")]
    Failed {
        /// How it ended.
        status: ExitStatus,
        /// The start of what it printed on stderr.
        stderr: String,
    },
}

/// The update id of `[update]`: its version written, the first line of `version-file`, or
/// what `version-command` prints (run here, with `timeout`). Each problem is added to `p` with
/// the line and field it is about.
pub(super) fn resolve(
    p: &mut Problems<'_>,
    u: &UpdateSection,
    root: &Path,
    timeout: Duration,
) -> Option<UpdateId> {
    let (version, span, field) = match (&u.version, &u.version_file, &u.version_command) {
        (Some(v), _, _) => (v.value.trim().to_owned(), &v.span, "update.version"),
        (_, Some(f), _) => match fs_err::read_to_string(root.join(&f.value)) {
            Ok(t) => {
                let first = t.lines().next().unwrap_or_default().trim().to_owned();
                (first, &f.span, "update.version-file")
            }
            Err(e) => {
                p.add(&f.span, "update.version-file", e.to_string());
                return None;
            }
        },
        (_, _, Some(c)) => match run(&c.value, root, timeout) {
            Ok(v) => (v, &c.span, "update.version-command"),
            Err(e) => {
                p.add(&c.span, "update.version-command", e.to_string());
                return None;
            }
        },
        (None, None, None) => return None,
    };
    match UpdateId::new(&u.provider.value, &u.name.value, &version) {
        Ok(id) => Some(id),
        Err(e) => {
            use crate::manifest::IdError;
            let (span, field) = match &e {
                IdError::BadVersion { .. } => (span, field),
                IdError::BadPart { what: "name", .. } | IdError::DotsOnly { what: "name", .. } => {
                    (&u.name.span, "update.name")
                }
                _ => (&u.provider.span, "update.provider"),
            };
            p.add(span, field, e.to_string());
            None
        }
    }
}

/// Runs `command` in `dir` and returns what it printed, trimmed.
pub fn run(command: &str, dir: &Path, timeout: Duration) -> Result<String, VersionError> {
    use std::os::unix::process::CommandExt as _;
    let deadline = Instant::now() + timeout;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(VersionError::Spawn)?;
    let stdout = read_bounded(child.stdout.take());
    let stderr = read_bounded(child.stderr.take());
    let result = (|| {
        let out = stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| VersionError::Timeout(timeout))?;
        if out.len() > MAX_OUTPUT {
            return Err(VersionError::TooLong);
        }
        let status = wait_until(&mut child, deadline).ok_or(VersionError::Timeout(timeout))?;
        if !status.success() {
            let err = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            let err = err.unwrap_or_default();
            let text = String::from_utf8_lossy(&err[..err.len().min(MAX_OUTPUT)]);
            return Err(VersionError::Failed { status, stderr: text.trim().to_owned() });
        }
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    })();
    if result.is_err() {
        kill_group(&mut child);
    }
    result
}

/// Reads at most `MAX_OUTPUT + 1` bytes of `pipe` on a thread; the bytes arrive when the
/// pipe closes or the limit is passed. Past the limit nothing more is read, so a command that
/// keeps printing blocks until it is killed instead of filling memory.
fn read_bounded(pipe: Option<impl std::io::Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(p) = pipe {
            let _ = p.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

/// The child's exit status, or None when it is still running at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the command's whole process group (its children too, which may hold its pipes) and
/// reaps it.
#[allow(unsafe_code)] // one libc call; std can signal a child but not its process group
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads (it
        // was started with process_group(0)); no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_command_is_bounded_in_time_and_output() {
        let dir = std::env::temp_dir();
        assert_eq!(
            run("echo ' 1.2.3 '", &dir, crate::release::config::DEFAULT_VERSION_TIMEOUT).unwrap(),
            "1.2.3"
        );
        assert!(matches!(
            run("yes 1.2.3", &dir, crate::release::config::DEFAULT_VERSION_TIMEOUT),
            Err(VersionError::TooLong)
        ));
        // A child of the shell holding the pipe is killed with it.
        let t = Instant::now();
        let e = run("sleep 30; echo 1.2.3", &dir, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, VersionError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = run("echo oops >&2; exit 3", &dir, crate::release::config::DEFAULT_VERSION_TIMEOUT)
            .unwrap_err();
        assert!(e.to_string().starts_with("failed (exit status: 3): oops"), "{e}");
    }
}
