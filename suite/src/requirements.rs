//! The requirement catalogue (`suite/requirements.yaml`), compiled in.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

pub use results::{QemuEffect, Requirement, Strength};

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

/// What a check verifies about an output field's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// One of the values the uAPI defines (flag bits, -1, a state).
    Value,
    /// Inside bounds (a region, a range's pages).
    Range,
    /// A multiple of a page.
    Alignment,
    PowerOfTwo,
    /// Moves only one way across calls (falls, only sets bits, stays).
    Monotonic,
    /// Agrees with what was then read, written or asked for.
    Consistency,
}

/// One check on an output field, as `judges:` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// `struct.field` as [`crate::uapi::OUTPUT_FIELDS`] names it.
    pub field: String,
    pub id: String,
    pub form: Form,
}

/// Every check on an output field the catalogue lists, in file order.
pub fn judged() -> &'static [Judged] {
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        judges: BTreeMap<String, Form>,
    }
    static ALL: OnceLock<Vec<Judged>> = OnceLock::new();
    ALL.get_or_init(|| {
        let entries: Vec<Entry> =
            serde_saphyr::from_str(CATALOGUE).expect("suite/requirements.yaml is valid (tested)");
        entries
            .into_iter()
            .flat_map(|e| {
                e.judges.into_iter().map(move |(field, form)| Judged {
                    field,
                    id: e.id.clone(),
                    form,
                })
            })
            .collect()
    })
}

/// The worst QEMU effect among the requirements `ids` names.
pub fn qemu_effect<S: AsRef<str>>(ids: &[S]) -> Option<QemuEffect> {
    ids.iter()
        .filter_map(|id| find(id.as_ref())?.qemu.as_ref())
        .map(|q| q.effect)
        .max()
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

    /// Every value the kernel hands back has a check on its form, and
    /// `judges:` names only such values. That each listed check is made on
    /// its field is tested by running the catalogue (exec's tests).
    #[test]
    fn every_output_field_is_judged() {
        let fields = crate::uapi::OUTPUT_FIELDS;
        for j in judged() {
            assert!(
                fields.contains(&j.field.as_str()),
                "{}: `judges:` names {:?}, which is not in uapi::OUTPUT_FIELDS",
                j.id,
                j.field
            );
        }
        let unjudged: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| !judged().iter().any(|j| j.field == *f))
            .collect();
        assert!(
            unjudged.is_empty(),
            "output fields without a check in suite/requirements.yaml `judges:`: {unjudged:?}"
        );
    }

    /// Every rule says what QEMU does when a driver breaks it, from which
    /// QEMU function: a requirement added without it fails here.
    #[test]
    fn every_requirement_has_a_qemu_impact_with_its_source() {
        for r in all() {
            let q = r.qemu.as_ref().unwrap_or_else(|| {
                panic!("{}: no `qemu:` impact in suite/requirements.yaml", r.id)
            });
            assert!(
                q.via.contains(".c: ") && q.via.contains("()"),
                "{}: `via` must name a QEMU source file and function, got {:?}",
                r.id,
                q.via
            );
            assert!(q.why.len() > 20, "{}: `why` must say how", r.id);
        }
        assert_eq!(
            qemu_effect(&["V2-PRECOPY-06", "V2-SAVE-02"]),
            Some(QemuEffect::Truncated)
        );
        assert_eq!(qemu_effect(&["V2-PRECOPY-06"]), Some(QemuEffect::None));
        assert_eq!(qemu_effect::<&str>(&[]), None);
    }
}
