//! The HTML report: one self-contained file (inline CSS and SVG, no
//! external assets, readable without JavaScript). Everything here builds
//! plain view structs; `templates/report.html` lays them out, and askama
//! escapes every string in them.

mod charts;

use std::collections::BTreeMap;

use askama::Template;

use crate::diff::{CheckChange, Comparison};
use crate::ktap::exit_code;
use crate::stats::{human_bytes, human_duration, throughput, Spread};
use crate::summary::{
    case_id, check_message, device_slugs, first_failed_check, impact_line, qemu_verdict,
    CheckStatus, OutcomeCounts, ALL_OUTCOMES,
};
use charts::{Timeline, V1Chart};
use results::{
    CaseResult, DeviceResults, Direction, Grading, Outcome, Requirement, RunResults, StepReturn,
    Verdict,
};

/// A failed case's step log starts open up to this many steps.
const OPEN_STEP_LOG_MAX: usize = 200;

/// v1 iteration tables keep this many rows at each end.
const V1_TABLE_ENDS: usize = 50;

struct Fact {
    label: &'static str,
    value: String,
}

struct Pill {
    label: &'static str,
    count: usize,
    class: &'static str,
}

struct Link {
    id: String,
    name: String,
}

struct Problem {
    label: &'static str,
    class: &'static str,
    link: Link,
    message: String,
}

struct CheckRow {
    name: String,
    status: &'static str,
    class: &'static str,
    ids: Vec<String>,
    strength: &'static str,
    expected: String,
    observed: String,
    location: String,
    known_failure: Option<String>,
    /// What QEMU does with the deviation, for checks that did not pass.
    qemu: Option<String>,
}

struct StepRow {
    /// Set on the first step after an elided stretch.
    elided_before: Option<u64>,
    index: u64,
    role: String,
    op: String,
    args: String,
    ret: String,
    failed: bool,
    state: String,
    bytes: String,
    start: String,
    duration: String,
}

struct V1Row {
    elided_before: Option<usize>,
    iteration: usize,
    pending_bytes: u64,
    data_offset: u64,
    data_size: u64,
}

struct CaseView {
    id: String,
    name: String,
    about: String,
    file: String,
    protocol: String,
    outcome: &'static str,
    class: &'static str,
    open: bool,
    headline: Option<String>,
    duration: String,
    seed: Option<u64>,
    reason: Option<String>,
    stuck_in: Option<String>,
    checks: Vec<CheckRow>,
    steps: Vec<StepRow>,
    steps_elided: u64,
    /// Long logs start folded even in failed cases.
    steps_open: bool,
    timeline: Option<Timeline>,
    kernel_log: Vec<String>,
    notes: Vec<String>,
    v1_rows: Vec<V1Row>,
    v1_count: usize,
    v1_chart: Option<V1Chart>,
}

struct LatencyRow {
    arc: String,
    count: usize,
    min: String,
    median: String,
    p99: String,
    max: String,
}

struct TransferRow {
    link: Link,
    role: String,
    direction: &'static str,
    bytes: String,
    time: String,
    rate: String,
    chunk: String,
    downtime: String,
}

struct DeviceView {
    slug: String,
    title: String,
    pills: Vec<Pill>,
    facts: Vec<Fact>,
    wedged: Option<String>,
    /// Whether QEMU would migrate it (`o-pass` / `o-fail`) and why.
    qemu_class: &'static str,
    qemu_verdict: String,
    qemu_harmless: Vec<String>,
    problems: Vec<Problem>,
    cases: Vec<CaseView>,
    latencies: Vec<LatencyRow>,
    transfers: Vec<TransferRow>,
    env: Vec<Fact>,
}

struct ReqCell {
    pass: usize,
    fail: usize,
    not_applicable: usize,
    class: &'static str,
    failing: Vec<Link>,
}

struct ReqRow {
    id: String,
    strength: &'static str,
    summary: String,
    source: String,
    covered: bool,
    cells: Vec<ReqCell>,
}

