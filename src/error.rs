//! One stable code per library error, for the command line's failure object
//! (`{"error": CODE, "message": ...}`): each module's error enum implements [`ErrorCode`]. This
//! module names no error type of the others (they depend on it, never the reverse); the command
//! line finds the code behind a `dyn Error` with the one list of error types it keeps.

use std::io::ErrorKind;

/// A stable code for an error.
pub trait ErrorCode {
    /// A camelCase name of what went wrong (`badSignature`, `invalidValue`), or the remote
    /// service's own code (`UpdateNotFound`, `DeviceNotFound`).
    fn code(&self) -> String;

    /// The file-system error this is, when that is what it is: a missing or unreadable file is
    /// reported as such, whichever layer met it.
    fn io_kind(&self) -> Option<ErrorKind> {
        None
    }
}

impl ErrorCode for std::io::Error {
    fn code(&self) -> String {
        match self.kind() {
            ErrorKind::NotFound => "notFound",
            ErrorKind::PermissionDenied => "permissionDenied",
            ErrorKind::AlreadyExists => "alreadyExists",
            _ => "io",
        }
        .into()
    }

    fn io_kind(&self) -> Option<ErrorKind> {
        Some(self.kind())
    }
}
