//! Charts as SVG made on the server: a horizontal bar split into segments (compliance, a
//! subgroup's progress), with an optional marker (a rollback threshold). Only numbers and
//! fixed class names reach the SVG; colours come from the stylesheet, so the chart needs
//! neither script nor inline style.

/// The width of a bar in SVG user units (the stylesheet scales it).
pub(super) const WIDTH: f64 = 400.0;

/// One part of a bar.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    /// What it counts (`succeeded`, `on latest update`).
    pub label: &'static str,
    /// The stylesheet class that colours it (`ok`, `failed`, `busy`, `idle`, `canceled`).
    pub class: &'static str,
    /// Its count.
    pub value: u64,
    /// Where it starts and how wide it is, in SVG units, as text.
    pub x: String,
    pub width: String,
}

/// A bar: segments over a total, and perhaps a marker.
#[derive(Debug, Clone)]
pub(super) struct Bar {
    /// What the bar shows, for its `<title>` (screen readers read it).
    pub title: String,
    /// The whole the segments are parts of.
    pub total: u64,
    /// The parts, left to right (zero-width ones are left out).
    pub segments: Vec<Segment>,
    /// A vertical line at a share of the total, with its label.
    pub marker: Option<(String, String)>,
}

fn units(v: f64) -> String {
    format!("{v:.1}")
}

impl Bar {
    /// A bar of `parts` (label, class, count) over `total` (at least their sum).
    pub(super) fn new(
        title: String,
        total: u64,
        parts: &[(&'static str, &'static str, u64)],
    ) -> Self {
        let sum: u64 = parts.iter().map(|p| p.2).sum();
        let whole = total.max(sum).max(1) as f64;
        let mut x = 0.0;
        let mut segments = Vec::new();
        for &(label, class, value) in parts {
            if value == 0 {
                continue;
            }
            let width = value as f64 / whole * WIDTH;
            segments.push(Segment { label, class, value, x: units(x), width: units(width) });
            x += width;
        }
        Self { title, total: total.max(sum), segments, marker: None }
    }

    /// The bar with a marker at `share` (0 to 1) of its width.
    pub(super) fn with_marker(mut self, share: f64, label: String) -> Self {
        self.marker = Some((units(share.clamp(0.0, 1.0) * WIDTH), label));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_fill_their_share_and_empty_ones_are_left_out() {
        let b = Bar::new("t".into(), 10, &[("a", "ok", 5), ("b", "failed", 0), ("c", "busy", 5)]);
        assert_eq!(b.segments.len(), 2);
        assert_eq!((b.segments[0].x.as_str(), b.segments[0].width.as_str()), ("0.0", "200.0"));
        assert_eq!((b.segments[1].x.as_str(), b.segments[1].width.as_str()), ("200.0", "200.0"));
        let empty = Bar::new("t".into(), 0, &[]).with_marker(2.0, "m".into());
        assert_eq!(empty.marker.unwrap().0, "400.0", "a marker stays inside the bar");
    }
}
