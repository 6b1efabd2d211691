//! Where scenarios come from: the built-in catalogue or `--cases DIR`, and
//! `validate`'s files and directories. Every file is loaded and validated
//! before any device is touched; errors name the file as the user can open it.

use std::path::{Path, PathBuf};

use suite::scenario::{self, LoadError, Scenario};

/// A loaded scenario with the text it came from (handed to the child).
#[derive(Debug, Clone)]
pub struct Case {
    pub scenario: Scenario,
    pub text: String,
}

/// The built-in catalogue, or every `*.yaml` under `dir`.
pub fn load(dir: Option<&Path>) -> Result<Vec<Case>, Vec<LoadError>> {
    let files: Vec<(String, String)> = match dir {
        None => suite::catalogue::builtin()
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect(),
        Some(dir) => scenario::read_dir(dir).map_err(|e| vec![e])?,
    };
    let loaded = scenario::load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    match loaded {
        // load_all keeps the order of its input and fails on any error, so
        // scenarios and files line up.
        Ok(scenarios) => Ok(scenarios
            .into_iter()
            .zip(files)
            .map(|(scenario, (_, text))| Case { scenario, text })
            .collect()),
        Err(mut errors) => {
            if let Some(dir) = dir {
                for e in &mut errors {
                    e.file = dir.join(&e.file).display().to_string();
                }
            }
            Err(errors)
        }
    }
}

/// Loads the given files and directories as one catalogue (case names must
/// be unique across them); no path means the built-in catalogue. Returns
/// how many files and cases were checked.
pub fn validate(paths: &[PathBuf]) -> Result<(usize, usize), Vec<LoadError>> {
    if paths.is_empty() {
        let n = load(None)?.len();
        return Ok((suite::catalogue::builtin().len(), n));
    }
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            match scenario::read_dir(path) {
                Ok(found) => files.extend(
                    found
                        .into_iter()
                        .map(|(f, t)| (path.join(f).display().to_string(), t)),
                ),
                Err(e) => errors.push(e),
            }
        } else {
            let name = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => files.push((name, text)),
                Err(e) => errors.push(LoadError {
                    file: name,
                    line: 1,
                    column: 1,
                    message: format!("cannot read: {e}"),
                    snippet: None,
                }),
            }
        }
    }
    match scenario::load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))) {
        Ok(s) if errors.is_empty() => Ok((files.len(), s.len())),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: fresh\nabout: a fresh device is RUNNING\nsteps:\n  - get_state:\n    expect: { state: RUNNING, ids: [V2-FSM-02] }\n";

    #[test]
    fn directory_cases_keep_relative_names_and_their_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v2")).unwrap();
        std::fs::write(dir.path().join("v2/fresh.yaml"), GOOD).unwrap();
        let cases = load(Some(dir.path())).unwrap();
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].scenario.file, "v2/fresh.yaml");
        assert_eq!(cases[0].text, GOOD);
    }

    #[test]
    fn errors_name_openable_paths_and_all_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "name: a\nabout: x\nsteps:\n  - set_state: NOPE\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yaml"), "name: [\n").unwrap();
        std::fs::write(dir.path().join("c.yaml"), GOOD).unwrap();
        let errors = load(Some(dir.path())).unwrap_err();
        assert_eq!(errors.len(), 2);
        let a = dir.path().join("a.yaml").display().to_string();
        assert_eq!(errors[0].file, a);
        assert!(
            errors[0].to_string().starts_with(&format!("{a}:4:")),
            "{}",
            errors[0]
        );
        let errors = validate(&[dir.path().join("c.yaml"), dir.path().join("b.yaml")]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("b.yaml"));
    }

    #[test]
    fn validate_counts_and_finds_duplicates_across_paths() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        std::fs::write(one.path().join("fresh.yaml"), GOOD).unwrap();
        assert_eq!(validate(&[one.path().to_path_buf()]).unwrap(), (1, 1));
        std::fs::write(two.path().join("again.yaml"), GOOD).unwrap();
        let errors = validate(&[one.path().to_path_buf(), two.path().to_path_buf()]).unwrap_err();
        assert!(errors[0].message.contains("already used"), "{}", errors[0]);
    }
}
