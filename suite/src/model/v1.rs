//! Migration protocol v1: the `device_state` encoding of the migration
//! region and which writes the uAPI allows.
#![forbid(unsafe_code)]

use crate::uapi::v1::{STATE_MASK, STATE_RESUMING, STATE_RUNNING, STATE_SAVING};

/// A `device_state` value; only bits 0..2 carry meaning, the rest are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct V1State(pub u32);

impl V1State {
    pub const STOP: V1State = V1State(0);
    pub const RUNNING: V1State = V1State(STATE_RUNNING);
    pub const STOP_AND_COPY: V1State = V1State(STATE_SAVING);
    pub const PRE_COPY: V1State = V1State(STATE_SAVING | STATE_RUNNING);
    pub const RESUMING: V1State = V1State(STATE_RESUMING);
    pub const ERROR: V1State = V1State(STATE_SAVING | STATE_RESUMING);

    /// The six valid encodings, in bit order.
    pub const VALID: [V1State; 6] = [
        Self::STOP,
        Self::RUNNING,
        Self::STOP_AND_COPY,
        Self::PRE_COPY,
        Self::RESUMING,
        Self::ERROR,
    ];

    /// The two invalid encodings: _RESUMING combined with _RUNNING.
    pub const INVALID: [V1State; 2] = [
        V1State(STATE_RESUMING | STATE_RUNNING),
        V1State(STATE_RESUMING | STATE_SAVING | STATE_RUNNING),
    ];

    pub fn bits(self) -> u32 {
        self.0 & STATE_MASK
    }

    pub fn reserved(self) -> u32 {
        self.0 & !STATE_MASK
    }

    /// `VFIO_DEVICE_STATE_VALID()`: _RESUMING must be alone. The error
    /// encoding is valid to read but not to request.
    pub fn is_valid(self) -> bool {
        self.bits() & STATE_RESUMING == 0 || self.bits() == STATE_RESUMING || self.is_error()
    }

    /// `VFIO_DEVICE_STATE_IS_ERROR()`.
    pub fn is_error(self) -> bool {
        self.bits() == STATE_SAVING | STATE_RESUMING
    }

    pub fn is_saving(self) -> bool {
        self.bits() & STATE_SAVING != 0 && !self.is_error()
    }

    pub fn is_running(self) -> bool {
        self.bits() & STATE_RUNNING != 0
    }

    /// Whether a user may write this value: a valid, non-error encoding.
    pub fn may_request(self) -> bool {
        self.is_valid() && !self.is_error()
    }

    /// The same state with another value in the reserved bits, as a
    /// read-modify-write keeps them (V1-STATE-04).
    pub fn with_bits_of(self, requested: V1State) -> V1State {
        V1State(self.reserved() | requested.bits())
    }

    pub fn name(self) -> &'static str {
        match self.bits() {
            0b000 => "stop",
            0b001 => "running",
            0b010 => "stop-and-copy",
            0b011 => "pre-copy",
            0b100 => "resuming",
            0b110 => "error",
            _ => "invalid",
        }
    }

    /// Parses a state name, or a list of the bit names `running`, `saving`,
    /// `resuming` as scenario files write them.
    pub fn from_name(name: &str) -> Option<V1State> {
        Self::VALID
            .iter()
            .chain(Self::INVALID.iter())
            .copied()
            .find(|s| s.name() == name && s.is_valid())
    }

    pub fn from_bit_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<V1State> {
        let mut bits = 0;
        for name in names {
            bits |= match name {
                "running" | "_RUNNING" => STATE_RUNNING,
                "saving" | "_SAVING" => STATE_SAVING,
                "resuming" | "_RESUMING" => STATE_RESUMING,
                _ => return None,
            };
        }
        Some(V1State(bits))
    }
}

impl std::fmt::Display for V1State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:03b})", self.name(), self.bits())
    }
}

/// What a write of `requested` to `device_state` must do while in `cur`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1Write {
    /// The write succeeds and the state becomes the requested bits.
    Accept,
    /// An invalid combination: the write fails and the state is kept (V1-STATE-02).
    RejectInvalid,
    /// In the error state only reset helps (V1-STATE-05).
    RejectFromError,
}

pub fn expect_write(cur: V1State, requested: V1State) -> V1Write {
    if cur.is_error() {
        V1Write::RejectFromError
    } else if !requested.may_request() {
        V1Write::RejectInvalid
    } else {
        V1Write::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(V1State::RUNNING.name(), "running");
        assert_eq!(V1State::PRE_COPY.name(), "pre-copy");
        assert!(V1State::ERROR.is_valid() && V1State::ERROR.is_error());
        for s in V1State::INVALID {
            assert!(!s.is_valid(), "{s}");
            assert_eq!(s.name(), "invalid");
        }
        for s in V1State::VALID {
            assert!(s.is_valid(), "{s}");
        }
        assert_eq!(
            V1State::from_bit_names(["saving", "running"]),
            Some(V1State::PRE_COPY)
        );
        assert_eq!(
            V1State::from_name("stop-and-copy"),
            Some(V1State::STOP_AND_COPY)
        );
        assert_eq!(V1State::from_name("invalid"), None);
        let with_reserved = V1State(0x8000_0001);
        assert_eq!(with_reserved.bits(), 1);
        assert_eq!(
            with_reserved.with_bits_of(V1State::STOP_AND_COPY),
            V1State(0x8000_0002)
        );
        assert!(V1State(0x8000_0001).is_running());
    }

    #[test]
    fn writes() {
        assert_eq!(
            expect_write(V1State::RUNNING, V1State::STOP_AND_COPY),
            V1Write::Accept
        );
        assert_eq!(
            expect_write(V1State::RUNNING, V1State(0b101)),
            V1Write::RejectInvalid
        );
        assert_eq!(
            expect_write(V1State::RUNNING, V1State::ERROR),
            V1Write::RejectInvalid
        );
        assert_eq!(
            expect_write(V1State::ERROR, V1State::RUNNING),
            V1Write::RejectFromError
        );
    }
}
