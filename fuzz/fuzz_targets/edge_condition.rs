//! Target conditions from arbitrary text: each parses or is refused with a position inside the
//! text (or just past its end), never a panic; what parses evaluates against a twin without
//! panicking, and parsing is deterministic.
//!
//! An input starting with `*` is a long flat chain: the next two bytes are a repeat count and
//! the rest a fragment (` OR a = 1`, ` + 1`, ...) appended that many times to `a = 1`; it is
//! parsed and evaluated on a thread with a small stack, as serve's workers have, so any
//! recursion that grows with the chain's length crashes the target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::iothub::condition::Target;

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
        let text = format!("a = 1{}", fragment.repeat(times));
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || check(&text))
            .expect("a thread")
            .join()
            .expect("no panic on a small stack");
        return;
    }
    check(&String::from_utf8_lossy(data));
});

fn check(text: &str) {
    match Target::parse(text) {
        Ok(t) => {
            assert_eq!(Target::parse(text).ok(), Some(t.clone()), "parse is deterministic");
            let twin = serde_json::json!({
                "deviceId": "d1", "tags": {"a": 1, "b": "x", "c": {"d": [1, null]}},
                "properties": {"reported": {"v": 2.5}, "desired": {"$version": 3}},
                "capabilities": {"iotEdge": true},
            });
            let _ = t.matches(&twin);
        }
        Err(e) => {
            let len = text.chars().count();
            assert!(e.position >= 1 && e.position <= len + 1, "position {} of {len}", e.position);
        }
    }
}
