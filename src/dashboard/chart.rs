//! Charts as SVG made on the server: a horizontal bar split into segments (compliance, a
//! subgroup's progress), with an optional marker (a rollback threshold), and a timeline of
//! counts (a subgroup's progress over time). Only numbers and
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

/// One sample of a timeline: seconds, the total, one count per series.
pub(super) type Sample = (f64, u64, Vec<u64>);

/// The height of a timeline in SVG user units.
pub(super) const HEIGHT: f64 = 120.0;

/// Where a timeline's last sample lands, as a share of its width.
const LAST_AT: f64 = 0.95;

/// Points a timeline's line has at most (two per step): samples closer than a unit apart are
/// drawn as the last of them.
const MOST_STEPS: usize = 400;

/// One series of a timeline.
#[derive(Debug, Clone)]
pub(super) struct Line {
    /// What it counts.
    pub label: &'static str,
    /// The stylesheet class that colours it.
    pub class: &'static str,
    /// Its band's outline, `x,y` pairs, as SVG's `points` attribute of a polygon.
    pub points: String,
    /// Its last value.
    pub last: u64,
}

/// Counts over time: one band per series, stacked (the first at the bottom), as steps from
/// the first sample (left) to the last (at [`LAST_AT`], held to the right edge); 0 at the
/// bottom, the largest total at the top.
#[derive(Debug, Clone)]
pub(super) struct Timeline {
    /// What it shows, for its `<title>`.
    pub title: String,
    /// The largest total (the top of the chart).
    pub total: u64,
    /// The lines.
    pub lines: Vec<Line>,
    /// The first and last sample's times, as given.
    pub from: String,
    pub to: String,
}

impl Timeline {
    /// A timeline of `samples` — (seconds since any fixed time, its total, one count per
    /// series) in time order — with `series` (label, class) the lines' names.
    pub(super) fn new(
        title: String,
        series: &[(&'static str, &'static str)],
        samples: &[Sample],
        from: String,
        to: String,
    ) -> Self {
        let total = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let top = total.max(1) as f64;
        let (t0, t1) = match (samples.first(), samples.last()) {
            (Some(a), Some(b)) => (a.0, b.0),
            _ => (0.0, 0.0),
        };
        // The last sample lands at LAST_AT of the width: what holds since it (now, on a
        // deployment's page) stays visible to the right edge.
        let span = if t1 > t0 { (t1 - t0) / LAST_AT } else { 1.0 };
        let x = |t: f64| ((t - t0) / span * WIDTH).clamp(0.0, WIDTH);
        let y = |v: u64| HEIGHT - v as f64 / top * HEIGHT;
        // One sample per step: the last in each of MOST_STEPS slices of the span.
        let mut kept: Vec<&Sample> = Vec::new();
        for s in samples {
            let slice = |t: f64| ((x(t) / WIDTH) * (MOST_STEPS - 1) as f64) as usize;
            let n = kept.len();
            if n > 1 && slice(kept[n - 1].0) == slice(s.0) {
                kept[n - 1] = s;
            } else {
                kept.push(s);
            }
        }
        // The step path of `v` through the kept samples, left to right.
        let path = |v: &dyn Fn(&Sample) -> u64| {
            let mut points = Vec::new();
            let mut before: Option<u64> = None;
            for s in &kept {
                let now = v(s);
                if let Some(b) = before {
                    points.push((x(s.0), y(b)));
                }
                points.push((x(s.0), y(now)));
                before = Some(now);
            }
            if let Some(last) = before {
                // The last sample holds to the right edge (a single one is a level across).
                points.push((WIDTH, y(last)));
            }
            points
        };
        let sum = |s: &Sample, n: usize| s.2.iter().take(n).sum::<u64>();
        let lines = series
            .iter()
            .enumerate()
            .map(|(i, &(label, class))| {
                // Stacked: this series' band lies between the sum of those before it and that
                // sum plus its own count.
                let mut band = path(&|s| sum(s, i + 1));
                band.extend(path(&|s| sum(s, i)).into_iter().rev());
                let points = if kept.is_empty() {
                    String::new()
                } else {
                    band.iter()
                        .map(|(x, y)| format!("{},{}", units(*x), units(*y)))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let last = kept.last().map_or(0, |s| s.2.get(i).copied().unwrap_or(0));
                Line { label, class, points, last }
            })
            .collect();
        Self { title, total, lines, from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_stacks_its_bands_in_steps_from_the_first_sample_to_the_last() {
        let series = [("succeeded", "ok"), ("failed", "failed")];
        let samples = [(10.0, 4, vec![0, 0]), (20.0, 4, vec![2, 1]), (30.0, 4, vec![4, 0])];
        let t = Timeline::new("t".into(), &series, &samples, "a".into(), "b".into());
        assert_eq!(t.total, 4);
        // Succeeded: from 0 up its own steps, back along 0.
        assert_eq!(
            t.lines[0].points,
            "0.0,120.0 190.0,120.0 190.0,60.0 380.0,60.0 380.0,0.0 400.0,0.0 \
             400.0,120.0 380.0,120.0 380.0,120.0 190.0,120.0 190.0,120.0 0.0,120.0"
        );
        // Failed: on top of succeeded (2 + 1 = 3 at the second sample), back along it.
        assert_eq!(
            t.lines[1].points,
            "0.0,120.0 190.0,120.0 190.0,30.0 380.0,30.0 380.0,0.0 400.0,0.0 \
             400.0,0.0 380.0,0.0 380.0,60.0 190.0,60.0 190.0,120.0 0.0,120.0"
        );
        assert_eq!((t.lines[0].last, t.lines[1].last), (4, 0));
        let one = Timeline::new("t".into(), &series, &samples[1..2], "a".into(), "a".into());
        assert_eq!(one.lines[0].points, "0.0,60.0 400.0,60.0 400.0,120.0 0.0,120.0");
        let none = Timeline::new("t".into(), &series, &[], "".into(), "".into());
        assert!(none.lines[0].points.is_empty());
    }

    #[test]
    fn a_long_timeline_keeps_one_step_per_slice() {
        let samples: Vec<Sample> =
            (0..100_000).map(|i| (f64::from(i), 100_000, vec![i as u64])).collect();
        let t = Timeline::new("t".into(), &[("s", "ok")], &samples, "a".into(), "b".into());
        let points = t.lines[0].points.split(' ').count();
        assert!(points <= 4 * (MOST_STEPS + 1), "{points} points");
        assert_eq!(t.lines[0].last, 99_999, "the last sample is always drawn");
    }

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
