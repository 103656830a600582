//! Human units in the configuration: sizes such as `64MiB` and durations such as `10s`, one
//! parser for each, used by every size and duration key (and by `messaging.retry_delays`,
//! `messaging.delay_levels` and the CLI's `--delay`).
//!
//! A size key accepts an integer (bytes, as before) or a string: a whole number and a unit,
//! `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000),
//! with optional space between (`"64MiB"`, `"64 MiB"`, `"100MB"`). A duration key accepts an
//! integer in the key's own unit (the `_ms` keys in milliseconds, `_us` in microseconds,
//! `_hours` in hours, as before) or a string: a whole number and `us`, `ms`, `s`, `m`, `h` or
//! `d` (`"250ms"`, `"10s"`, `"2m"`). Printing (`quiver serve --print-config`) uses the largest
//! unit that states the value exactly, so what is printed parses back to the same value.
//!
//! The serde helpers keep the fields' integer types: `#[serde(with = "crate::units::size")]`
//! on a size field, `crate::units::ms` / `us` / `hours` on a duration field.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses `250ms`, `10s`, `5m`, `2h`, `1d` or `200us` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 10s, 5m, 2h or 1d"))?;
    let us: u64 = match unit.trim_start() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        "" => return Err(format!("{s:?} has no unit; use ms, s, m, h or d")),
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit; use us, ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(us)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses `64MiB`, `1GiB`, `512KiB`, `100MB`, `4096B` (a whole number and a unit) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB, 1GiB, 512KiB or 100MB"))?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "" => {
            return Err(format!(
                "{s:?} has no unit; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
        }
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `bytes` in the largest binary unit that states it exactly (`16MiB`, `65600B`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// `us` microseconds in the largest unit that states it exactly (`30s`, `200ms`, `72h`).
pub fn format_micros(us: u64) -> String {
    for (per, unit) in [
        (86_400_000_000, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ] {
        if us != 0 && us.is_multiple_of(per) {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

/// An integer config value: converts to and from `u64` (u32, u64, usize).
pub trait Int: Copy {
    /// The value as u64.
    fn to_u64(self) -> u64;
    /// The value from u64, if it fits.
    fn from_u64(v: u64) -> Option<Self>;
}

macro_rules! int {
    ($($t:ty),*) => {$(
        impl Int for $t {
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
int!(u8, u16, u32, u64, usize);

/// What a string means for one kind of key: a parser into the field's unit and a printer.
trait Unit {
    /// Names the accepted forms in errors.
    const EXPECTING: &'static str;
    fn parse(s: &str) -> Result<u64, String>;
    fn format(v: u64) -> String;
}

struct Bytes;
impl Unit for Bytes {
    const EXPECTING: &'static str = "a size: bytes as an integer, or a string like \"64MiB\"";
    fn parse(s: &str) -> Result<u64, String> {
        parse_size(s)
    }
    fn format(v: u64) -> String {
        format_size(v)
    }
}

/// Durations counted in `PER` microseconds (1 for `_us`, 1000 for `_ms`, 3600000000 for
/// `_hours`).
struct Dur<const PER: u64>;
impl<const PER: u64> Unit for Dur<PER> {
    const EXPECTING: &'static str =
        "a duration: an integer in the key's unit, or a string like \"10s\" or \"250ms\"";
    fn parse(s: &str) -> Result<u64, String> {
        let d = parse_duration(s)?;
        let us = u64::try_from(d.as_micros()).map_err(|_| format!("{s:?} is too long"))?;
        if !us.is_multiple_of(PER) {
            return Err(format!(
                "{s:?} is not a whole number of {}",
                format_micros(PER)
            ));
        }
        Ok(us / PER)
    }
    fn format(v: u64) -> String {
        match v.checked_mul(PER) {
            Some(us) => format_micros(us),
            // Beyond u64 microseconds: print in the key's own unit (an integer parses back).
            None => v.to_string(),
        }
    }
}

struct HumanVisitor<U, T>(PhantomData<(U, T)>);

impl<U: Unit, T: Int> HumanVisitor<U, T> {
    fn fit<E: de::Error>(v: u64) -> Result<T, E> {
        T::from_u64(v).ok_or_else(|| E::custom(format!("{v} is too large for this key")))
    }
}

impl<'de, U: Unit, T: Int> Visitor<'de> for HumanVisitor<U, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(U::EXPECTING)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
        Self::fit(v)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        // A bare number in a string is the old integer form (environment variables are
        // strings to some providers).
        if let Ok(v) = s.trim().parse::<u64>() {
            return Self::fit(v);
        }
        let v = U::parse(s).map_err(E::custom)?;
        Self::fit(v)
    }
}

fn ser<U: Unit, T: Int, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&U::format(v.to_u64()))
}

fn de<'de, U: Unit, T: Int, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(HumanVisitor::<U, T>(PhantomData))
}

macro_rules! unit_module {
    ($(#[$doc:meta])* $name:ident, $unit:ty) => {
        $(#[$doc])*
        pub mod $name {
            use super::*;

            /// Prints the value in human form.
            pub fn serialize<T: Int, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
                ser::<$unit, T, S>(v, s)
            }

            /// Reads an integer (the key's unit) or a human string.
            pub fn deserialize<'de, T: Int, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
                de::<$unit, T, D>(d)
            }
        }
    };
}

unit_module!(
    /// A size in bytes: `1073741824` or `"1GiB"`.
    size,
    Bytes
);
unit_module!(
    /// A duration in milliseconds: `10000` or `"10s"`.
    ms,
    Dur<1_000>
);
unit_module!(
    /// A duration in microseconds: `200` or `"200us"`.
    us,
    Dur<1>
);
unit_module!(
    /// A duration in whole hours: `72` or `"72h"` (or `"3d"`).
    hours,
    Dur<3_600_000_000>
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_back() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("7B").unwrap(), 7);
        assert!(parse_size("64").unwrap_err().contains("no unit"));
        assert!(parse_size("64XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        for v in [
            0,
            1,
            1023,
            1024,
            65_600,
            16 << 20,
            (16 << 20) + (64 << 10),
            1 << 30,
            3 << 40,
        ] {
            assert_eq!(
                parse_size(&format_size(v)).unwrap(),
                v,
                "{}",
                format_size(v)
            );
        }
        assert_eq!(format_size((16 << 20) + (64 << 10)), "16448KiB");
        assert_eq!(format_size(256 << 20), "256MiB");
    }

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        for us in [
            0,
            1,
            999,
            1_000,
            200_000,
            30_000_000,
            90_000_000,
            259_200_000_000,
        ] {
            let d = parse_duration(&format_micros(us)).unwrap();
            assert_eq!(d.as_micros(), us as u128, "{}", format_micros(us));
        }
        assert_eq!(format_micros(30_000_000), "30s");
        assert_eq!(format_micros(90_000_000), "90s");
        assert_eq!(format_micros(72 * 3_600_000_000), "3d");
        // A duration key takes only what its unit can hold.
        assert_eq!(<Dur<1_000>>::parse("2m").unwrap(), 120_000);
        assert!(<Dur<1_000>>::parse("1500us")
            .unwrap_err()
            .contains("whole number"));
        assert_eq!(<Dur<3_600_000_000>>::parse("3d").unwrap(), 72);
        assert!(<Dur<3_600_000_000>>::parse("90m").is_err());
    }
}