struct ChangeRow {
    ids: String,
    strength: &'static str,
    path: String,
    /// The case's anchor in this report, when the case is in it.
    link: Option<String>,
    before: String,
    after: String,
    class: &'static str,
    detail: String,
}

struct ChangeGroup {
    title: &'static str,
    class: &'static str,
    rows: Vec<ChangeRow>,
}

struct FigureRow {
    device: String,
    what: String,
    before: String,
    after: String,
    change: String,
    class: &'static str,
}

struct ComparisonView {
    baseline: String,
    threshold: String,
    empty: bool,
    groups: Vec<ChangeGroup>,
    figures: Vec<FigureRow>,
    unpaired: Vec<String>,
}

#[derive(Template)]
#[template(path = "report.html", whitespace = "minimize")]
struct Page {
    title: String,
    verdict: &'static str,
    verdict_class: &'static str,
    headline: Vec<Fact>,
    pills: Vec<Pill>,
    interrupted: Option<String>,
    devices: Vec<DeviceView>,
    requirement_rows: Vec<ReqRow>,
    covered: usize,
    catalogued: usize,
    run_env: Vec<Fact>,
    command_line: String,
    run_notes: Vec<String>,
    comparison: Option<ComparisonView>,
}

/// The report as one self-contained HTML document.
pub fn html(results: &RunResults) -> String {
    render(page(results))
}

/// The report with a section on what changed since a baseline run.
pub fn html_compared(results: &RunResults, comparison: &Comparison) -> String {
    let mut p = page(results);
    p.comparison = Some(comparison_view(results, comparison));
    render(p)
}

fn render(page: Page) -> String {
    // The template only formats strings and numbers into a String, which
    // cannot fail.
    page.render()
        .expect("the report template renders into memory")
}

fn comparison_view(results: &RunResults, c: &Comparison) -> ComparisonView {
    let slugs = device_slugs(&results.devices);
    let anchor = |k: &CheckChange| {
        let (d, slug) = results
            .devices
            .iter()
            .zip(&slugs)
            .find(|(d, _)| d.name == k.device || d.spec == k.device)?;
        let case = d.cases.iter().find(|x| x.name == k.case)?;
        Some(case_id(slug, case))
    };
    let groups = [
        ("Newly failing", "o-fail", &c.newly_failing),
        ("Newly passing", "o-pass", &c.newly_passing),
        ("Newly ignored", "o-ignored", &c.newly_ignored),
    ]
    .into_iter()
    .filter(|(_, _, list)| !list.is_empty())
    .map(|(title, class, list)| ChangeGroup {
        title,
        class,
        rows: list
            .iter()
            .map(|k| ChangeRow {
                ids: k.id_text(),
                strength: k.strength.map_or("—", |s| s.as_str()),
                path: k.path(),
                link: anchor(k),
                before: k.before.clone(),
                after: k.after.clone(),
                class: match k.after.as_str() {
                    "pass" => "o-pass",
                    "fail" => "o-fail",
                    "warn" => "o-warn",
                    "xfail" => "o-xfail",
                    _ => "o-ignored",
                },
                detail: k.detail.clone(),
            })
            .collect(),
    })
    .collect();
    let b = &c.baseline;
    ComparisonView {
        baseline: format!(
            "{} on {} (kernel {}, vfio-migtest {})",
            b.started, b.host, b.kernel_release, b.tool_version
        ),
        threshold: format!("{}%", c.threshold_percent),
        empty: c.is_empty(),
        groups,
        figures: c
            .figures
            .iter()
            .map(|f| FigureRow {
                device: f.device.clone(),
                what: f.what.clone(),
                before: f.before_text(),
                after: f.after_text(),
                change: f.percent_text(),
                class: if f.worse { "o-fail" } else { "o-pass" },
            })
            .collect(),
        unpaired: c.unpaired.clone(),
    }
}

