//! The geometry of the report's inline SVG charts: a migration-state
//! timeline per case and a v1 pending/data_size chart. Only numbers and
//! text are computed here; the template draws them (and escapes the text).

use crate::stats::{human_bytes, human_duration};
use results::{CaseResult, StepRecord, StepReturn, V1Iteration};

/// v2 states top to bottom: running ones, then stopped and saving ones,
/// then ERROR. Any other name (v1 states) follows in order of appearance.
const STATE_ORDER: [&str; 8] = [
    "RUNNING",
    "RUNNING_P2P",
    "PRE_COPY",
    "PRE_COPY_P2P",
    "STOP",
    "STOP_COPY",
    "RESUMING",
    "ERROR",
];

const ROLE_COLORS: [&str; 4] = ["#2563eb", "#0d9488", "#9333ea", "#c2410c"];

const WIDTH: u32 = 900;
const LEFT: u32 = 118;
const RIGHT: u32 = 16;
const TOP: u32 = 26;
const ROW: u32 = 24;
const BOTTOM: u32 = 26;
/// Markers closer than this many pixels on one lane merge into one.
const BUCKET_PX: f64 = 4.0;
/// Least distance between two size labels on one state line.
const LABEL_GAP_PX: f64 = 46.0;
/// Up to this many data markers are labelled with their size.
const MAX_LABELS: usize = 14;

pub struct Label {
    pub x: String,
    pub y: String,
    pub text: String,
}

pub struct Lane {
    pub role: String,
    pub color: &'static str,
    pub d: String,
}

pub struct Marker {
    pub x: String,
    pub y: String,
    pub r: String,
    pub color: &'static str,
    pub title: String,
    pub label: Option<Label>,
}

pub struct LegendItem {
    pub text: String,
    pub color: &'static str,
}

pub struct Band {
    pub x: String,
    pub w: String,
    pub text: Label,
}

/// Where a timed-out case's last step left off, up to its deadline.
pub struct Stuck {
    pub x1: String,
    pub x2: String,
    pub y: String,
    pub label: Label,
    pub title: String,
}

pub struct Timeline {
    pub width: u32,
    pub height: u32,
    pub left: u32,
    pub right: u32,
    pub top: u32,
    pub bottom: u32,
    pub states: Vec<Label>,
    pub grid: Vec<String>,
    pub ticks: Vec<Label>,
    pub lanes: Vec<Lane>,
    pub legend: Vec<LegendItem>,
    pub data: Vec<Marker>,
    pub errors: Vec<Marker>,
    pub elided: Option<Band>,
    pub stuck: Option<Stuck>,
}

