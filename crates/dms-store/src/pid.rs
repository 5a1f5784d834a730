//! [`Pid`]: a process ID that is safe to act on.

use std::fmt;
use std::sync::OnceLock;

/// The kernel's hard ceiling for `pid_max` on 64-bit Linux (`PID_MAX_LIMIT`, 2^22).
pub const PID_MAX_LIMIT: u32 = 4_194_304;

/// The kernel's current `pid_max` (`/proc/sys/kernel/pid_max`), read once per process.
///
/// Falls back to [`PID_MAX_LIMIT`] when the file cannot be read or parsed.
pub fn pid_max() -> u32 {
    static PID_MAX: OnceLock<u32> = OnceLock::new();
    *PID_MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&n| n > 1 && n <= PID_MAX_LIMIT)
            .unwrap_or(PID_MAX_LIMIT)
    })
}

/// A process ID that can never be 0, 1, negative, or above the kernel's `pid_max`.
///
/// `kill(0, ..)` signals the caller's own process group and `kill(-1, ..)` every process
/// the caller may signal; PID 1 is init. None of these can be represented, so no code
/// holding a `Pid` can send such a signal by mistake. (Refusing to signal dms's own PID is
/// the process layer's job: a PID file may legitimately name any process.)
///
/// ```
/// use dms_store::Pid;
/// assert_eq!(Pid::parse(b"12345").unwrap().get(), 12345);
/// assert_eq!(Pid::parse(b" 42\n").unwrap().get(), 42);
/// assert!(Pid::parse(b"-1").is_err());
/// assert!(Pid::parse(b"4294967295").is_err());
/// ```
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Pid(#[serde(deserialize_with = "de_pid")] i32);

/// A serialized PID, validated as [`Pid::new`] validates.
fn de_pid<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let raw = <i64 as serde::Deserialize>::deserialize(deserializer)?;
    Pid::new(raw)
        .map(Pid::get)
        .map_err(serde::de::Error::custom)
}

/// Why a value or PID-file content is not a valid [`Pid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPid {
    /// The content is empty or only whitespace.
    #[error("empty: no PID in it")]
    Empty,
    /// The content has something other than one unsigned decimal number.
    #[error("not a decimal PID: {0}")]
    NotANumber(String),
    /// 0 or 1: never a helper.
    #[error("PID {0} is reserved (0 is the caller's process group, 1 is init)")]
    Reserved(u64),
    /// Larger than the kernel's `pid_max`.
    #[error("PID {value} is above the kernel's pid_max ({max})")]
    TooLarge {
        /// The value read (saturated at `u64::MAX`).
        value: u64,
        /// The limit in force.
        max: u32,
    },
    /// A negative number.
    #[error("PID {0} is negative")]
    Negative(i64),
}

impl Pid {
    /// Checks a numeric PID.
    pub fn new(raw: i64) -> Result<Pid, InvalidPid> {
        if raw < 0 {
            return Err(InvalidPid::Negative(raw));
        }
        Self::from_unsigned(raw as u64)
    }

    fn from_unsigned(v: u64) -> Result<Pid, InvalidPid> {
        if v <= 1 {
            return Err(InvalidPid::Reserved(v));
        }
        let max = pid_max();
        // pid_max is one more than the largest PID the kernel hands out.
        if v >= u64::from(max) {
            return Err(InvalidPid::TooLarge { value: v, max });
        }
        Ok(Pid(v as i32))
    }

    /// Parses PID-file content: optional ASCII whitespace around unsigned decimal digits,
    /// with or without a trailing newline. Signs, several numbers, NUL bytes or any other
    /// byte are refused.
    pub fn parse(content: &[u8]) -> Result<Pid, InvalidPid> {
        let trimmed = content.trim_ascii();
        if trimmed.is_empty() {
            return Err(InvalidPid::Empty);
        }
        if !trimmed.iter().all(u8::is_ascii_digit) {
            let shown: String = String::from_utf8_lossy(&trimmed[..trimmed.len().min(32)])
                .escape_debug()
                .collect();
            if let Some(rest) = trimmed.strip_prefix(b"-") {
                if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) {
                    let v = std::str::from_utf8(rest)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .map_or(i64::MIN, |v| -v);
                    return Err(InvalidPid::Negative(v));
                }
            }
            return Err(InvalidPid::NotANumber(format!("\"{shown}\"")));
        }
        // All digits: saturate instead of overflowing; anything past 20 digits is huge.
        let value = trimmed.iter().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        Self::from_unsigned(value.unwrap_or(u64::MAX))
    }

    /// The PID as the kernel's `pid_t`; always in `2..pid_max`.
    pub fn get(self) -> i32 {
        self.0
    }

    /// What dms writes into a PID file: the decimal PID and a newline.
    pub fn to_file_content(self) -> String {
        format!("{}\n", self.0)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.0)
    }
}

impl TryFrom<i32> for Pid {
    type Error = InvalidPid;
    fn try_from(v: i32) -> Result<Self, Self::Error> {
        Pid::new(i64::from(v))
    }
}

impl From<Pid> for i32 {
    fn from(p: Pid) -> i32 {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_writers_produce() {
        assert_eq!(Pid::parse(b"12345").unwrap().get(), 12345);
        assert_eq!(Pid::parse(b"12345\n").unwrap().get(), 12345);
        assert_eq!(Pid::parse(b"  7 \r\n").unwrap().get(), 7);
        assert_eq!(Pid::parse(b"007").unwrap().get(), 7);
    }

    #[test]
    fn refuses_dangerous_values() {
        let cases: &[&[u8]] = &[
            b"",
            b"\n",
            b"0",
            b"1",
            b"-1",
            b"+5",
            b"4294967295",
            b"99999999999",
            b"abc",
            b"12 34",
            b"1\x002",
            b"0x10",
            b"-",
            b"\xff\xfe",
            b"99999999999999999999999999999999999",
        ];
        for c in cases {
            assert!(
                Pid::parse(c).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(c)
            );
        }
        assert_eq!(Pid::parse(b"-1"), Err(InvalidPid::Negative(-1)));
        assert_eq!(Pid::parse(b"1"), Err(InvalidPid::Reserved(1)));
    }

    #[test]
    fn round_trips() {
        let p = Pid::new(4242).unwrap();
        assert_eq!(Pid::parse(p.to_file_content().as_bytes()), Ok(p));
    }
}