fn fact(label: &'static str, value: impl Into<String>) -> Fact {
    Fact {
        label,
        value: value.into(),
    }
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "—".into())
}

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "o-pass",
        Outcome::Warn => "o-warn",
        Outcome::Fail => "o-fail",
        Outcome::Ignored => "o-ignored",
        Outcome::Timeout => "o-timeout",
        Outcome::Error => "o-error",
        Outcome::Xfail => "o-xfail",
        Outcome::Xpass => "o-xpass",
    }
}

fn check_class(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Pass => "o-pass",
        CheckStatus::Fail => "o-fail",
        CheckStatus::Warn => "o-warn",
        CheckStatus::Note => "o-note",
        CheckStatus::NotApplicable => "o-ignored",
        CheckStatus::Xfail => "o-xfail",
        CheckStatus::Xpass => "o-xpass",
    }
}

fn pills(counts: &OutcomeCounts) -> Vec<Pill> {
    ALL_OUTCOMES
        .iter()
        .map(|&o| Pill {
            label: o.as_str(),
            count: counts.get(o),
            class: outcome_class(o),
        })
        .collect()
}

fn page(results: &RunResults) -> Page {
    let meta = &results.meta;
    let slugs = device_slugs(&results.devices);
    let all = OutcomeCounts::of(results.devices.iter().flat_map(|d| &d.cases));
    let (verdict, verdict_class) = match exit_code(results) {
        0 => ("passed", "o-pass"),
        4 => ("nothing ran", "o-ignored"),
        _ => ("failed", "o-fail"),
    };
    let mut headline = vec![
        fact("host", meta.host.clone()),
        fact("kernel", meta.kernel_release.clone()),
        fact("started", meta.started.clone()),
        fact("finished", or_dash(meta.finished.clone())),
        fact("seed", meta.seed.to_string()),
        fact("strict", if meta.strict { "yes" } else { "no" }),
        fact("consumer", meta.consumer.map_or("none", |_| "qemu")),
        fact("version", meta.tool_version.clone()),
    ];
    if meta.include_dangerous {
        headline.push(fact("dangerous cases", "included"));
    }
    let run_env = vec![
        fact("tool version", meta.tool_version.clone()),
        fact("results schema", results.schema.to_string()),
        fact("host", meta.host.clone()),
        fact("kernel release", meta.kernel_release.clone()),
        fact("started", meta.started.clone()),
        fact("finished", or_dash(meta.finished.clone())),
        fact("seed", meta.seed.to_string()),
        fact("strict", meta.strict.to_string()),
        fact(
            "consumer",
            meta.consumer.map_or("none", |_| "qemu").to_string(),
        ),
        fact("include dangerous", meta.include_dangerous.to_string()),
    ];
    let devices: Vec<DeviceView> = results
        .devices
        .iter()
        .zip(&slugs)
        .map(|(d, slug)| device_view(d, slug, results))
        .collect();
    let (requirement_rows, covered) = requirement_rows(results, &slugs);
    Page {
        title: format!("vfio-migtest {} on {}", meta.tool_version, meta.host),
        verdict,
        verdict_class,
        headline,
        pills: pills(&all),
        interrupted: meta.interrupted.clone(),
        devices,
        catalogued: results.requirements.len(),
        requirement_rows,
        covered,
        run_env,
        command_line: meta.command_line.join(" "),
        run_notes: meta.notes.clone(),
        comparison: None,
    }
}

