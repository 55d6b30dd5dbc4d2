//! The old image as the patcher reads it: random access, through whatever the device has
//! (flash, a file, a memory map).

use crate::error::IoError;

/// Random read access to the old image (flash, a file, a memory map).
pub trait OldImage {
    /// Fills `buf` with the old image's bytes at `pos..pos + buf.len()` (always in range).
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError>;
}

impl OldImage for &[u8] {
    fn read_at(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let start = usize::try_from(pos).map_err(|_| IoError { code: -1 })?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(IoError { code: -1 })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}
