//! The reference state machine of migration protocol v2, computed exactly as
//! the kernel's `vfio_mig_get_next_state()` does it, and what each SET must
//! do to the data session (V2-FSM-04/05/07/08/09).
#![forbid(unsafe_code)]

pub mod v1;

use crate::uapi::{
    MigState, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
};

use MigState::{
    Error as X, PreCopy as PC, PreCopyP2p as PP, Resuming as RS, Running as R, RunningP2p as RP,
    Stop as S, StopCopy as SC,
};

/// The kernel's `vfio_from_fsm_table`, indexed `[current][target]` by raw
/// state value. ERROR marks an arc that must fail.
const FSM_TABLE: [[MigState; 8]; 8] = [
    //         ERROR STOP RUNNING STOP_COPY RESUMING RUNNING_P2P PRE_COPY PRE_COPY_P2P
    /* ERROR */
    [X, X, X, X, X, X, X, X],
    /* STOP  */ [X, S, RP, SC, RS, RP, RP, RP],
    /* RUN   */ [X, RP, R, RP, RP, RP, PC, RP],
    /* SC    */ [X, S, S, SC, S, S, X, X],
    /* RS    */ [X, S, S, S, RS, S, S, S],
    /* RP    */ [X, S, R, S, S, RP, R, PP],
    /* PC    */ [X, R, R, PP, R, R, PC, PP],
    /* PP    */ [X, RP, RP, SC, RP, RP, PC, PP],
];

/// The `VFIO_DEVICE_FEATURE_MIGRATION` flags a device advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrationFlags(pub u64);

impl MigrationFlags {
    pub const STOP_COPY: MigrationFlags = MigrationFlags(VFIO_MIGRATION_STOP_COPY);
    pub const P2P: MigrationFlags = MigrationFlags(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P);
    pub const PRE_COPY: MigrationFlags =
        MigrationFlags(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY);
    pub const ALL: MigrationFlags =
        MigrationFlags(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY);
    /// The four combinations the uAPI defines (V2-FEAT-10).
    pub const DEFINED: [MigrationFlags; 4] =
        [Self::STOP_COPY, Self::P2P, Self::PRE_COPY, Self::ALL];

    pub fn is_defined(self) -> bool {
        Self::DEFINED.contains(&self)
    }

    pub fn has_p2p(self) -> bool {
        self.0 & VFIO_MIGRATION_P2P != 0
    }

    pub fn has_pre_copy(self) -> bool {
        self.0 & VFIO_MIGRATION_PRE_COPY != 0
    }

    /// The kernel's `state_flags_table`: the flags a state needs.
    fn needs(state: MigState) -> u64 {
        match state {
            S | R | SC | RS => VFIO_MIGRATION_STOP_COPY,
            RP => VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
            PC => VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
            PP => VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
            X => !0,
        }
    }

    /// Whether SET may name this state (ERROR never).
    pub fn supports(self, state: MigState) -> bool {
        let needs = Self::needs(state);
        self.0 & needs == needs
    }

    /// The states SET may name, in raw order.
    pub fn supported_states(self) -> Vec<MigState> {
        MigState::ALL
            .into_iter()
            .filter(|s| self.supports(*s))
            .collect()
    }
}

/// `vfio_mig_get_next_state()`: the next arc from `cur` towards `target`, or
/// `None` where the kernel returns -EINVAL.
pub fn next_state(flags: MigrationFlags, cur: MigState, target: u32) -> Option<MigState> {
    if !flags.supports(cur) {
        return None;
    }
    let target = MigState::from_raw(target).filter(|t| flags.supports(*t))?;
    let mut next = FSM_TABLE[cur as usize][target as usize];
    while next != X && !flags.supports(next) {
        next = FSM_TABLE[next as usize][target as usize];
    }
    (next != X).then_some(next)
}

