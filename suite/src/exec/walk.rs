//! Random walks over the state machine: each step a seeded random target,
//! checked against the model like any SET.
#![forbid(unsafe_code)]

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::model;

impl Exec<'_, '_> {
    pub(super) fn walk(
        &mut self,
        role: Role,
        steps: u64,
        seed: Option<u64>,
        invalid: bool,
        key: &StepKey,
    ) -> Flow {
        let seed = seed.unwrap_or(self.seed);
        self.note(format!("walk of {steps} transitions, seed {seed} (repeat with `walk: {{ seed: {seed} }}` or --seed)"));
        let flags = self.role(role)?.flags;
        let mut targets: Vec<u32> = flags.supported_states().iter().map(|s| s.raw()).collect();
        if invalid {
            targets.extend(state_set(flags, &StateSet::Invalid));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let walk_key = StepKey {
            prefix: format!("{}-walk", key.prefix),
            loc: key.loc.clone(),
        };
        for _ in 0..steps {
            let cur = match self.role(role)?.state {
                Some(s) => s,
                None => {
                    // A failed SET left the state unknown; start over from RUNNING.
                    self.role(role)?.dev.reset().map_err(|e| {
                        Abort::Harness(format!(
                            "reset during the walk failed with {}",
                            crate::uapi::errno_name(e)
                        ))
                    })?;
                    self.end_session(role, EndedBy::Reset)?;
                    let ctx = self.role(role)?;
                    ctx.state = Some(MigState::Running);
                    MigState::Running
                }
            };
            let mut target = targets[rng.random_range(0..targets.len())];
            while model::is_dangerous(cur, target) && !self.opts.include_dangerous {
                target = targets[rng.random_range(0..targets.len())];
            }
            let out = self.set_state(role, target, None, &walk_key)?;
            // Sessions are not read during a walk; close them as they end.
            let ctx = self.role(role)?;
            for (fd, _, _) in ctx.ended.drain(..) {
                let _ = ctx.dev.data_close(fd);
            }
            if !out.ok && ctx.state == Some(MigState::Error) {
                ctx.state = None;
            }
        }
        Ok(())
    }
}
