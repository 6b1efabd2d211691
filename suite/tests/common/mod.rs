//! Running the shipped catalogue in process on simulators, for the tests
//! that judge the catalogue as a whole.

use std::path::Path;

use results::{CaseFold, CaseResult};
use suite::device::{open, Device};
use suite::exec::{self, Devices, ExecOptions, RunSettings};
use suite::scenario::{load_all, read_dir, Protocol, Scenario};

pub fn catalogue() -> Vec<Scenario> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases");
    let files = read_dir(&dir).unwrap();
    load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap()
}

/// Runs one case on fresh simulators built from `spec`.
pub fn run_case(s: &Scenario, spec: &str) -> Option<CaseResult> {
    let base = match s.protocol {
        Protocol::V1 if !spec.contains("v1") => {
            format!("{spec}{}v1", if spec.contains(':') { "," } else { ":" })
        }
        _ => spec.to_string(),
    };
    let other = format!(
        "{base}{}type=sim-other",
        if base.contains(':') { "," } else { ":" }
    );
    let mut dev = open(&base).unwrap();
    let mut dst = open(&base).unwrap();
    let mut inc = open(&other).unwrap();
    let caps = exec::probe_caps(dev.as_mut());
    let dcaps = exec::probe_caps(dst.as_mut());
    let icaps = exec::probe_caps(inc.as_mut());
    let settings = RunSettings {
        include_dangerous: true,
        deterministic_stream: true,
    };
    if let Err(reason) = exec::applicable(s, &caps, Some(&dcaps), Some(&icaps), settings) {
        println!("{}: ignored ({reason})", s.name);
        return None;
    }
    let opts = ExecOptions {
        include_dangerous: true,
        seed: 7,
        ..ExecOptions::default()
    };
    let mut fold = CaseFold::new(CaseResult::new(&s.name, &s.file, s.protocol.as_str()));
    exec::run(
        s,
        Devices {
            device: dev.as_mut() as &mut dyn Device,
            destination: Some(dst.as_mut()),
            incompatible: Some(inc.as_mut()),
        },
        &opts,
        &mut |e| fold.apply(e),
    );
    Some(fold.finish(results::Grading::default()))
}
