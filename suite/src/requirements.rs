//! The requirement catalogue (`suite/requirements.yaml`), compiled in.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

pub use results::{Requirement, Strength};

const CATALOGUE: &str = include_str!("../requirements.yaml");

/// Every requirement the suite knows, in file order.
pub fn all() -> &'static [Requirement] {
    static ALL: OnceLock<Vec<Requirement>> = OnceLock::new();
    ALL.get_or_init(|| {
        serde_saphyr::from_str(CATALOGUE).expect("suite/requirements.yaml is valid (tested)")
    })
}

pub fn find(id: &str) -> Option<&'static Requirement> {
    all().iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_loads_with_unique_ids() {
        let all = all();
        assert!(all.len() >= 79);
        let mut ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
        assert_eq!(find("V2-SAVE-02").unwrap().strength, Strength::Must);
        assert_eq!(find("V2-PRECOPY-06").unwrap().strength, Strength::Should);
        assert_eq!(find("V1-SAVE-05").unwrap().strength, Strength::Info);
        assert!(find("V9-NOPE-01").is_none());
    }
}
