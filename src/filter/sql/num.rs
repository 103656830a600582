//! Numbers in filters: literals and property values read as numbers.
//!
//! A text is a number when it matches `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`
//! with no surrounding whitespace. Integers that fit an `i64` stay exact; everything else is an
//! `f64`. Two integers compare exactly; any other pair compares as `f64`.

use std::cmp::Ordering;
use std::fmt;

/// A number read from a literal or a property value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// An integer that fits an `i64`.
    Int(i64),
    /// Anything else: a decimal, an exponent, or an integer too large for `i64` (always finite).
    Float(f64),
}

impl Num {
    /// Reads `text` as a number; `None` when it is not one (or overflows to infinity).
    pub(crate) fn parse(text: &str) -> Option<Num> {
        let b = text.as_bytes();
        let (neg, digits) = match b.first()? {
            b'-' => (true, &b[1..]),
            b'+' => (false, &b[1..]),
            _ => (false, b),
        };
        // Fast path: a plain integer.
        if !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit) {
            let mut v: u64 = 0;
            for d in digits {
                v = v * 10 + u64::from(d - b'0');
            }
            if neg {
                if v <= 1u64 << 63 {
                    return Some(Num::Int((v as i64).wrapping_neg()));
                }
            } else if let Ok(i) = i64::try_from(v) {
                return Some(Num::Int(i));
            }
            // Too large for i64: read as a float below.
        }
        if let Some(f) = short_decimal(digits) {
            return Some(Num::Float(if neg { -f } else { f }));
        }
        if !valid_decimal(digits) {
            return None;
        }
        let f: f64 = text.parse().ok()?;
        f.is_finite().then_some(Num::Float(f))
    }

    /// The value as an `f64` (exact for integers up to 2^53).
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// Orders two numbers: exactly for two integers, as `f64` otherwise.
    pub(crate) fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            _ => self.as_f64().partial_cmp(&other.as_f64()),
        }
    }
}

impl fmt::Display for Num {
    /// Text that [`Num::parse`] reads back to the same value and kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            // Debug keeps a `.0` or an exponent, so the text reads back as a float.
            Num::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Fast path for `digits . digits` without an exponent and with at most 15 digits in all:
/// the digits form an integer below 2^53 and the divisor is an exact power of ten, so one
/// IEEE division gives the correctly rounded value, the same as `str::parse::<f64>`.
fn short_decimal(b: &[u8]) -> Option<f64> {
    if b.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut frac: Option<usize> = None;
    for &c in b {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
                if let Some(f) = frac.as_mut() {
                    *f += 1;
                }
            }
            b'.' if frac.is_none() => frac = Some(0),
            _ => return None,
        }
    }
    let frac = frac?;
    if digits == 0 || digits > 15 {
        return None;
    }
    Some(mantissa as f64 / POW10[frac])
}

/// `digits [. digits?] | . digits`, then an optional exponent (sign already stripped).
fn valid_decimal(b: &[u8]) -> bool {
    let mut i = 0;
    let int_digits = count_digits(&b[i..]);
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = count_digits(&b[i..]);
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = count_digits(&b[i..]);
        if exp_digits == 0 {
            return false;
        }
        i += exp_digits;
    }
    i == b.len()
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_refuses_the_rest() {
        assert_eq!(Num::parse("10"), Some(Num::Int(10)));
        assert_eq!(Num::parse("-7"), Some(Num::Int(-7)));
        assert_eq!(Num::parse("+7"), Some(Num::Int(7)));
        assert_eq!(Num::parse("3.5"), Some(Num::Float(3.5)));
        assert_eq!(Num::parse("5."), Some(Num::Float(5.0)));
        assert_eq!(Num::parse(".5"), Some(Num::Float(0.5)));
        assert_eq!(Num::parse("1e3"), Some(Num::Float(1000.0)));
        assert_eq!(Num::parse("1E-2"), Some(Num::Float(0.01)));
        assert_eq!(Num::parse("-9223372036854775808"), Some(Num::Int(i64::MIN)));
        assert_eq!(
            Num::parse("9223372036854775808"),
            Some(Num::Float(9_223_372_036_854_775_808.0))
        );
        for bad in [
            "", "-", "+", ".", "e5", "1e", "1e+", " 1", "1 ", "0x10", "1_0", "NaN", "inf",
            "infinity", "1e999", "1..2", "1.2.3", "--1", "abc", "3.5x",
        ] {
            assert_eq!(Num::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_decimal_fast_path_equals_the_full_parser() {
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let int = (x >> 20) % 10_000_000;
            let frac_digits = ((x >> 8) % 9) as usize;
            let frac = (x >> 40) % 10u64.pow(frac_digits as u32);
            let text = format!("{int}.{frac:0frac_digits$}");
            let want: f64 = text.parse().unwrap();
            assert_eq!(Num::parse(&text), Some(Num::Float(want)), "{text}");
            let neg = format!("-{text}");
            assert_eq!(Num::parse(&neg), Some(Num::Float(-want)), "{neg}");
        }
        assert_eq!(Num::parse("0.1"), Some(Num::Float(0.1)));
        assert_eq!(
            Num::parse("123456789012345.6"),
            Some(Num::Float(123_456_789_012_345.6))
        );
        assert_eq!(
            Num::parse("-0.0").map(|n| n.as_f64().is_sign_negative()),
            Some(true)
        );
    }

    #[test]
    fn display_reads_back() {
        for n in [
            Num::Int(0),
            Num::Int(i64::MIN),
            Num::Int(i64::MAX),
            Num::Float(0.1),
            Num::Float(-2.5),
            Num::Float(1e300),
            Num::Float(1e-300),
            Num::Float(5.0),
        ] {
            assert_eq!(Num::parse(&n.to_string()), Some(n), "{n}");
        }
    }

    #[test]
    fn integers_compare_exactly_and_mixed_as_floats() {
        let big = Num::Int(i64::MAX);
        assert_eq!(big.compare(Num::Int(i64::MAX - 1)), Some(Ordering::Greater));
        assert_eq!(
            Num::Float(3.5).compare(Num::Int(3)),
            Some(Ordering::Greater)
        );
        assert_eq!(Num::Int(3).compare(Num::Float(3.0)), Some(Ordering::Equal));
    }
}
