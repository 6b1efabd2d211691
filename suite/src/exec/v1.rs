//! Protocol v1: the migration region.
#![forbid(unsafe_code)]

use super::*;

/// Whether an operation belongs to the v1 region protocol.
pub fn handles(op: &Op) -> bool {
    matches!(
        op,
        Op::ReadField { .. } | Op::WriteField { .. } | Op::V1Save { .. } | Op::V1Resume { .. }
    )
}

pub fn builtin_ids(_op: &Op) -> &'static [&'static str] {
    &[]
}

impl Exec<'_, '_> {
    pub(super) fn v1_op(&mut self, step: &Step, _key: &StepKey) -> Flow {
        Err(Abort::Harness(format!(
            "`{}`: protocol v1 is not supported yet",
            step.op.name()
        )))
    }

    pub(super) fn migration_region(&mut self, _role: Role, _key: &StepKey) -> Flow {
        Err(Abort::Harness(
            "migration_region: protocol v1 is not supported yet".into(),
        ))
    }

    pub(super) fn config_ids(&mut self, _role: Role, _key: &StepKey) -> Flow {
        Err(Abort::Harness(
            "config_ids: region access is not supported yet".into(),
        ))
    }
}
