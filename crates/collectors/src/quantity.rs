//! Kubernetes resource quantities ("500m", "1.5Gi", "2", "1e3", "16266384Ki"), parsed exactly.
//!
//! The one parser for kdiag's collectors and diagnosers. A quantity is kept as an integer
//! mantissa times a power of ten and a power of 1024: "1.5Gi" is 15 × 10⁻¹ × 1024³ and "250m"
//! is 250 × 10⁻³. Nothing goes through binary floating point, so "0.1", "1.1" or a 17-digit
//! byte count come out exactly; amounts are rounded once, up, when a caller asks for an integer
//! (the kubelet and the scheduler round quantities up too).
//!
//! Why not the `kube_quantity` crate (0.9): it reads the number through an `f64` as well, so it
//! is not exact either; its integer conversions truncate the fraction before scaling ("1.5Gi"
//! gives 1 GiB) and return nothing for milli-units; and it rejects the exa suffixes "1E" and
//! "2Ei".

/// A parsed quantity: `±mantissa × 10^pow10 × 1024^pow1024`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    pow10: i32,
    pow1024: u32,
}

impl Quantity {
    /// Parses `[+-]<digits>[.<digits>]<suffix>` with surrounding whitespace allowed, where the
    /// suffix is empty, a decimal SI prefix (`n u m k M G T P E`), a binary one
    /// (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`). `None` for anything else,
    /// and for more significant digits than 128 bits hold (38; the apiserver keeps far fewer).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let bytes = text.as_bytes();
        let (negative, start) = match bytes.first() {
            Some(b'-') => (true, 1),
            Some(b'+') => (false, 1),
            _ => (false, 0),
        };
        // One pass over the digits and the point. Up to 19 digits fit a u64, where arithmetic
        // is cheapest; more go on in u128.
        let mut mantissa: u64 = 0;
        let mut wide: Option<u128> = None;
        let (mut digits, mut fraction_digits, mut point) = (0usize, 0i64, false);
        let mut end = start;
        for &b in &bytes[start..] {
            match b {
                b'0'..=b'9' => {
                    let d = b - b'0';
                    match wide.as_mut() {
                        Some(w) => *w = w.checked_mul(10)?.checked_add(u128::from(d))?,
                        None if digits < 19 => mantissa = mantissa * 10 + u64::from(d),
                        None => {
                            wide = Some(
                                u128::from(mantissa)
                                    .checked_mul(10)?
                                    .checked_add(u128::from(d))?,
                            )
                        }
                    }
                    digits += 1;
                    fraction_digits += i64::from(point);
                }
                b'.' if !point => point = true,
                // A second point or sign is part of the number, and makes it not one.
                b'.' | b'+' | b'-' => return None,
                _ => break,
            }
            end += 1;
        }
        if digits == 0 {
            return None;
        }
        let mantissa = wide.unwrap_or(u128::from(mantissa));
        let suffix = &text[end..];
        let (pow10, pow1024): (i64, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            s if s.starts_with(['e', 'E']) => (i64::from(s[1..].parse::<i32>().ok()?), 0),
            _ => return None,
        };
        Some(Self {
            negative,
            mantissa,
            pow10: i32::try_from(pow10 - fraction_digits).ok()?,
            pow1024,
        })
    }

    /// The amount in units of 10^-`scale` (0: base units such as bytes or cores, 3: milli-units),
    /// rounded up (towards +∞); saturates at the ends of i64.
    pub fn ceil_scaled(&self, scale: i32) -> i64 {
        let magnitude = self.magnitude(scale);
        if self.negative {
            // ⌈-x⌉ = -⌊x⌋
            0i64.saturating_sub_unsigned(magnitude.floor.min(u64::MAX as u128) as u64)
        } else {
            i64::try_from(magnitude.ceil).unwrap_or(i64::MAX)
        }
    }

    /// Bytes, rounded up; saturates at u64::MAX. `None` for a negative amount.
    pub fn bytes(&self) -> Option<u64> {
        let magnitude = self.magnitude(0);
        if self.negative && magnitude.ceil > 0 {
            return None;
        }
        Some(u64::try_from(magnitude.ceil).unwrap_or(u64::MAX))
    }

    /// |value| × 10^scale, rounded down and up; u128::MAX stands for "larger than any integer
    /// kdiag uses".
    fn magnitude(&self, scale: i32) -> Magnitude {
        const HUGE: Magnitude = Magnitude {
            floor: u128::MAX,
            ceil: u128::MAX,
        };
        if self.mantissa == 0 {
            return Magnitude { floor: 0, ceil: 0 };
        }
        let mut exp = i64::from(self.pow10) + i64::from(scale);
        // Every quantity the apiserver stores fits 64 bits here, where arithmetic is cheap
        // (128-bit division is a library call); the rest of this function is for the others.
        if let Some(m) = self.magnitude_u64(exp) {
            return m;
        }
        let mut mantissa = self.mantissa;
        // Trailing zeros of a fraction cancel exactly.
        while exp < 0 && mantissa.is_multiple_of(10) {
            mantissa /= 10;
            exp += 1;
        }
        let binary = 1024u128.pow(self.pow1024);
        let product = loop {
            match mantissa.checked_mul(binary) {
                Some(p) => break p,
                // Only with more than ~20 significant digits, beyond any quantity the apiserver
                // keeps: drop the last one, rounding up.
                None if exp < 0 => {
                    mantissa = mantissa.div_ceil(10);
                    exp += 1;
                }
                None => return HUGE,
            }
        };
        if exp >= 0 {
            let Some(value) = u32::try_from(exp)
                .ok()
                .and_then(|e| 10u128.checked_pow(e))
                .and_then(|p| product.checked_mul(p))
            else {
                return HUGE;
            };
            return Magnitude {
                floor: value,
                ceil: value,
            };
        }
        match u32::try_from(-exp).ok().and_then(|e| 10u128.checked_pow(e)) {
            Some(divisor) => Magnitude {
                floor: product / divisor,
                ceil: product.div_ceil(divisor),
            },
            // The divisor is beyond u128, so the product is smaller than it: between 0 and 1.
            None => Magnitude { floor: 0, ceil: 1 },
        }
    }
}