/// The states a SET from `cur` to `target` passes through, ending with
/// `target` (empty when `cur == target`), or why the SET must fail.
pub fn path(flags: MigrationFlags, cur: MigState, target: u32) -> Result<Vec<MigState>, Refusal> {
    if cur == X {
        return Err(Refusal::FromError);
    }
    let Some(target_state) = MigState::from_raw(target) else {
        return Err(Refusal::InvalidState);
    };
    if target_state == X || !flags.supports(target_state) {
        return Err(Refusal::InvalidState);
    }
    let mut steps = Vec::new();
    let mut at = cur;
    while at != target_state {
        match next_state(flags, at, target) {
            Some(next) => {
                steps.push(next);
                at = next;
            }
            None if at == cur => return Err(Refusal::BlockedArc),
            None => unreachable_path(cur, target_state),
        }
        // The table's longest combination is 4 arcs; more means a loop.
        if steps.len() > MigState::ALL.len() {
            unreachable_path(cur, target_state);
        }
    }
    Ok(steps)
}

/// The kernel's table never fails mid-path or loops for supported states;
/// reaching here means the table above was edited wrongly.
fn unreachable_path(cur: MigState, target: MigState) -> ! {
    panic!("FSM table has no finite path {cur} -> {target}")
}

/// Why the uAPI requires a SET to fail with EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// ERROR, a value >= 8, or an optional state the device does not
    /// advertise (V2-FSM-04).
    InvalidState,
    /// STOP_COPY -> PRE_COPY(_P2P) (V2-FSM-05); may hang unfixed kernels.
    BlockedArc,
    /// Only VFIO_DEVICE_RESET leaves ERROR (V2-RESET-03).
    FromError,
}

impl Refusal {
    pub fn requirement(self) -> &'static str {
        match self {
            Refusal::InvalidState => "V2-FSM-04",
            Refusal::BlockedArc => "V2-FSM-05",
            Refusal::FromError => "V2-RESET-03",
        }
    }
}

/// An arc that opens a new data session and returns a data fd (V2-FSM-08).
pub fn opens_session(from: MigState, to: MigState) -> bool {
    matches!((from, to), (R, PC) | (RP, PP) | (S, SC) | (S, RS))
}

/// An arc that ends the current data session (V2-FSM-09).
pub fn ends_session(from: MigState, to: MigState) -> bool {
    (from.is_saving() && !to.is_saving()) || (from == RS && to != RS)
}

/// What a SET must observably do, according to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// Succeed with `data_fd = -1`; nothing changes (V2-FSM-06).
    NoOp,
    /// Succeed, passing through `path` (V2-FSM-07).
    Moves {
        path: Vec<MigState>,
        /// The last arc opens a session: a new fd is returned (V2-FSM-08).
        new_data_fd: bool,
        /// Some arc on the path ends the session open before the SET (V2-FSM-09).
        ends_session: bool,
    },
    /// Fail with EINVAL; the state stays as it was.
    Refused(Refusal),
}

/// The model's verdict for SET `target` while in `cur`.
pub fn expect_set(flags: MigrationFlags, cur: MigState, target: u32) -> Expectation {
    if cur != X && target == cur.raw() {
        return Expectation::NoOp;
    }
    match path(flags, cur, target) {
        Err(refusal) => Expectation::Refused(refusal),
        Ok(path) => {
            let mut from = cur;
            let mut new_data_fd = false;
            let mut ends = false;
            for &to in &path {
                ends |= ends_session(from, to);
                new_data_fd = opens_session(from, to);
                from = to;
            }
            Expectation::Moves {
                path,
                new_data_fd,
                ends_session: ends,
            }
        }
    }
}