fn device_view(device: &DeviceResults, slug: &str, results: &RunResults) -> DeviceView {
    let grading = results.meta.grading();
    let verdict = qemu_verdict(device, &results.requirements);
    let counts = OutcomeCounts::of(&device.cases);
    let facts = vec![
        fact("driver", or_dash(device.driver.clone())),
        fact(
            "protocols",
            if device.protocols.is_empty() {
                "—".into()
            } else {
                device.protocols.join(", ")
            },
        ),
        fact("MIGRATION flags", or_dash(crate::flags_text(device))),
        fact(
            "stop_copy_length",
            or_dash(
                device
                    .stop_copy_length
                    .map(|n| format!("{} ({n} bytes)", human_bytes(n))),
            ),
        ),
        fact("downtime", or_dash(device.downtime_ns.map(human_duration))),
    ];
    let mut env = vec![
        fact("spec", device.spec.clone()),
        fact("name", device.name.clone()),
        fact("driver", or_dash(device.driver.clone())),
        fact("sysfs path", or_dash(device.sysfs_path.clone())),
        fact(
            "IOMMU group",
            or_dash(device.iommu_group.map(|g| g.to_string())),
        ),
        fact("access", or_dash(device.access.clone())),
        fact("device type", or_dash(device.device_type.clone())),
    ];
    for (role, peer) in &device.peers {
        env.push(fact("peer", format!("{role}: {peer}")));
    }

    let link = |c: &CaseResult| Link {
        id: case_id(slug, c),
        name: c.name.clone(),
    };
    // MUST failures first, then the other outcomes that fail the run, then
    // SHOULD warnings, then the known failures with their reasons.
    let mut problems = Vec::new();
    for (outcome, label) in [
        (Outcome::Fail, "MUST"),
        (Outcome::Timeout, "timeout"),
        (Outcome::Error, "error"),
        (Outcome::Xpass, "xpass"),
        (Outcome::Warn, "SHOULD"),
        (Outcome::Xfail, "xfail"),
    ] {
        for c in device.cases.iter().filter(|c| c.outcome == outcome) {
            let message = match outcome {
                Outcome::Fail | Outcome::Warn => {
                    first_failed_check(c).map(|k| match impact_line(k, &results.requirements) {
                        Some(line) => format!("{}; {line}", check_message(k)),
                        None => check_message(k),
                    })
                }
                Outcome::Timeout => match (&c.reason, &c.stuck_in) {
                    (Some(r), Some(s)) => Some(format!("{r}; stuck in {s}")),
                    (r, s) => r.clone().or(s.clone()),
                },
                _ => c.reason.clone(),
            };
            problems.push(Problem {
                label,
                class: outcome_class(outcome),
                link: link(c),
                message: message.unwrap_or_default(),
            });
        }
    }

    let mut samples: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for c in &device.cases {
        for (arc, ns) in &c.latencies {
            samples.entry(arc).or_default().extend(ns);
        }
    }
    let latencies = samples
        .iter()
        .filter_map(|(arc, ns)| {
            let s = Spread::of(ns)?;
            Some(LatencyRow {
                arc: arc.replace('>', " → "),
                count: s.count,
                min: human_duration(s.min),
                median: human_duration(s.median),
                p99: human_duration(s.p99),
                max: human_duration(s.max),
            })
        })
        .collect();
    let transfers = device
        .cases
        .iter()
        .flat_map(|c| c.transfers.iter().map(move |t| (c, t)))
        .map(|(c, t)| TransferRow {
            link: link(c),
            role: t.role.clone(),
            direction: match t.direction {
                Direction::Save => "save",
                Direction::Resume => "resume",
            },
            bytes: human_bytes(t.bytes),
            time: human_duration(t.duration_ns),
            rate: throughput(t.bytes, t.duration_ns).unwrap_or_else(|| "—".into()),
            chunk: if t.chunk == 0 {
                "mixed".into()
            } else {
                human_bytes(t.chunk)
            },
            downtime: t
                .downtime_ns
                .map(human_duration)
                .unwrap_or_else(|| "—".into()),
        })
        .collect();

    DeviceView {
        slug: slug.to_string(),
        title: device.spec.clone(),
        pills: pills(&counts),
        facts,
        wedged: device.wedged.clone(),
        qemu_class: if verdict.migrates { "o-pass" } else { "o-fail" },
        qemu_verdict: verdict.line,
        qemu_harmless: verdict.harmless,
        problems,
        cases: device
            .cases
            .iter()
            .map(|c| case_view(c, slug, grading, &results.requirements))
            .collect(),
        latencies,
        transfers,
        env,
    }
}

