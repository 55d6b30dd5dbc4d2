//! Applies otadelta files (docs/delta-format.md) on a device: `no_std`, no allocation, no
//! dependencies, Rust 1.63. It holds the op stream's [`patcher`], the raw LZMA1 decoder
//! ([`lzma`]), executable-aware prediction ([`exec`]), the journaled segment loop for in-place
//! and A/B updates ([`inplace`]) with its flash journal, and the whole checked apply a
//! firmware calls ([`device`]). The host tool `otaforge` uses this same code; firmware in C
//! links it through the C API of `otaforge-applier-capi` (`src/applier/capi`).
//!
//! Memory is lent by the caller: flash, the journal and the delta's bytes are traits
//! ([`inplace::Flash`], [`inplace::Journal`], [`image::OldImage`]); the LZMA tables, the
//! dictionary and the displacement table are slices ([`device::Work`]).

#![cfg_attr(not(any(test, feature = "std")), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod device;
pub mod error;
pub mod exec;
pub mod header;
pub mod image;
pub mod inplace;
pub mod lzma;
pub mod patcher;
pub mod sha256;
pub mod wire;

pub use error::{ApplyError, IoError, LzmaError, PatchError};
pub use exec::{Cover, CoverStore, Covers, Exec, FixedCovers};
pub use header::{Compression, Header, HeaderError, InPlace, Isa, Method};
pub use image::OldImage;
pub use patcher::{Patcher, StreamPatcher, CHECKPOINT_LEN};
