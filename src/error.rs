//! One stable code per library error, for the command line's failure object
//! (`{"error": CODE, "message": ...}`): each module's error enum implements [`ErrorCode`], and
//! [`code_of`] finds it behind a `dyn Error`, so a caller holding a chain of causes needs no
//! list of error types of its own.

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

/// The [`ErrorCode`] of `e` when it is one of the library's errors or an I/O error.
pub fn code_of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a dyn ErrorCode> {
    macro_rules! first_of {
        ($($t:ty),* $(,)?) => {
            $( if let Some(x) = e.downcast_ref::<$t>() { return Some(x); } )*
        };
    }
    first_of!(
        std::io::Error,
        crate::sign::SignError,
        crate::storage::StorageError,
        crate::mcuboot::McubootError,
        crate::iothub::IotHubError,
        crate::time::TimeError,
        crate::size::SizeError,
        crate::service::ServiceError,
        crate::fleet::FleetError,
        crate::release::ReleaseError,
    );
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_error_has_its_code_behind_dyn_error() {
        let code = |e: &(dyn std::error::Error + 'static)| code_of(e).map(|c| c.code());
        let io = std::io::Error::new(ErrorKind::NotFound, "gone");
        assert_eq!(code(&io).as_deref(), Some("notFound"));
        let hub = crate::iothub::IotHubError::Api {
            operation: "read".into(),
            status: 404,
            code: "DeviceNotFound".into(),
            message: "no such device".into(),
        };
        assert_eq!(code(&hub).as_deref(), Some("DeviceNotFound"));
        let fleet = crate::fleet::FleetError::Hub(hub);
        assert_eq!(code(&fleet).as_deref(), Some("DeviceNotFound"));
        let size = crate::size::parse_size("x").unwrap_err();
        assert_eq!(code(&size).as_deref(), Some("invalidValue"));
        let sign = crate::sign::SignError::Io(std::io::Error::from(ErrorKind::PermissionDenied));
        assert_eq!(code_of(&sign).and_then(ErrorCode::io_kind), Some(ErrorKind::PermissionDenied));
        let other: Box<dyn std::error::Error> = "plain".into();
        assert!(code_of(other.as_ref()).is_none());
    }
}