fn case_view(
    case: &CaseResult,
    slug: &str,
    grading: Grading,
    requirements: &[Requirement],
) -> CaseView {
    let checks = case
        .checks
        .iter()
        .map(|c| {
            let status = CheckStatus::of(c, grading);
            CheckRow {
                name: c.name.clone(),
                status: status.as_str(),
                class: check_class(status),
                ids: c.ids.clone(),
                strength: c.strength.as_str(),
                expected: c.expected.clone(),
                observed: c.observed.clone(),
                location: c
                    .location
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                known_failure: c.known_failure.clone(),
                qemu: (status != CheckStatus::Pass && status != CheckStatus::NotApplicable)
                    .then(|| impact_line(c, requirements))
                    .flatten(),
            }
        })
        .collect();
    let steps = case
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepRow {
            elided_before: (case.steps_elided > 0
                && i > 0
                && s.index > case.steps[i - 1].index + 1)
                .then_some(case.steps_elided),
            index: s.index,
            role: s.role.clone(),
            op: s.op.clone(),
            args: s.args.clone(),
            ret: s.ret.to_string(),
            failed: !matches!(s.ret, StepReturn::Ok(_)),
            state: s.state.clone().unwrap_or_default(),
            bytes: if s.bytes == 0 {
                String::new()
            } else {
                human_bytes(s.bytes)
            },
            start: human_duration(s.start_ns),
            duration: human_duration(s.duration_ns),
        })
        .collect();
    let n = case.v1_iterations.len();
    let v1_rows = case
        .v1_iterations
        .iter()
        .enumerate()
        .filter(|(i, _)| n <= 2 * V1_TABLE_ENDS || *i < V1_TABLE_ENDS || *i >= n - V1_TABLE_ENDS)
        .map(|(i, it)| V1Row {
            elided_before: (n > 2 * V1_TABLE_ENDS && i == n - V1_TABLE_ENDS)
                .then(|| n - 2 * V1_TABLE_ENDS),
            iteration: i + 1,
            pending_bytes: it.pending_bytes,
            data_offset: it.data_offset,
            data_size: it.data_size,
        })
        .collect();
    CaseView {
        id: case_id(slug, case),
        name: case.name.clone(),
        about: case.about.clone(),
        file: case.file.clone(),
        protocol: case.protocol.clone(),
        outcome: case.outcome.as_str(),
        class: outcome_class(case.outcome),
        open: case.outcome.is_failure(),
        headline: match case.outcome {
            Outcome::Fail | Outcome::Warn => first_failed_check(case).map(check_message),
            Outcome::Pass => None,
            _ => case.reason.clone(),
        },
        duration: human_duration(case.duration_ns),
        seed: case.seed,
        reason: case.reason.clone(),
        stuck_in: case.stuck_in.clone(),
        checks,
        steps,
        steps_elided: case.steps_elided,
        steps_open: case.outcome.is_failure() && case.steps.len() <= OPEN_STEP_LOG_MAX,
        timeline: charts::timeline(case),
        kernel_log: case.kernel_log.clone(),
        notes: case.notes.clone(),
        v1_rows,
        v1_count: n,
        v1_chart: charts::v1_chart(&case.v1_iterations),
    }
}

