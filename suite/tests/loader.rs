//! The scenario loader on bad input: hand-written broken files each get
//! their own error at the right place, and generated inputs (random bytes
//! and mutations of the shipped cases) never make it panic.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use suite::scenario::{load_str, read_dir};

/// Each file's first line says what loading it must report:
/// `# expect LINE:COL: text the message contains`.
#[test]
fn bad_files_get_their_error_with_location() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-cases");
    let files = read_dir(&dir).unwrap();
    assert!(files.len() >= 15);
    for (name, text) in files {
        let spec = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# expect L:C: message`"));
        let (pos, message) = spec.split_once(": ").unwrap();
        let (line, column) = pos.split_once(':').unwrap();
        let err = load_str(&text, &name).expect_err(&name);
        assert_eq!(
            (
                err.line.to_string().as_str(),
                err.column.to_string().as_str()
            ),
            (line, column),
            "{name}: {}",
            err.detailed()
        );
        assert!(err.message.contains(message), "{name}: {}", err.detailed());
        assert!(err
            .to_string()
            .starts_with(&format!("{name}:{line}:{column}: ")));
    }
}

fn iterations() -> usize {
    std::env::var("VFIO_MIGTEST_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// A mutation of `text`: byte flips, deleted, duplicated or swapped lines,
/// truncation, or YAML-significant characters inserted.
fn mutate(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.random_range(1..4) {
        if lines.is_empty() {
            break;
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.random_range(0..lines.len());
                lines.swap(i, j);
            }
            3 => {
                let cut = rng.random_range(0..=lines[i].len());
                let cut = (0..=cut)
                    .rev()
                    .find(|c| lines[i].is_char_boundary(*c))
                    .unwrap_or(0);
                lines[i].truncate(cut);
            }
            4 => {
                const SPECIAL: &[&str] = &[
                    "{",
                    "}",
                    "[",
                    "]",
                    ":",
                    "- ",
                    "&a ",
                    "*a",
                    "!!",
                    "'",
                    "\"",
                    "\t",
                    "-1",
                    "99999999999999999999",
                    "$",
                    "~",
                ];
                let at = rng.random_range(0..=lines[i].len());
                let at = (0..=at)
                    .rev()
                    .find(|c| lines[i].is_char_boundary(*c))
                    .unwrap_or(0);
                lines[i].insert_str(at, SPECIAL[rng.random_range(0..SPECIAL.len())]);
            }
            5 => {
                let mut bytes = lines[i].clone().into_bytes();
                if !bytes.is_empty() {
                    let k = rng.random_range(0..bytes.len());
                    bytes[k] = rng.random_range(0..128u8);
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => lines[i] = format!("  {}", lines[i]),
        }
    }
    lines.join("\n")
}

fn must_not_panic(input: &str, what: &str) {
    if catch_unwind(AssertUnwindSafe(|| load_str(input, "fuzz.yaml"))).is_err() {
        panic!("the loader panicked on {what}:\n{input}");
    }
}

#[test]
fn generated_inputs_never_panic() {
    let cases = read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases")).unwrap();
    let seed = std::env::var("VFIO_MIGTEST_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x10ad);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = iterations();
    for i in 0..n {
        if i % 4 == 0 {
            let len = rng.random_range(0..512);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random_range(0..=255u8)).collect();
            must_not_panic(
                &String::from_utf8_lossy(&bytes),
                &format!("random bytes (seed {seed}, input {i})"),
            );
        } else {
            let (name, text) = &cases[rng.random_range(0..cases.len())];
            let mutated = mutate(&mut rng, text);
            must_not_panic(
                &mutated,
                &format!("a mutation of {name} (seed {seed}, input {i})"),
            );
        }
    }
    println!("{n} generated inputs, seed {seed}");
}
