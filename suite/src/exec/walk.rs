//! Random walks over the state machine: each step a seeded random target,
//! checked against the model like any SET.
#![forbid(unsafe_code)]

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::model;
use crate::scenario::{Mutation, WriteSpec};

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
        self.note(format!(
            "walk of {steps} transitions, seed {seed} (repeat with `walk: {{ seed: {seed} }}` or --seed)"
        ));
        let flags = self.role(role)?.flags;
        let mut targets: Vec<u32> = flags.supported_states().iter().map(|s| s.raw()).collect();
        if invalid {
            targets.extend(state_set(flags, &StateSet::Invalid));
        }
        let walk_key = StepKey {
            prefix: format!("{}-walk", key.prefix),
            loc: key.loc.clone(),
        };
        // A stream of this device to load whenever the walk enters
        // RESUMING, so that leaving RESUMING is expected to succeed.
        let load = WriteSpec {
            from: format!("{}-stream", walk_key.prefix),
            chunk: 1 << 20,
            mutation: Mutation::default(),
        };
        self.set_state(role, MigState::Stop.raw(), None, &walk_key)?;
        self.save(role, &load.from, load.chunk, None, &walk_key)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rounds = LoopClock::new();
        for done in 0..steps {
            if self.loop_cut(key, "walk", done, steps, &rounds) {
                break;
            }
            let cur = match self.role(role)?.state {
                Some(s) => s,
                None => self.restart(role)?,
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
            let fresh_resume = ctx.state == Some(MigState::Resuming)
                && ctx.delivered != Delivered::Stream
                && ctx
                    .session
                    .as_ref()
                    .is_some_and(|s| s.kind == SessionKind::Resuming);
            if !out.ok && ctx.state == Some(MigState::Error) {
                ctx.state = None;
            }
            if fresh_resume {
                let fd = self.session_fd(role, SessionKind::Resuming)?;
                let (written, err) = self.write_stream(role, fd, &load)?;
                if let Some(e) = err {
                    self.check(
                        &walk_key,
                        Check::builtin(
                            "load",
                            "V2-RESUME-01",
                            false,
                            "the device's own stream is accepted in RESUMING".into(),
                            format!("write failed with {} after {written} bytes", errno_name(e)),
                        ),
                    );
                }
            }
            rounds.lap();
        }
        Ok(())
    }

    /// After the walk lost track of the state (ERROR, a failed GET): reset
    /// and go on from RUNNING.
    fn restart(&mut self, role: Role) -> Result<MigState, Abort> {
        self.role(role)?.dev.reset().map_err(|e| {
            Abort::Harness(format!(
                "reset during the walk failed with {}",
                errno_name(e)
            ))
        })?;
        self.end_session(role, EndedBy::Reset)?;
        let ctx = self.role(role)?;
        ctx.state = Some(MigState::Running);
        for (fd, _, _) in ctx.ended.drain(..) {
            let _ = ctx.dev.data_close(fd);
        }
        Ok(MigState::Running)
    }
}