impl Quantity {
    /// [`magnitude`](Self::magnitude) in 64-bit arithmetic, `None` where it does not fit.
    fn magnitude_u64(&self, exp: i64) -> Option<Magnitude> {
        let product = u64::try_from(self.mantissa)
            .ok()?
            .checked_mul(1u64.checked_shl(10 * self.pow1024)?)?;
        let power = 10u64.checked_pow(u32::try_from(exp.unsigned_abs()).ok()?)?;
        let (floor, ceil) = if exp >= 0 {
            let value = product.checked_mul(power)?;
            (value, value)
        } else {
            (product / power, product.div_ceil(power))
        };
        Some(Magnitude {
            floor: u128::from(floor),
            ceil: u128::from(ceil),
        })
    }
}

struct Magnitude {
    floor: u128,
    ceil: u128,
}

/// Bytes in a quantity ("100Mi", "1.5Gi", "500000"), rounded up. `None` for anything that is
/// not a quantity, or a negative one.
pub fn bytes(text: &str) -> Option<u64> {
    Quantity::parse(text)?.bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(q: &str) -> Option<i64> {
        Quantity::parse(q).map(|q| q.ceil_scaled(3))
    }

    fn units(q: &str) -> Option<i64> {
        Quantity::parse(q).map(|q| q.ceil_scaled(0))
    }

    #[test]
    fn binary_decimal_and_plain_quantities_give_bytes() {
        assert_eq!(bytes("100Mi"), Some(100 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(bytes("500000"), Some(500_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("16266384Ki"), Some(16_266_384 * 1024));
        assert_eq!(bytes(" 64Mi\n"), Some(64 << 20));
    }

    #[test]
    fn every_suffix_scales_as_kubernetes_defines_it() {
        assert_eq!(millis("500m"), Some(500));
        assert_eq!(millis("2"), Some(2000));
        assert_eq!(millis("250000u"), Some(250));
        assert_eq!(millis("250000000n"), Some(250));
        assert_eq!(units("1k"), Some(1000));
        assert_eq!(units("1M"), Some(1_000_000));
        assert_eq!(units("1T"), Some(1_000_000_000_000));
        assert_eq!(units("1P"), Some(1_000_000_000_000_000));
        assert_eq!(units("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(units("1Ki"), Some(1 << 10));
        assert_eq!(units("1Ti"), Some(1 << 40));
        assert_eq!(units("1Pi"), Some(1 << 50));
        assert_eq!(units("2Ei"), Some(2 << 60));
        assert_eq!(units("1E3"), Some(1000));
        assert_eq!(units("1e+3"), Some(1000));
        assert_eq!(millis("5e-3"), Some(5));
    }

    #[test]
    fn numbers_take_a_sign_and_a_fraction_on_either_side_of_the_point() {
        assert_eq!(millis("+1"), Some(1000));
        assert_eq!(millis("-1"), Some(-1000));
        assert_eq!(millis(".5"), Some(500));
        assert_eq!(millis("5."), Some(5000));
        assert_eq!(millis("-0"), Some(0));
        assert_eq!(bytes("-0"), Some(0));
    }

    #[test]
    fn what_is_not_a_quantity_is_none() {
        for q in [
            "",
            " ",
            "x",
            "10x",
            "12x",
            "Mi",
            ".",
            "-",
            "+-1",
            "1-2",
            "1.2.3",
            "1e",
            "1ee3",
            "1e3.5",
            "1Mi2",
            "1 Mi",
            "1e99999999999",
            "0x10",
        ] {
            assert_eq!(Quantity::parse(q), None, "{q:?}");
        }
        assert_eq!(bytes("-1"), None, "a negative size");
        assert_eq!(bytes("-1m"), None, "a negative size");
    }

    #[test]
    fn fractions_round_up_once_and_exactly() {
        assert_eq!(bytes("1.5"), Some(2));
        assert_eq!(bytes("100m"), Some(1));
        assert_eq!(bytes("1e-3"), Some(1));
        assert_eq!(millis("1.1"), Some(1100));
        assert_eq!(millis("0.0001"), Some(1));
        assert_eq!(millis("-1.5m"), Some(-1), "towards +∞, as before");
        assert_eq!(
            millis("0.29"),
            Some(290),
            "0.29 × 1000 is 290.00000000000006 in f64"
        );
        assert_eq!(bytes("0.1Ki"), Some(103));
        assert_eq!(bytes("1.0000000000000000000000000000000Ei"), Some(1 << 60));
        assert_eq!(units("1e-400"), Some(1));
        assert_eq!(units("-1e-300"), Some(0));
    }

    #[test]
    fn integers_beyond_f64_precision_stay_exact() {
        assert_eq!(bytes("9007199254740993"), Some(9_007_199_254_740_993));
        assert_eq!(units("8Ei"), Some(i64::MAX), "2^63 saturates");
        assert_eq!(units("-8Ei"), Some(i64::MIN));
        assert_eq!(
            units("7.999999999999999999Ei"),
            Some(9_223_372_036_854_775_807)
        );
        assert_eq!(bytes("15Ei"), Some(15 << 60));
        assert_eq!(
            bytes("16Ei"),
            Some(u64::MAX),
            "saturates like a float cast did"
        );
        assert_eq!(bytes("1e100"), Some(u64::MAX));
        assert_eq!(
            bytes("1.23456789012345678901234567Ei"),
            Some(1_423_359_869_420_436_338),
            "beyond u128 with 1024^6: the last digits round up"
        );
    }

    /// The f64 parser both crates had before, as a reference.
    fn f64_reference(q: &str) -> Option<f64> {
        let q = q.trim();
        let split = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(q.len());
        let (number, suffix) = q.split_at(split);
        let number: f64 = number.parse().ok()?;
        let factor: f64 = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
            _ => return None,
        };
        Some(number * factor)
    }

    #[test]
    fn where_f64_was_exact_the_amounts_are_unchanged() {
        let numbers = [
            "0", "1", "2", "3", "5", "10", "16", "25", "50", "64", "100", "110", "128", "250",
            "256", "500", "512", "750", "1000", "1024", "2048", "3800", "4096", "16266384",
            "32780412", "0.5", "1.5", "2.5", "0.25", "0.75",
        ];
        // No suffix below 1: 10⁻³ and smaller have no exact f64.
        let suffixes = [
            "", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "e3", "e6",
        ];
        let mut compared = 0;
        for n in numbers {
            for s in suffixes {
                let q = format!("{n}{s}");
                let reference = f64_reference(&q).unwrap();
                // Below 2^53 every integer, and so every product here, is exact in f64.
                if reference * 1000.0 >= 2f64.powi(53) {
                    continue;
                }
                let parsed = Quantity::parse(&q).unwrap();
                assert_eq!(
                    parsed.ceil_scaled(3),
                    (reference * 1000.0).ceil() as i64,
                    "{q} in milli-units"
                );
                assert_eq!(
                    parsed.bytes(),
                    Some(reference.ceil() as u64),
                    "{q} in bytes"
                );
                compared += 1;
            }
        }
        assert!(compared > 250, "{compared}");
    }

    #[test]
    fn milli_units_are_exact_where_f64_was_not() {
        // 3800m is a common allocatable CPU; through f64 it was 3.8000000000000003 cores, so
        // 3801 millicores. One in eight of 1m..100000m was off by one that way.
        assert_eq!((f64_reference("3800m").unwrap() * 1000.0).ceil(), 3801.0);
        assert_eq!(millis("3800m"), Some(3800));
        for i in 1..=100_000 {
            assert_eq!(millis(&format!("{i}m")), Some(i));
        }
    }
}
