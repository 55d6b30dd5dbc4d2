//! otaforge: build, check, hash, sign, delta, upload and import over-the-air updates for
//! Azure Device Update (ADU).
//!
//! The pipeline a release goes through, and the module that owns each stage:
//!
//! 1. [`apt`] and [`manifest`] describe the update: APT manifests for `microsoft/apt:1` and ADU
//!    import manifests v5 (<https://learn.microsoft.com/azure/iot-hub-device-update/import-schema>),
//!    built deterministically and validated against every rule the service and agent enforce.
//! 2. [`hash`] computes the sizes and SHA-256 digests those documents declare.
//! 3. [`delta`] makes the payloads small: verified, streamable binary deltas.
//! 4. [`sign`] and [`mcuboot`] make them trustworthy: Ed25519 keys, detached JWS, signed release
//!    metadata, signed deltas, and MCUboot images.
//! 5. [`storage`] puts the files where the service can fetch them (Azure Blob Storage or a local
//!    directory) and hands out least-privilege read URLs.
//! 6. [`service`] drives ADU's asynchronous import API; `server` (feature `server`) is an
//!    embedded service with the same API for offline use. It depends on the rest of the
//!    library, never the reverse.
//!
//! The library never prints and never exits: it returns typed errors (one enum per module) and
//! reports progress through [`Reporter`]. The `otaforge` binary adds the command line on top.

pub mod apt;
#[cfg(feature = "server")]
pub mod dashboard;
pub mod delta;
pub mod edge;
pub mod env;
pub mod error;
pub mod finding;
pub mod fleet;
pub mod fsutil;
pub mod hash;
pub mod iothub;
pub mod limits;
pub mod manifest;
pub mod mcuboot;
pub mod pipeline;
pub mod release;
pub mod reporter;
pub mod retry;
#[cfg(feature = "server")]
pub mod server;
pub mod service;
pub mod sign;
pub mod size;
pub mod storage;
pub mod time;

pub use finding::{Finding, Findings, JsonPath, Severity};
pub use hash::{HashError, Sha256};
pub use reporter::{NoReporter, Reporter};