/// One row per catalogued requirement (then any cited ID the catalogue
/// lacks), with per-device check counts; and how many rows were covered.
fn requirement_rows(results: &RunResults, slugs: &[String]) -> (Vec<ReqRow>, usize) {
    let grading = results.meta.grading();
    let mut ids: Vec<(String, &'static str, String, String)> = results
        .requirements
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                r.strength.as_str(),
                r.summary.clone(),
                r.source.clone(),
            )
        })
        .collect();
    for check in results
        .devices
        .iter()
        .flat_map(|d| &d.cases)
        .flat_map(|c| &c.checks)
    {
        for id in &check.ids {
            if !ids.iter().any(|(known, ..)| known == id) {
                ids.push((
                    id.clone(),
                    "?",
                    "not in the requirement catalogue".into(),
                    String::new(),
                ));
            }
        }
    }
    let mut covered = 0;
    let rows = ids
        .into_iter()
        .map(|(id, strength, summary, source)| {
            let cells: Vec<ReqCell> = results
                .devices
                .iter()
                .zip(slugs)
                .map(|(device, slug)| {
                    let mut cell = ReqCell {
                        pass: 0,
                        fail: 0,
                        not_applicable: 0,
                        class: "",
                        failing: Vec::new(),
                    };
                    let mut worst: Option<CheckStatus> = None;
                    for case in &device.cases {
                        for check in case.checks.iter().filter(|c| c.ids.contains(&id)) {
                            match check.verdict {
                                Verdict::Pass => cell.pass += 1,
                                Verdict::NotApplicable => cell.not_applicable += 1,
                                Verdict::Fail => {
                                    cell.fail += 1;
                                    let status = CheckStatus::of(check, grading);
                                    worst = Some(match worst {
                                        Some(w) if severity(w) >= severity(status) => w,
                                        _ => status,
                                    });
                                    let cid = case_id(slug, case);
                                    if !cell.failing.iter().any(|l| l.id == cid) {
                                        cell.failing.push(Link {
                                            id: cid,
                                            name: case.name.clone(),
                                        });
                                    }
                                }
                            }
                        }
                    }
                    cell.class = match worst {
                        Some(status) => check_class(status),
                        None if cell.pass > 0 => "o-pass",
                        None => "",
                    };
                    cell
                })
                .collect();
            let is_covered = cells.iter().any(|c| c.pass + c.fail + c.not_applicable > 0);
            if is_covered {
                covered += 1;
            }
            ReqRow {
                id,
                strength,
                summary,
                source,
                covered: is_covered,
                cells,
            }
        })
        .collect();
    (rows, covered)
}

