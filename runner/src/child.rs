//! The child side: the hidden subcommands the runner re-executes itself
//! with. Each opens its device(s) itself (the runner never holds a VFIO
//! group, or the child would get EBUSY), does one thing and reports it as
//! [`ChildLine`]s on stdout.

use std::io::Read;
use std::time::Instant;

use results::Event;
use suite::device::{Device, DeviceSpec};
use suite::exec::{self, Devices, ExecOptions};
use suite::scenario::{self, Protocol};

use crate::cli::{CaseArgs, ProbeArgs, RestoreArgs};
use crate::protocol::ChildLine;
use crate::signals;

/// Exit status of a child that could not do its job (the lines say why).
const FAILED: i32 = 1;

pub fn probe(args: &ProbeArgs) -> i32 {
    signals::restore_default();
    let mut dev = match open("device", &args.device) {
        Some(d) => d,
        None => return FAILED,
    };
    let caps = exec::probe_caps(dev.as_mut());
    emit(&ChildLine::Probed {
        description: dev.description().clone(),
        caps,
    });
    0
}

pub fn case(args: &CaseArgs) -> i32 {
    signals::restore_default();
    // The deadline counts from the start, like the runner's.
    let deadline = Instant::now() + args.timeout;
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        harness_error(format!("cannot read the scenario from stdin: {e}"));
        return FAILED;
    }
    let scenario = match scenario::load_str(&text, &args.file) {
        Ok(s) => s,
        Err(e) => {
            harness_error(e.to_string());
            return FAILED;
        }
    };
    let Some(mut dev) = open("device", &args.device) else {
        return FAILED;
    };
    let mut destination = None;
    if let Some(spec) = &args.destination {
        let Some(d) = open("destination", spec) else {
            return FAILED;
        };
        destination = Some(d);
    }
    let mut incompatible = None;
    if let Some(spec) = &args.incompatible {
        let Some(d) = open("incompatible", spec) else {
            return FAILED;
        };
        incompatible = Some(d);
    }
    let opts = ExecOptions {
        include_dangerous: args.include_dangerous,
        seed: args.seed,
        deadline: Some(deadline),
        buffer_size: args.buffer_size,
        arc_latency_limit: args.arc_latency_limit,
        downtime_budget: args.downtime_budget,
        ..ExecOptions::default()
    };
    let devices = Devices {
        device: dev.as_mut(),
        destination: destination.as_mut().map(|d| d.as_mut() as &mut dyn Device),
        incompatible: incompatible.as_mut().map(|d| d.as_mut() as &mut dyn Device),
    };
    exec::run(&scenario, devices, &opts, &mut |e| {
        emit(&ChildLine::Event(e))
    });
    let roles = [
        ("device", Some(dev)),
        ("destination", destination),
        ("incompatible", incompatible),
    ];
    for (role, dev) in roles {
        if let Some(mut dev) = dev {
            let error = exec::restore(dev.as_mut(), scenario.protocol).err();
            emit(&ChildLine::Restored {
                role: role.to_string(),
                error,
            });
        }
    }
    0
}

pub fn restore(args: &RestoreArgs) -> i32 {
    signals::restore_default();
    let protocol = if args.protocol == "v1" {
        Protocol::V1
    } else {
        Protocol::V2
    };
    let Some(mut dev) = open("device", &args.device) else {
        return FAILED;
    };
    let error = exec::restore(dev.as_mut(), protocol).err();
    let ok = error.is_none();
    emit(&ChildLine::Restored {
        role: "device".into(),
        error,
    });
    if ok {
        0
    } else {
        FAILED
    }
}

fn open(role: &str, spec: &DeviceSpec) -> Option<Box<dyn Device>> {
    match spec.open() {
        Ok(d) => Some(d),
        Err(e) => {
            emit(&ChildLine::OpenFailed {
                role: role.to_string(),
                message: e.to_string(),
            });
            None
        }
    }
}

fn harness_error(message: String) {
    emit(&ChildLine::Event(Event::HarnessError { message }));
}

/// A lost stdout means the runner is gone; the child still finishes and
/// restores its devices, so the error is not acted on.
fn emit(line: &ChildLine) {
    let _ = line.emit();
}