fn px(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

fn step_end(step: &StepRecord) -> u64 {
    step.start_ns.saturating_add(step.duration_ns)
}

/// Ticks at a round step (1, 2 or 5 times a power of ten) giving at most
/// `max` intervals.
fn tick_step(span: u64, max: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = unit.saturating_mul(m);
            if span / step <= max.max(1) {
                return step.max(1);
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// Time to x: linear, except that the stretch whose steps were elided
/// gets a narrow fixed band, so the kept head and tail of a long walk both
/// stay readable.
struct TimeAxis {
    /// (t0, t1, x0, x1), in time order; the elided band, if any, is one of them.
    segments: Vec<(u64, u64, f64, f64)>,
    band: Option<usize>,
}

/// Share of the plot width the elided band takes.
const BAND_SHARE: f64 = 0.08;
/// Least distance between two x-axis tick labels.
const TICK_GAP_PX: f64 = 58.0;

impl TimeAxis {
    fn new(t_max: u64, gap: Option<(u64, u64)>) -> TimeAxis {
        let (x0, x1) = (f64::from(LEFT), f64::from(WIDTH - RIGHT));
        match gap {
            Some((g0, g1)) if g0 < g1 && g1 <= t_max => {
                let band = (x1 - x0) * BAND_SHARE;
                let rest = x1 - x0 - band;
                let (head, tail) = (g0 as f64, (t_max - g1) as f64);
                let share = if head + tail > 0.0 {
                    (head / (head + tail)).clamp(0.25, 0.75)
                } else {
                    0.5
                };
                let b0 = x0 + rest * share;
                TimeAxis {
                    segments: vec![
                        (0, g0, x0, b0),
                        (g0, g1, b0, b0 + band),
                        (g1, t_max, b0 + band, x1),
                    ],
                    band: Some(1),
                }
            }
            _ => TimeAxis {
                segments: vec![(0, t_max, x0, x1)],
                band: None,
            },
        }
    }

    fn x(&self, t: u64) -> f64 {
        let &(t0, t1, x0, x1) = self
            .segments
            .iter()
            .find(|(_, t1, _, _)| t <= *t1)
            .or(self.segments.last())
            .expect("a time axis has a segment");
        if t1 == t0 {
            return x0;
        }
        x0 + (x1 - x0) * ((t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64)
    }

    /// Round ticks in each stretch that is drawn to scale, far enough apart
    /// to be read. After the elided band, ticks count from the band's end
    /// (`+200 µs`), which is labelled with its own time.
    fn ticks(&self, y: u32) -> Vec<Label> {
        let mut out: Vec<Label> = Vec::new();
        let mut last_x = f64::NEG_INFINITY;
        let mut push = |x: f64, text: String| {
            if x - last_x >= TICK_GAP_PX {
                out.push(Label {
                    x: px(x),
                    y: y.to_string(),
                    text,
                });
                last_x = x;
            }
        };
        for (i, &(t0, t1, x0, x1)) in self.segments.iter().enumerate() {
            if Some(i) == self.band {
                continue;
            }
            let step = tick_step(t1 - t0, ((x1 - x0) / TICK_GAP_PX) as u64);
            let after_band = self.band.is_some_and(|b| i > b);
            if after_band {
                push(x0, human_duration(t0));
            }
            let base = if after_band { t0 } else { 0 };
            let mut k = if after_band { 1 } else { t0.div_ceil(step) };
            while let Some(t) = k.checked_mul(step).and_then(|o| base.checked_add(o)) {
                if t > t1 {
                    break;
                }
                let text = match (after_band, t) {
                    (true, _) => format!("+{}", human_duration(k * step)),
                    (false, 0) => "0".to_string(),
                    (false, t) => human_duration(t),
                };
                push(self.x(t), text);
                k += 1;
            }
        }
        out
    }
}

/// A step chart of the migration state of each role over the case's time,
/// with data movements and errnos marked; `None` when no step knew its state.
pub fn timeline(case: &CaseResult) -> Option<Timeline> {
    let mut states: Vec<&str> = Vec::new();
    for step in &case.steps {
        if let Some(s) = step.state.as_deref() {
            if !states.contains(&s) {
                states.push(s);
            }
        }
    }
    if states.is_empty() {
        return None;
    }
    let rank = |s: &str| STATE_ORDER.iter().position(|o| *o == s);
    let known: Vec<&str> = STATE_ORDER
        .iter()
        .copied()
        .filter(|s| states.contains(s))
        .collect();
    let unknown: Vec<&str> = states
        .iter()
        .copied()
        .filter(|s| rank(s).is_none())
        .collect();
    let states: Vec<&str> = known.into_iter().chain(unknown).collect();

    let mut roles: Vec<&str> = Vec::new();
    for step in &case.steps {
        if !roles.contains(&step.role.as_str()) {
            roles.push(&step.role);
        }
    }
    let color = |role: &str| {
        let i = roles.iter().position(|r| *r == role).unwrap_or(0);
        ROLE_COLORS[i % ROLE_COLORS.len()]
    };

    let height = TOP + ROW * states.len() as u32 + BOTTOM;
    let last_end = case.steps.iter().map(step_end).max().unwrap_or(0);
    let t_max = last_end.max(case.duration_ns).max(1);
    // The step the log jumps after, and the time the jump spans.
    let gap = if case.steps_elided > 0 {
        case.steps
            .windows(2)
            .find(|w| w[1].index > w[0].index + 1)
            .map(|w| (w[0].index, step_end(&w[0]), w[1].start_ns))
    } else {
        None
    };
    let axis = TimeAxis::new(t_max, gap.map(|(_, g0, g1)| (g0, g1)));
    let x = |t: u64| axis.x(t);
    let y = |s: &str| {
        let i = states.iter().position(|o| *o == s).unwrap_or(0);
        f64::from(TOP + ROW * i as u32 + ROW / 2)
    };

    let state_labels = states
        .iter()
        .map(|s| Label {
            x: (LEFT - 8).to_string(),
            y: px(y(s) + 4.0),
            text: s.to_string(),
        })
        .collect();
    let grid = states.iter().map(|s| px(y(s))).collect();
    let ticks = axis.ticks(height - 8);

    let mut lanes = Vec::new();
    let mut data = Vec::new();
    let mut errors = Vec::new();
    for role in &roles {
        let steps: Vec<&StepRecord> = case.steps.iter().filter(|s| s.role == *role).collect();
        let mut d = String::new();
        let mut current: Option<(&str, &StepRecord)> = None;
        for s in &steps {
            let Some(state) = s.state.as_deref() else {
                continue;
            };
            let at = x(step_end(s));
            match current {
                // Nothing is known of the elided stretch: break the line.
                Some((_, prev))
                    if gap.is_some_and(|(after, ..)| prev.index <= after && s.index > after) =>
                {
                    d.push_str(&format!(
                        "H{}M{} {}",
                        px(x(step_end(prev))),
                        px(at),
                        px(y(state))
                    ));
                }
                None => d.push_str(&format!("M{} {}", px(at), px(y(state)))),
                Some((c, _)) if c != state => d.push_str(&format!("H{}V{}", px(at), px(y(state)))),
                Some(_) => {}
            }
            current = Some((state, s));
        }
        if let Some((_, last)) = current {
            // A timed-out case ends where its last step did; the stuck
            // stretch is drawn separately.
            let end = if case.stuck_in.is_some() {
                step_end(last)
            } else {
                step_end(last).max(case.duration_ns)
            };
            d.push_str(&format!("H{}", px(x(end))));
            lanes.push(Lane {
                role: role.to_string(),
                color: color(role),
                d,
            });
        }
        data.extend(data_markers(&steps, &x, &y, color(role)));
        errors.extend(errno_markers(&steps, &x, &y));
    }
    if data.len() > MAX_LABELS {
        for m in &mut data {
            m.label = None;
        }
    }

    let legend = if roles.len() > 1 {
        roles
            .iter()
            .map(|role| LegendItem {
                text: role.to_string(),
                color: color(role),
            })
            .collect()
    } else {
        Vec::new()
    };

    let elided = axis.band.map(|i| {
        let (_, _, x0, x1) = axis.segments[i];
        Band {
            x: px(x0),
            w: px(x1 - x0),
            text: Label {
                x: px((x0 + x1) / 2.0),
                y: (TOP - 8).to_string(),
                text: format!("{} steps elided", case.steps_elided),
            },
        }
    });
    let stuck = case.stuck_in.as_ref().and_then(|stuck_in| {
        let last = case
            .steps
            .iter()
            .filter(|s| s.state.is_some())
            .max_by_key(|s| step_end(s))?;
        let (x1, x2) = (x(step_end(last)), x(t_max));
        let cy = y(last.state.as_deref()?);
        Some(Stuck {
            x1: px(x1),
            x2: px(x2),
            y: px(cy),
            label: Label {
                x: px((x1 + x2) / 2.0),
                y: px(cy - 6.0),
                text: format!("no return for {}", human_duration(t_max - step_end(last))),
            },
            title: format!("stuck in {stuck_in}"),
        })
    });
    Some(Timeline {
        width: WIDTH,
        height,
        left: LEFT,
        right: WIDTH - RIGHT,
        top: TOP,
        bottom: height - BOTTOM,
        states: state_labels,
        grid,
        ticks,
        lanes,
        legend,
        data,
        errors,
        elided,
        stuck,
    })
}

/// Merged markers for steps that moved data, sized by bytes (area ~ bytes).
fn data_markers(
    steps: &[&StepRecord],
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(&str) -> f64,
    color: &'static str,
) -> Vec<Marker> {
    struct Bucket<'a> {
        x: f64,
        state: &'a str,
        bytes: u64,
        ops: usize,
        first: &'a StepRecord,
    }
    let mut buckets: Vec<Bucket> = Vec::new();
    for s in steps.iter().filter(|s| s.bytes > 0) {
        let at = x(step_end(s));
        let state = s.state.as_deref().unwrap_or("");
        match buckets.last_mut() {
            Some(b) if at - b.x < BUCKET_PX && b.state == state => {
                b.bytes = b.bytes.saturating_add(s.bytes);
                b.ops += 1;
            }
            _ => buckets.push(Bucket {
                x: at,
                state,
                bytes: s.bytes,
                ops: 1,
                first: s,
            }),
        }
    }
    let max = buckets.iter().map(|b| b.bytes).max().unwrap_or(1).max(1) as f64;
    let mut last_label: Option<(f64, &str)> = None;
    buckets
        .iter()
        .filter(|b| !b.state.is_empty())
        .map(|b| {
            let r = 2.5 + 6.0 * (b.bytes as f64 / max).sqrt();
            let what = if b.ops == 1 {
                b.first.op.clone()
            } else {
                format!("{} × {}", b.ops, b.first.op)
            };
            let cy = y(b.state);
            // Labels on one state line need room between them.
            let crowded =
                last_label.is_some_and(|(lx, state)| state == b.state && b.x - lx < LABEL_GAP_PX);
            if !crowded {
                last_label = Some((b.x, b.state));
            }
            Marker {
                x: px(b.x),
                y: px(cy),
                r: px(r),
                color,
                title: format!(
                    "{} by {what} at {} (#{})",
                    human_bytes(b.bytes),
                    human_duration(step_end(b.first)),
                    b.first.index
                ),
                label: (!crowded).then(|| Label {
                    x: px(b.x),
                    y: px(cy - r - 3.0),
                    text: human_bytes(b.bytes),
                }),
            }
        })
        .collect()
}

/// Red markers for steps that returned an errno or timed out.
fn errno_markers(
    steps: &[&StepRecord],
    x: &dyn Fn(u64) -> f64,
    y: &dyn Fn(&str) -> f64,
) -> Vec<Marker> {
    let mut out: Vec<Marker> = Vec::new();
    let mut last_x = f64::NEG_INFINITY;
    for s in steps {
        if matches!(s.ret, StepReturn::Ok(_)) {
            continue;
        }
        let at = x(step_end(s));
        if at - last_x < BUCKET_PX {
            if let Some(m) = out.last_mut() {
                m.title.push_str(&format!("; #{} {}", s.index, s.ret));
            }
            continue;
        }
        last_x = at;
        let cy = s.state.as_deref().map(y).unwrap_or(f64::from(TOP));
        out.push(Marker {
            x: px(at),
            y: px(cy),
            r: "4.5".to_string(),
            color: "#dc2626",
            title: format!(
                "#{} {} {} returned {} at {}",
                s.index,
                s.op,
                s.args,
                s.ret,
                human_duration(step_end(s))
            ),
            label: None,
        });
    }
    out
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub title: String,
}

pub struct V1Chart {
    pub width: u32,
    pub height: u32,
    pub left: u32,
    pub right: u32,
    pub top: u32,
    pub bottom: u32,
    pub bars: Vec<Bar>,
    pub pending: String,
    pub points: Vec<Marker>,
    pub y_max: String,
    pub x_labels: Vec<Label>,
}

/// At most this many iterations are drawn; longer runs are sampled evenly.
const V1_MAX_POINTS: usize = 300;

/// Bars of `data_size` and a line of `pending_bytes`, one per iteration.
pub fn v1_chart(iterations: &[V1Iteration]) -> Option<V1Chart> {
    if iterations.is_empty() {
        return None;
    }
    let (width, height, left, right, top, bottom) = (640u32, 180u32, 70u32, 624u32, 14u32, 150u32);
    let n = iterations.len();
    let stride = n.div_ceil(V1_MAX_POINTS).max(1);
    let picked: Vec<(usize, &V1Iteration)> = iterations
        .iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i == n - 1)
        .collect();
    let max = iterations
        .iter()
        .map(|it| it.pending_bytes.max(it.data_size))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_w = f64::from(right - left);
    let plot_h = f64::from(bottom - top);
    let slot = plot_w / picked.len() as f64;
    let y = |v: u64| f64::from(bottom) - plot_h * (v as f64 / max);
    let cx = |k: usize| f64::from(left) + slot * (k as f64 + 0.5);
    let mut pending = String::new();
    let mut bars = Vec::new();
    let mut points = Vec::new();
    for (k, (i, it)) in picked.iter().enumerate() {
        let title = format!(
            "iteration {}: pending_bytes {} ({}), data_size {}, data_offset {}",
            i + 1,
            it.pending_bytes,
            human_bytes(it.pending_bytes),
            it.data_size,
            it.data_offset
        );
        let top_y = y(it.data_size);
        bars.push(Bar {
            x: px(cx(k) - slot * 0.35),
            y: px(top_y),
            w: px((slot * 0.7).max(0.5)),
            h: px(f64::from(bottom) - top_y),
            title: title.clone(),
        });
        pending.push_str(&format!(
            "{}{} {}",
            if k == 0 { "M" } else { "L" },
            px(cx(k)),
            px(y(it.pending_bytes))
        ));
        if picked.len() <= 60 {
            points.push(Marker {
                x: px(cx(k)),
                y: px(y(it.pending_bytes)),
                r: "2.5".to_string(),
                color: "#2563eb",
                title,
                label: None,
            });
        }
    }
    let x_labels = vec![
        Label {
            x: px(cx(0)),
            y: (bottom + 16).to_string(),
            text: "1".to_string(),
        },
        Label {
            x: px(cx(picked.len() - 1)),
            y: (bottom + 16).to_string(),
            text: n.to_string(),
        },
    ];
    Some(V1Chart {
        width,
        height,
        left,
        right,
        top,
        bottom,
        bars,
        pending,
        points,
        y_max: human_bytes(max as u64),
        x_labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    fn case(name: &str) -> CaseResult {
        fixture()
            .devices
            .into_iter()
            .flat_map(|d| d.cases)
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn broken_axis_gives_the_elided_stretch_a_fixed_band() {
        let axis = TimeAxis::new(1000, Some((100, 900)));
        let (left, right) = (f64::from(LEFT), f64::from(WIDTH - RIGHT));
        let band = (right - left) * BAND_SHARE;
        assert_eq!(axis.x(0), left);
        assert_eq!(axis.x(1000), right);
        let (_, _, b0, b1) = axis.segments[1];
        assert!((b1 - b0 - band).abs() < 1e-9);
        // Equal head and tail durations share the rest equally.
        assert!((b0 - left - (right - left - band) / 2.0).abs() < 1e-9);
        assert_eq!(axis.x(900), b1);
        let ticks = axis.ticks(10);
        assert_eq!(ticks[0].text, "0");
        assert!(ticks.windows(2).all(|w| {
            w[1].x.parse::<f64>().unwrap() - w[0].x.parse::<f64>().unwrap() >= TICK_GAP_PX
        }));
        assert_eq!(ticks.last().unwrap().text, "+100 ns");
        assert!(ticks.iter().any(|t| t.text == "900 ns"));
        assert!(TimeAxis::new(1000, None).band.is_none());
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(1000, 6), 200);
        assert_eq!(tick_step(60, 6), 10);
        assert_eq!(tick_step(5, 6), 1);
        assert_eq!(tick_step(20_000_000_000, 6), 5_000_000_000);
    }

    #[test]
    fn timeline_orders_states_and_draws_each_role() {
        let t = timeline(&case("precopy-then-stop-copy")).unwrap();
        let states: Vec<&str> = t.states.iter().map(|l| l.text.as_str()).collect();
        // States after each step, in the fixed order (RUNNING never follows a step here).
        assert_eq!(states, ["PRE_COPY", "STOP", "STOP_COPY", "RESUMING"]);
        let roles: Vec<&str> = t.lanes.iter().map(|l| l.role.as_str()).collect();
        assert_eq!(roles, ["device", "destination"]);
        assert_eq!(t.legend.len(), 2);
        // Two PRE_COPY reads, three STOP_COPY reads and three writes, with
        // nothing close enough to merge.
        assert_eq!(t.data.len(), 8);
        // The two PRE_COPY reads sit too close for two labels.
        let labels: Vec<&Label> = t.data.iter().filter_map(|m| m.label.as_ref()).collect();
        assert_eq!(labels.len(), 7);
        assert!(t.errors.is_empty());
        assert!(t.lanes[0].d.starts_with("M"));
    }

    #[test]
    fn errnos_and_elision_are_marked() {
        let t = timeline(&case("save-stop-copy-chunked")).unwrap();
        // Two ENOMSG reads and the EINVAL SET.
        assert_eq!(t.errors.len(), 3);
        assert!(t.errors[0].title.contains("ENOMSG (42)"));
        let walk = timeline(&case("random-walk-10000")).unwrap();
        assert_eq!(walk.elided.as_ref().unwrap().text.text, "9960 steps elided");
        // The lane breaks across the elided stretch: two subpaths.
        assert_eq!(walk.lanes[0].d.matches('M').count(), 2);
        let stuck = timeline(&case("stop-copy-to-pre-copy"))
            .unwrap()
            .stuck
            .unwrap();
        assert_eq!(stuck.label.text, "no return for 20.0 s");
        assert!(stuck
            .title
            .starts_with("stuck in SET MIG_DEVICE_STATE STOP_COPY -> PRE_COPY"));
        assert!(timeline(&case("dirty-logging-ranges")).is_none());
    }

    #[test]
    fn v1_chart_samples_long_runs() {
        let chart = v1_chart(&case("v1-stop-and-copy-drains").v1_iterations).unwrap();
        assert_eq!(chart.bars.len(), 11);
        assert_eq!(chart.points.len(), 11);
        assert_eq!(chart.y_max, "4.0 MiB");
        let many: Vec<V1Iteration> = (0..1000)
            .map(|i| V1Iteration {
                pending_bytes: 1000 - i,
                data_offset: 0,
                data_size: 1,
            })
            .collect();
        let chart = v1_chart(&many).unwrap();
        assert!(chart.bars.len() <= V1_MAX_POINTS + 1);
        assert!(chart.points.is_empty());
        assert_eq!(chart.x_labels[1].text, "1000");
        assert!(v1_chart(&[]).is_none());
    }
}