/// Whether SET from `cur` to `target` is the arc that never returns on
/// kernels without the `vfio_mig_get_next_state()` fix (V2-FSM-05).
pub fn is_dangerous(cur: MigState, target: u32) -> bool {
    cur == SC && (target == PC.raw() || target == PP.raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str) -> MigState {
        match name {
            "S" => S,
            "R" => R,
            "SC" => SC,
            "RS" => RS,
            "RP" => RP,
            "PC" => PC,
            "PP" => PP,
            "X" => X,
            _ => panic!("bad state {name}"),
        }
    }

    /// Checks a next-step table written as in uapi-requirements.md: rows
    /// are the current state, columns the target, `-` the diagonal.
    fn assert_table(flags: MigrationFlags, table: &str) {
        let mut lines = table.lines().map(str::trim).filter(|l| !l.is_empty());
        let header: Vec<MigState> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(st)
            .collect();
        let mut rows = 0;
        for line in lines {
            let mut cells = line.split_whitespace();
            let cur = st(cells.next().unwrap());
            for (&target, cell) in header.iter().zip(cells) {
                let got = next_state(flags, cur, target.raw());
                let want = match cell {
                    "-" => Some(cur),
                    "X" => None,
                    other => Some(st(other)),
                };
                assert_eq!(got, want, "flags {:#x}: {cur} -> {target}", flags.0);
            }
            rows += 1;
        }
        assert_eq!(rows, header.len());
        // Every state outside the table is refused as a target.
        for cur in flags.supported_states() {
            for target in MigState::ALL {
                if !flags.supports(target) {
                    assert_eq!(next_state(flags, cur, target.raw()), None);
                }
            }
            for raw in [8, 9, 99, u32::MAX] {
                assert_eq!(next_state(flags, cur, raw), None);
            }
        }
    }

    #[test]
    fn full_table_matches_the_kernel() {
        assert_table(
            MigrationFlags::ALL,
            "
            cur S  R  SC RS RP PC PP
            S   -  RP SC RS RP RP RP
            R   RP -  RP RP RP PC RP
            SC  S  S  -  S  S  X  X
            RS  S  S  S  -  S  S  S
            RP  S  R  S  S  -  R  PP
            PC  R  R  PP R  R  -  PP
            PP  RP RP SC RP RP PC -
            ",
        );
    }

    #[test]
    fn stop_copy_only_table() {
        assert_table(
            MigrationFlags::STOP_COPY,
            "
            cur S  R  SC RS
            S   -  R  SC RS
            R   S  -  S  S
            SC  S  S  -  S
            RS  S  S  S  -
            ",
        );
    }

    #[test]
    fn p2p_table() {
        assert_table(
            MigrationFlags::P2P,
            "
            cur S  R  SC RS RP
            S   -  RP SC RS RP
            R   RP -  RP RP RP
            SC  S  S  -  S  S
            RS  S  S  S  -  S
            RP  S  R  S  S  -
            ",
        );
    }

    #[test]
    fn pre_copy_table() {
        assert_table(
            MigrationFlags::PRE_COPY,
            "
            cur S  R  SC RS PC
            S   -  R  SC RS R
            R   S  -  S  S  PC
            SC  S  S  -  S  X
            RS  S  S  S  -  S
            PC  R  R  SC R  -
            ",
        );
    }

    /// The arcs a driver implements for each flag set, from the comment
    /// above `vfio_from_fsm_table`.
    fn driver_arcs(flags: MigrationFlags) -> Vec<(MigState, MigState)> {
        let mut arcs = vec![(RS, S), (S, RS), (S, SC), (SC, S)];
        if flags.has_p2p() {
            arcs.extend([(R, RP), (RP, R), (RP, S), (S, RP)]);
        } else {
            arcs.extend([(R, S), (S, R)]);
        }
        if flags.has_pre_copy() {
            arcs.extend([(R, PC), (PC, R)]);
            if flags.has_p2p() {
                arcs.extend([(PC, PP), (PP, PC), (PP, RP), (PP, SC), (RP, PP)]);
            } else {
                arcs.push((PC, SC));
            }
        }
        arcs
    }

    /// Independent check: every combination is a shortest walk over the
    /// driver's arcs that never enters the saving group in its interior,
    /// except by staying in it from the start (PRE_COPY -> PRE_COPY_P2P ->
    /// STOP_COPY).
    #[test]
    fn paths_are_shortest_without_saving_interior() {
        for flags in MigrationFlags::DEFINED {
            let arcs = driver_arcs(flags);
            for cur in flags.supported_states() {
                for target in flags.supported_states() {
                    let shortest = bfs(&arcs, cur, target);
                    match path(flags, cur, target.raw()) {
                        Ok(p) => {
                            let mut from = cur;
                            let mut in_saving_prefix = cur.is_saving();
                            for (i, &to) in p.iter().enumerate() {
                                assert!(arcs.contains(&(from, to)), "{from}->{to} not an arc");
                                in_saving_prefix &= to.is_saving();
                                if i + 1 < p.len() && to.is_saving() {
                                    assert!(in_saving_prefix, "{cur}->{target} via {to}");
                                }
                                from = to;
                            }
                            assert_eq!(Some(p.len()), shortest, "{cur}->{target} {p:?}");
                        }
                        Err(r) => {
                            assert_eq!(r, Refusal::BlockedArc);
                            assert!(cur == SC && target.is_precopy());
                        }
                    }
                }
            }
        }
    }

    /// Length of the shortest allowed walk (see above); nodes carry whether
    /// the walk is still inside the saving group it started in.
    fn bfs(arcs: &[(MigState, MigState)], from: MigState, to: MigState) -> Option<usize> {
        let mut frontier = vec![(from, from.is_saving())];
        let mut seen = frontier.clone();
        for depth in 0..8 {
            if frontier.iter().any(|&(s, _)| s == to) {
                return Some(depth);
            }
            let mut next = Vec::new();
            for &(at, prefix) in &frontier {
                if at != from && at.is_saving() && !prefix {
                    continue;
                }
                for &(a, b) in arcs {
                    let node = (b, prefix && b.is_saving());
                    if a == at && !seen.contains(&node) {
                        seen.push(node);
                        next.push(node);
                    }
                }
            }
            frontier = next;
        }
        None
    }

    #[test]
    fn data_fd_rules() {
        let f = MigrationFlags::ALL;
        let moves = |cur, target: MigState| match expect_set(f, cur, target.raw()) {
            Expectation::Moves {
                new_data_fd,
                ends_session,
                ..
            } => (new_data_fd, ends_session),
            other => panic!("{cur}->{target}: {other:?}"),
        };
        assert_eq!(moves(R, PC), (true, false));
        assert_eq!(moves(S, PC), (true, false));
        assert_eq!(moves(R, SC), (true, false));
        assert_eq!(moves(RS, SC), (true, true));
        assert_eq!(moves(PC, SC), (false, false));
        assert_eq!(moves(PC, PP), (false, false));
        assert_eq!(moves(PP, PC), (false, false));
        assert_eq!(moves(SC, S), (false, true));
        assert_eq!(moves(SC, RS), (true, true));
        assert_eq!(moves(PC, R), (false, true));
        assert_eq!(moves(RS, S), (false, true));
        assert_eq!(moves(S, R), (false, false));
        assert_eq!(expect_set(f, R, R.raw()), Expectation::NoOp);
        assert_eq!(
            expect_set(f, SC, PC.raw()),
            Expectation::Refused(Refusal::BlockedArc)
        );
        assert_eq!(
            expect_set(f, R, X.raw()),
            Expectation::Refused(Refusal::InvalidState)
        );
        assert_eq!(
            expect_set(f, X, R.raw()),
            Expectation::Refused(Refusal::FromError)
        );
        assert_eq!(
            expect_set(MigrationFlags::STOP_COPY, R, RP.raw()),
            Expectation::Refused(Refusal::InvalidState)
        );
        assert!(is_dangerous(SC, PP.raw()));
        assert!(!is_dangerous(PC, SC.raw()));
    }

    #[test]
    fn combination_paths_from_the_kernel_comment() {
        let f = MigrationFlags::ALL;
        assert_eq!(path(f, PC, S.raw()), Ok(vec![R, RP, S]));
        assert_eq!(path(f, PC, RS.raw()), Ok(vec![R, RP, S, RS]));
        assert_eq!(path(f, RS, PC.raw()), Ok(vec![S, RP, R, PC]));
        assert_eq!(path(f, SC, R.raw()), Ok(vec![S, RP, R]));
        assert_eq!(
            path(MigrationFlags::STOP_COPY, R, SC.raw()),
            Ok(vec![S, SC])
        );
        assert_eq!(path(MigrationFlags::PRE_COPY, S, PC.raw()), Ok(vec![R, PC]));
    }

    #[test]
    fn defined_flag_sets() {
        assert!(MigrationFlags(7).is_defined());
        assert!(!MigrationFlags(2).is_defined());
        assert!(!MigrationFlags(0).is_defined());
        assert!(!MigrationFlags(0xf).is_defined());
        assert_eq!(
            MigrationFlags::P2P.supported_states(),
            vec![S, R, SC, RS, RP]
        );
    }
}
