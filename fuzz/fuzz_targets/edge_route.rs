//! edgeHub routes and Edge deployment manifests from arbitrary bytes: a route parses or is
//! refused with a position inside it (or just past its end); a manifest validates to findings
//! or is refused as not JSON; neither panics.
//!
//! An input starting with `*` is a long flat chain: the next two bytes are a repeat count and
//! the rest a fragment (` OR a = 1`, ` + 1`, ...) repeated after `FROM /* WHERE a = 1` and
//! before `INTO $upstream`, parsed on a thread with a small stack, so any recursion that grows
//! with the chain's length crashes the target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::edge::manifest::{Kind, validate};
use otaforge::edge::route::Route;

/// The repeat mode's stack: 1 MiB. Nesting is bounded (64 levels, a few frames each) and
/// needs more than 256 KiB under AddressSanitizer (a run found `*` + `%\n(`: 64 nested
/// parentheses overflowed 256 KiB); a recursion per term of a chain of up to [`MOST_BYTES`]
/// still overflows 1 MiB (a frame per term of more than five bytes per fragment byte).
const STACK: usize = 1 << 20;

/// The longest chain the repeat mode builds. (1,000,000 bytes ran at 11 to 90 inputs a second
/// under AddressSanitizer; this runs ten times as many.)
const MOST_BYTES: usize = 200_000;

fuzz_target!(|data: &[u8]| {
    if let [b'*', hi, lo, fragment @ ..] = data {
        let times = (usize::from(*hi) << 8 | usize::from(*lo)) * 4;
        let fragment = String::from_utf8_lossy(fragment);
        let times = times.min(MOST_BYTES / fragment.len().max(1));
        let text = format!("FROM /* WHERE a = 1{} INTO $upstream", fragment.repeat(times));
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || route(&text))
            .expect("a thread")
            .join()
            .expect("no panic on a small stack");
        return;
    }
    route(&String::from_utf8_lossy(data));
    for kind in [Kind::Base, Kind::Layered] {
        let _ = validate(data, kind);
    }
});

fn route(text: &str) {
    match Route::parse(text) {
        Ok(r) => {
            let _ = (r.source_module(), r.sink_module());
            for w in &r.warnings {
                assert!(w.position >= 1 && w.position <= text.chars().count() + 1);
            }
        }
        Err(e) => {
            let len = text.chars().count();
            assert!(e.position >= 1 && e.position <= len + 1, "position {} of {len}", e.position);
        }
    }
}
