//! The C API of the otadelta applier (`otaforge-applier`): what firmware in C links as a static
//! library (`libotadelta.a`) with the header `include/otadelta.h`, generated from this crate
//! by cbindgen (`cbindgen.toml`; `cargo xtask ci` checks the committed header is current).
//!
//! Flash, the journal, the old image and the delta's bytes are callbacks the firmware
//! supplies ([`OtadeltaFlash`], [`OtadeltaReader`], [`OtadeltaJournal`]); the decoder's tables,
//! dictionary and displacement table are buffers it lends ([`OtadeltaWork`]), sized by
//! [`otadelta_inspect`]. Nothing is allocated. Every function returns [`OTADELTA_OK`] or a
//! negative `OTADELTA_ERR_*` code ([`otadelta_error_message`] names it); after any error, a
//! power cut included, calling the same apply again carries on from the journal.
//!
//! On a bare-metal target (`target_os = "none"`) the crate is `no_std` and brings its own panic
//! handler; on a hosted one it links std (the host test harness).

#![cfg_attr(target_os = "none", no_std)]

mod ffi;

pub use ffi::*;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // The applier checks every bound before indexing, so this is not reached on any input
    // (the fuzz targets hold it to that); a device's watchdog resets it if it ever is.
    loop {}
}