/// Which failed-check status colours a requirement cell.
fn severity(status: CheckStatus) -> u8 {
    match status {
        CheckStatus::Fail => 4,
        CheckStatus::Warn => 3,
        CheckStatus::Xfail => 2,
        CheckStatus::Note => 1,
        CheckStatus::Pass | CheckStatus::NotApplicable | CheckStatus::Xpass => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;
    use results::{StepRecord, StepReturn};

    #[test]
    fn html_snapshot() {
        insta::assert_snapshot!(html(&fixture()));
    }

    #[test]
    fn device_text_is_escaped() {
        let page = html(&fixture());
        assert!(!page.contains("<script>throw"));
        assert!(!page.contains("<b>bold"));
        assert!(page.contains(
            "&#60;script&#62;throw new Error(&#39;kernel log not escaped&#39;)&#60;/script&#62;"
        ));
        assert!(page.contains("&#60;sizes&#62; must add up &#38; &#34;match&#34;"));
        // Only the report's own script.
        assert_eq!(page.matches("<script").count(), 1);
    }

    #[test]
    fn page_is_self_contained() {
        let page = html(&fixture());
        for needle in ["http://", "https://", " src=", "<link", "@import", "url("] {
            assert!(!page.contains(needle), "found {needle:?}");
        }
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<style>") && page.contains("<svg"));
    }

    #[test]
    fn every_link_has_a_target() {
        let page = html(&fixture());
        let ids: Vec<&str> = page
            .split(" id=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicate ids");
        let links: Vec<&str> = page
            .split("href=\"#")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect();
        assert!(links.len() > 40);
        for link in links {
            assert!(ids.contains(&link), "dangling link #{link}");
        }
    }

    #[test]
    fn failed_cases_start_open_and_requirements_show_coverage() {
        let page = html(&fixture());
        let opening = |id: &str| {
            let at = page.find(&format!("id=\"{id}\"")).unwrap();
            page[at..at + 200].split('>').next().unwrap().to_string()
        };
        assert!(
            opening("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001__save-stop-copy-chunked")
                .ends_with(" open")
        );
        assert!(opening("sim__stop-copy-to-pre-copy").ends_with(" open"));
        assert!(!opening("sim__fsm-every-arc").ends_with(" open"));
        assert!(!opening("sim__precopy-then-stop-copy").ends_with(" open"));
        assert!(page.contains("18 of 20 catalogued requirements were checked"));
        let row = |id: &str| {
            let at = page.find(&format!("<tr id=\"req-{id}\"")).unwrap();
            page[at..at + page[at..].find("</tr>").unwrap()].to_string()
        };
        assert!(row("V2-LOG-01").contains("not covered"));
        let save02 = row("V2-SAVE-02");
        assert!(save02.contains("✗1"));
        assert!(save02
            .contains("href=\"#83b8f4f2-509f-382f-3c1e-e6bfe0fa1001__save-stop-copy-chunked\""));
        assert!(save02.contains("class=\"cell o-fail\""));
        assert!(row("V2-PRECOPY-06").contains("class=\"cell o-warn\""));
    }

    #[test]
    fn summary_lists_must_failures_first() {
        let page = html(&fixture());
        let mtty = page.find("<h3><a href=\"#cases-83b8").unwrap();
        let problems = &page[mtty..];
        let must = problems.find(">MUST<").unwrap();
        let xpass = problems.find(">xpass<").unwrap();
        assert!(must < xpass);
        // Known failures are listed last, with their reason.
        let xfail = problems.find(">xfail<").unwrap();
        assert!(xpass < xfail);
        assert!(problems[xfail..].contains("mtty does not check the stream length"));
        let sim = page.find("<h3><a href=\"#cases-sim\"").unwrap();
        let timeout = page[sim..].find(">timeout<").unwrap();
        let should = page[sim..].find(">SHOULD<").unwrap();
        assert!(timeout < should);
    }

    /// ~100 cases, one of them a 10,000-step walk elided to 2,000 steps.
    #[test]
    fn a_large_run_stays_small() {
        let mut results = fixture();
        let template = results.devices[0].cases[0].clone();
        let device = &mut results.devices[0];
        for i in 0..100 {
            let mut c = template.clone();
            c.name = format!("case-{i}");
            device.cases.push(c);
        }
        let mut walk = template.clone();
        walk.name = "walk".into();
        walk.steps_elided = 8000;
        walk.steps = (0..2000u64)
            .map(|i| {
                let index = if i < 1000 { i } else { i + 8000 };
                let state = ["RUNNING", "STOP", "STOP_COPY", "RUNNING_P2P"][(i % 4) as usize];
                StepRecord {
                    index,
                    role: "device".into(),
                    op: "SET MIG_DEVICE_STATE".into(),
                    args: format!("X -> {state}"),
                    ret: if i % 97 == 0 {
                        StepReturn::Errno {
                            name: "EINVAL".into(),
                            errno: 22,
                        }
                    } else {
                        StepReturn::Ok(-1)
                    },
                    state: Some(state.into()),
                    bytes: if i % 3 == 0 { 4096 } else { 0 },
                    start_ns: index * 50_000,
                    duration_ns: 40_000,
                    location: None,
                }
            })
            .collect();
        walk.duration_ns = 10_000 * 50_000;
        device.cases.push(walk);
        let page = html(&results);
        println!("large report: {} bytes", page.len());
        assert!(page.len() < 3 << 20, "{} bytes", page.len());
    }

    #[test]
    fn an_empty_run_renders() {
        let mut results = fixture();
        results.devices.clear();
        let page = html(&results);
        assert!(page.contains("<div class=\"verdict o-ignored\">nothing ran</div>"));
        assert!(page.contains("0 of 20 catalogued requirements were checked"));
    }
}
