//! edgeHub routes and Edge deployment manifests from arbitrary bytes: a route parses or is
//! refused with a position inside it (or just past its end); a manifest validates to findings
//! or is refused as not JSON; neither panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaforge::edge::manifest::{Kind, validate};
use otaforge::edge::route::Route;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Route::parse(&text) {
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
    for kind in [Kind::Base, Kind::Layered] {
        let _ = validate(data, kind);
    }
});
