use super::*;

fn load(text: &str) -> Result<Scenario, LoadError> {
    load_str(text, "t.yaml")
}

fn err(text: &str) -> LoadError {
    load(text).expect_err("must not load")
}

#[test]
fn loads_a_full_case() {
    let s = load(
        "name: precopy-then-stop-copy
about: PRE_COPY data followed by STOP_COPY data forms one stream
requires: { flags: [pre_copy], devices: 2 }
timeout: 20s
steps:
  - set_state: PRE_COPY
    expect: { data_fd: new, ids: [V2-FSM-08] }
  - precopy_info:
    expect: { initial_bytes: \">0\", dirty_bytes: 0, ids: [V2-PRECOPY-04, V2-PRECOPY-05] }
  - read: { into: stream, chunk: 7, until: end_of_precopy }
  - set_state: STOP_COPY
  - read: { into: stream, chunk: 1MiB }
  - on: destination
    resume: { from: stream, chunk: 13 }
",
    )
    .unwrap();
    assert_eq!(s.name, "precopy-then-stop-copy");
    assert_eq!(s.protocol, Protocol::V2);
    assert!(s.requires.destination);
    assert_eq!(s.requires.flags, crate::uapi::VFIO_MIGRATION_PRE_COPY);
    assert_eq!(s.timeout, Some(Duration::from_secs(20)));
    assert_eq!(s.steps.len(), 6);
    assert_eq!(s.steps[0].op, Op::SetState(StateRef::Value(6)));
    let e = s.steps[1].expect.as_ref().unwrap();
    assert_eq!(e.strength, Strength::Should);
    assert_eq!(
        e.initial_bytes,
        Some(Cmp {
            op: CmpOp::Gt,
            rhs: Operand::Num(0)
        })
    );
    assert_eq!(e.loc.line, 9);
    assert!(matches!(
        &s.steps[4].op,
        Op::Read {
            chunk: 1048576,
            until: ReadUntil::Eof,
            ..
        }
    ));
    assert_eq!(s.steps[5].role, Role::Destination);
    assert_eq!(s.steps[5].loc.line, 14);
    let ids = s.requirement_ids();
    assert!(ids.contains(&"V2-FSM-08".to_string()));
    assert!(ids.contains(&"V2-RESUME-01".to_string()));
}

#[test]
fn syntax_errors_have_locations() {
    let e = err("name: x\nabout: y\nsteps:\n  - set_state: [1\n");
    assert_eq!((e.file.as_str(), e.line), ("t.yaml", 4));
    assert!(e.to_string().starts_with("t.yaml:4:"), "{e}");
}

#[test]
fn unknown_step_is_named_with_its_location() {
    let e = err("name: x\nabout: y\nsteps:\n  - get_state:\n  - frobnicate: 1\n");
    assert_eq!((e.line, e.column), (5, 5));
    assert!(e.message.contains("unknown field `frobnicate`"), "{e}");
    assert!(e.message.contains("set_state"), "{e}");
}

#[test]
fn unknown_state_name() {
    let e = err("name: x\nabout: y\nsteps:\n  - set_state: STOPPED\n");
    assert_eq!((e.line, e.column), (4, 16));
    assert!(e.message.contains("unknown state `STOPPED`"), "{e}");
}

#[test]
fn wrong_types_and_negative_sizes() {
    let e = err("name: x\nabout: y\nsteps:\n  - read: { chunk: -5 }\n");
    assert_eq!(e.line, 4);
    assert!(e.message.contains("negative"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - repeat: { times: many, steps: [reset: ] }\n");
    assert_eq!(e.line, 4);
    let e = err("name: x\nabout: y\nsteps:\n  - read: { chunk: 0 }\n");
    assert!(e.message.contains("chunk must be between"), "{e}");
}

#[test]
fn absurd_timeouts() {
    for t in ["0s", "2days", "soon"] {
        let e = err(&format!(
            "name: x\nabout: y\ntimeout: {t}\nsteps:\n  - reset:\n"
        ));
        assert_eq!((e.line, e.column), (3, 10), "{t}: {e}");
    }
}

#[test]
fn buffers_must_be_filled_first() {
    let e = err("name: x\nabout: y\nrequires: { devices: 2 }\nsteps:\n  - on: destination\n    resume: { from: nothing }\n");
    assert_eq!(e.line, 6);
    assert!(
        e.message.contains("buffer `nothing` is never filled"),
        "{e}"
    );
    let e = err("name: x\nabout: y\nsteps:\n  - save: { into: a }\n  - compare: { a: a, b: b }\n    expect: { equal: true, ids: [V2-SAVE-03] }\n");
    assert!(e.message.contains("buffer `b`"), "{e}");
}

#[test]
fn expectations_need_known_ids_and_observable_keys() {
    let e = err("name: x\nabout: y\nsteps:\n  - set_state: STOP\n    expect: { errno: EINVAL }\n");
    assert!(e.message.contains("must cite the requirement IDs"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - set_state: STOP\n    expect: { errno: EINVAL, ids: [V9-NOPE-1] }\n");
    assert!(
        e.message.contains("unknown requirement ID `V9-NOPE-1`"),
        "{e}"
    );
    let e = err("name: x\nabout: y\nsteps:\n  - set_state: STOP\n    expect: { initial_bytes: 0, ids: [V2-FSM-03] }\n");
    assert!(e.message.contains("cannot observe `initial_bytes`"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - get_state:\n    expect: { errno: EWHAT, ids: [V2-FSM-02] }\n");
    assert!(e.message.contains("unknown errno `EWHAT`"), "{e}");
}

#[test]
fn roles_must_be_declared() {
    let e = err("name: x\nabout: y\nsteps:\n  - on: destination\n    reset:\n");
    assert!(e.message.contains("requires: { devices: 2 }"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - on: elsewhere\n    reset:\n");
    assert!(e.message.contains("unknown device role"), "{e}");
}

#[test]
fn protocols_do_not_mix() {
    let e = err("name: x\nabout: y\nsteps:\n  - read_field: { field: pending_bytes }\n");
    assert!(e.message.contains("v1 operation"), "{e}");
    let e = err("name: x\nabout: y\nrequires: { protocol: v1 }\nsteps:\n  - set_state: STOP\n");
    assert!(e.message.contains("belongs to protocol v2"), "{e}");
}

#[test]
fn for_each_variables_are_scoped() {
    let s = load("name: x\nabout: y\nsteps:\n  - for_each:\n      from: supported\n      to: [STOP, 99]\n      steps:\n        - set_state: $from\n        - set_state: $to\n").unwrap();
    match &s.steps[0].op {
        Op::ForEach { vars, steps } => {
            assert_eq!(vars[0], ("from".to_string(), StateSet::Supported));
            assert_eq!(vars[1], ("to".to_string(), StateSet::List(vec![1, 99])));
            assert_eq!(steps[1].op, Op::SetState(StateRef::Var("to".into())));
        }
        other => panic!("{other:?}"),
    }
    let e = err("name: x\nabout: y\nsteps:\n  - for_each: { s: all, steps: [reset: ] }\n  - set_state: $s\n");
    assert!(e.message.contains("not a `for_each` variable"), "{e}");
}

#[test]
fn names_and_sizes_with_their_place() {
    let e = err("name: has space\nabout: y\nsteps:\n  - reset:\n");
    assert_eq!(e.line, 1);
    let e = err("name: x\nabout: y\nsteps:\n  - read: { into: s, chunk: 4PiB }\n");
    assert_eq!((e.line, e.column), (4, 29), "{e}");
    assert!(e.message.contains("unknown size unit `PiB`"), "{e}");
}

#[test]
fn one_operation_per_step() {
    let e = err("name: x\nabout: y\nsteps:\n  - reset:\n    get_state:\n");
    assert!(e.message.contains("exactly one operation"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - expect: { ok: true, ids: [V2-FSM-03] }\n");
    assert!(e.message.contains("needs an operation"), "{e}");
    let e = err("name: x\nabout: y\nsteps:\n  - reset: 5\n");
    assert_eq!(e.line, 4);
}

#[test]
fn duplicate_names_across_files() {
    let a = "name: same\nabout: y\nsteps:\n  - reset:\n";
    let errors = load_all([("a.yaml", a), ("b.yaml", a)]).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .to_string()
        .starts_with("b.yaml:1:1: case name `same` is already used by a.yaml"));
}

#[test]
fn oversized_and_bomb_inputs_are_refused() {
    let big = format!(
        "name: x\nabout: y\nsteps:\n{}",
        "  - reset:\n".repeat(200_000)
    );
    assert!(load(&big).unwrap_err().message.contains("limited to"));
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nname: x\n";
    assert!(load(bomb).is_err());
}

#[test]
fn the_shipped_cases_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases");
    let files = read_dir(&dir).unwrap();
    assert!(files.len() >= 20, "{} files", files.len());
    let scenarios =
        load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap_or_else(|errors| {
            panic!(
                "{}",
                errors
                    .iter()
                    .map(LoadError::detailed)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    assert_eq!(scenarios.len(), files.len());
}

#[test]
fn races_take_what_their_kind_needs() {
    let case = |race: &str| {
        format!("name: x\nabout: y\nsteps:\n  - save: {{ into: s }}\n  - race: {race}\n")
    };
    let s = load(&case("{ kind: multifd_save, into: t, within: 5s }")).unwrap();
    assert!(matches!(
        s.steps[1].op,
        Op::Race {
            kind: RaceKind::MultifdSave,
            chunk: 4096,
            ..
        }
    ));
    let e = err(&case("{ kind: sideways }"));
    assert!(e.message.contains("unknown race `sideways`"), "{e}");
    assert_eq!(e.line, 5);
    let e = err(&case("{ kind: readers }"));
    assert!(e.message.contains("needs `from: BUFFER`"), "{e}");
    let e = err(&case("{ kind: set_during_read, from: s, to: STOP }"));
    assert!(e.message.contains("takes no `from`"), "{e}");
    let e = err(&case("{ kind: readers, from: nothing }"));
    assert!(e.message.contains("never filled"), "{e}");
    let e = err(&case("{ kind: set_during_read }"));
    assert!(e.message.contains("needs `to: STATE`"), "{e}");
}
