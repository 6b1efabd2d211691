//! The built-in scenario catalogue: every `cases/**/*.yaml` of the source
//! tree, embedded at build time (see `suite/build.rs`).
#![forbid(unsafe_code)]

/// Every built-in scenario file as (display path like `v2/fsm.yaml`,
/// text), sorted by path.
pub fn builtin() -> &'static [(&'static str, &'static str)] {
    include!(concat!(env!("OUT_DIR"), "/catalogue.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_files_are_sorted_relative_yaml_paths() {
        let files = builtin();
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0));
        for (path, _) in files {
            assert!(!path.starts_with('/') && !path.contains('\\'), "{path}");
            assert!(path.ends_with(".yaml") || path.ends_with(".yml"), "{path}");
        }
    }

    #[test]
    fn builtin_catalogue_is_valid() {
        if let Err(errors) = crate::scenario::load_all(builtin().iter().copied()) {
            let text: Vec<String> = errors.iter().map(|e| e.detailed()).collect();
            panic!("{}", text.join("\n"));
        }
    }
}
