//! Typed quantities, parsed once at load: CPU, memory, other resources and durations.
//!
//! The syntax is Kubernetes' (`500m`, `2`, `1.5`, `4Gi`, `512Mi`, `2G`, `1e3`), so a value an
//! admin copies from a pod spec means the same thing here. Values are kept exactly (no floats):
//! a quantity is an integer number of nano-units.

use std::fmt;

const NANO: u128 = 1_000_000_000;

/// A non-negative Kubernetes-style quantity, held exactly in nano-units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: u128,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("`{0}` is not a number followed by an optional unit")]
    Syntax(String),
    #[error("unknown unit `{unit}` in `{text}`")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is more precise than a nano-unit")]
    TooPrecise(String),
    #[error("`{0}` is negative")]
    Negative(String),
}

impl Quantity {
    pub fn from_nanos(nanos: u128) -> Quantity {
        Quantity { nanos }
    }

    pub fn nanos(self) -> u128 {
        self.nanos
    }

    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        if s.starts_with('-') {
            return Err(QuantityError::Negative(s.to_string()));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(QuantityError::Syntax(s.to_string()));
        }
        let too_large = || QuantityError::TooLarge(s.to_string());
        // Mantissa as an integer, with the decimal exponent adjusted for the fraction digits.
        let mut mantissa: u128 = 0;
        for d in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(d - b'0')))
                .ok_or_else(too_large)?;
        }
        let mut exp10: i64 = -(frac_part.len() as i64);
        let mut exp2: u32 = 0;
        match unit {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            u if u.starts_with(['e', 'E']) => {
                let e: i64 = u[1..]
                    .parse()
                    .map_err(|_| QuantityError::Syntax(s.to_string()))?;
                if !(-40..=40).contains(&e) {
                    return Err(too_large());
                }
                exp10 += e;
            }
            u => {
                return Err(QuantityError::UnknownUnit {
                    text: s.to_string(),
                    unit: u.to_string(),
                });
            }
        }
        // Scale to nano-units: multiply by 10^(exp10 + 9) and 2^exp2, exactly.
        let mut value = mantissa.checked_shl(exp2).ok_or_else(too_large)?;
        if exp2 > 0 && value >> exp2 != mantissa {
            return Err(too_large());
        }
        let scale = exp10 + 9;
        if scale >= 0 {
            let factor = 10u128.checked_pow(scale as u32).ok_or_else(too_large)?;
            value = value.checked_mul(factor).ok_or_else(too_large)?;
        } else {
            let divisor = 10u128
                .checked_pow((-scale) as u32)
                .ok_or_else(|| QuantityError::TooPrecise(s.to_string()))?;
            if value % divisor != 0 {
                return Err(QuantityError::TooPrecise(s.to_string()));
            }
            value /= divisor;
        }
        Ok(Quantity { nanos: value })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos.is_multiple_of(NANO) {
            let units = self.nanos / NANO;
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                if units >= 1 << shift && units.is_multiple_of(1 << shift) {
                    return write!(f, "{}{suffix}", units >> shift);
                }
            }
            write!(f, "{units}")
        } else if self.nanos.is_multiple_of(1_000_000) {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else if self.nanos.is_multiple_of(1_000) {
            write!(f, "{}u", self.nanos / 1_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

/// CPU, in thousandths of a core (`500m` = half a core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu {
    millis: u64,
}

impl Cpu {
    /// The most CPU any setting may ask for: 10,000 cores.
    pub const MAX: Cpu = Cpu { millis: 10_000_000 };

    pub fn from_millis(millis: u64) -> Cpu {
        Cpu { millis }
    }

    pub fn millis(self) -> u64 {
        self.millis
    }

    /// Cores as a float, for engines that take one (`docker --cpus`).
    pub fn cores(self) -> f64 {
        self.millis as f64 / 1000.0
    }

    pub fn parse(text: &str) -> Result<Cpu, String> {
        let q = Quantity::parse(text).map_err(|e| e.to_string())?;
        if q.nanos % 1_000_000 != 0 {
            return Err(format!(
                "`{text}` is finer than 1m (a thousandth of a core)"
            ));
        }
        u64::try_from(q.nanos / 1_000_000)
            .ok()
            .map(Cpu::from_millis)
            .filter(|c| *c <= Cpu::MAX)
            .ok_or_else(|| format!("`{text}` is more than the maximum of {} cores", Cpu::MAX))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis.is_multiple_of(1000) {
            write!(f, "{}", self.millis / 1000)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

/// Memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory {
    bytes: u64,
}

impl Memory {
    /// The most memory any setting may ask for: 1 PiB.
    pub const MAX: Memory = Memory { bytes: 1 << 50 };

    pub fn from_bytes(bytes: u64) -> Memory {
        Memory { bytes }
    }

    pub fn bytes(self) -> u64 {
        self.bytes
    }

    pub fn parse(text: &str) -> Result<Memory, String> {
        let q = Quantity::parse(text).map_err(|e| match e {
            QuantityError::UnknownUnit { text, unit } if unit.len() == 2 && unit.ends_with(['B', 'b']) => {
                let number = &text[..text.len() - unit.len()];
                let prefix = &unit[..1];
                let decimal = if prefix.eq_ignore_ascii_case("k") { "k".to_string() } else { prefix.to_uppercase() };
                format!(
                    "unknown unit `{unit}` in `{text}`: write `{number}{decimal}` (powers of 1000) or `{number}{}i` (powers of 1024)",
                    prefix.to_uppercase()
                )
            }
            e => e.to_string(),
        })?;
        if q.nanos % NANO != 0 {
            return Err(format!("`{text}` is not a whole number of bytes"));
        }
        u64::try_from(q.nanos / NANO)
            .ok()
            .map(Memory::from_bytes)
            .filter(|m| *m <= Memory::MAX)
            .ok_or_else(|| format!("`{text}` is more than the maximum of {}", Memory::MAX))
    }

    pub fn mib(self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", b >> shift);
            }
        }
        for (suffix, pow) in [("T", 12), ("G", 9), ("M", 6), ("k", 3)] {
            let unit = 10u64.pow(pow);
            if b >= unit && b.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", b / unit);
            }
        }
        write!(f, "{b}")
    }
}

/// A duration in whole seconds, written `90`, `90s`, `15m`, `2h`, `1d` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    secs: u64,
}

impl Duration {
    /// The longest duration any setting may be: 365 days. Deadlines are computed from it, so it
    /// also keeps every `now + duration` far from overflowing.
    pub const MAX: Duration = Duration { secs: 365 * 86_400 };

    pub const fn from_secs(secs: u64) -> Duration {
        Duration { secs }
    }

    /// A duration of `secs` seconds, or why it is refused (over [`Duration::MAX`]).
    pub fn checked_from_secs(secs: u64) -> Result<Duration, String> {
        if secs > Duration::MAX.secs {
            return Err(format!(
                "{secs} seconds is more than the maximum of 365d ({} seconds)",
                Duration::MAX.secs
            ));
        }
        Ok(Duration { secs })
    }

    pub fn secs(self) -> u64 {
        self.secs
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let s = text.trim();
        let bad = || format!("`{text}` is not a duration like `90s`, `15m`, `2h` or `1h30m`");
        if s.is_empty() {
            return Err(bad());
        }
        let too_long = || {
            format!(
                "`{text}` is more than the maximum of 365d ({} seconds)",
                Duration::MAX.secs
            )
        };
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= Duration::MAX.secs)
                .map(|secs| Duration { secs })
                .ok_or_else(too_long);
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            if digits.is_empty() {
                return Err(bad());
            }
            let n: u64 = digits.parse().map_err(|_| too_long())?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .filter(|t| *t <= Duration::MAX.secs)
                .ok_or_else(too_long)?;
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        Ok(Duration { secs: total })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.secs / 3600, self.secs / 60 % 60, self.secs % 60);
        let mut wrote = false;
        if h > 0 {
            write!(f, "{h}h")?;
            wrote = true;
        }
        if m > 0 {
            write!(f, "{m}m")?;
            wrote = true;
        }
        if s > 0 || !wrote {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// A size as people read it: `512 B`, `174.0 MiB` (binary units, one decimal), what the CLI
/// and the web UI both print.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_examples() {
        assert_eq!(Cpu::parse("500m").unwrap().millis(), 500);
        assert_eq!(Cpu::parse("2").unwrap().millis(), 2000);
        assert_eq!(Cpu::parse("1.5").unwrap().millis(), 1500);
        assert_eq!(Cpu::parse("0.001").unwrap().millis(), 1);
        assert!(Cpu::parse("0.0001").is_err());
        assert!(Cpu::parse("two").is_err());
        assert!(Cpu::parse("-1").is_err());
        assert_eq!(Cpu::parse("1500m").unwrap().to_string(), "1500m");
        assert_eq!(Cpu::parse("2000m").unwrap().to_string(), "2");
    }

    #[test]
    fn memory_examples() {
        assert_eq!(Memory::parse("4Gi").unwrap().bytes(), 4 << 30);
        assert_eq!(Memory::parse("512Mi").unwrap().bytes(), 512 << 20);
        assert_eq!(Memory::parse("2G").unwrap().bytes(), 2_000_000_000);
        assert_eq!(Memory::parse("1.5Gi").unwrap().bytes(), 3 << 29);
        assert_eq!(Memory::parse("1e3").unwrap().bytes(), 1000);
        assert_eq!(Memory::parse("129M").unwrap().to_string(), "129M");
        assert_eq!(Memory::parse("1024Mi").unwrap().to_string(), "1Gi");
        let err = Memory::parse("4GB").unwrap_err();
        assert!(err.contains("`4G`") && err.contains("`4Gi`"), "{err}");
        assert!(Memory::parse("0.5").is_err());
        assert!(Memory::parse("99999999999999999999999Ei").is_err());
    }

    #[test]
    fn duration_examples() {
        assert_eq!(Duration::parse("90").unwrap().secs(), 90);
        assert_eq!(Duration::parse("1h30m").unwrap().secs(), 5400);
        assert_eq!(Duration::parse("2d").unwrap().secs(), 172_800);
        assert_eq!(Duration::parse("5400").unwrap().to_string(), "1h30m");
        assert!(Duration::parse("1x").is_err());
        assert!(Duration::parse("h").is_err());
        assert!(Duration::parse("5m3").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = Quantity::parse(&s);
            let _ = Cpu::parse(&s);
            let _ = Memory::parse(&s);
            let _ = Duration::parse(&s);
        }

        #[test]
        fn memory_display_round_trips(bytes in 0u64..(1 << 50)) {
            let m = Memory::from_bytes(bytes);
            prop_assert_eq!(Memory::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn cpu_display_round_trips(millis in 0u64..10_000_000) {
            let c = Cpu::from_millis(millis);
            prop_assert_eq!(Cpu::parse(&c.to_string()).unwrap(), c);
        }

        #[test]
        fn binary_units_scale(n in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)][unit];
            match Memory::parse(&format!("{n}{suffix}")) {
                Ok(q) => prop_assert_eq!(u128::from(q.bytes()), u128::from(n) << shift),
                Err(e) => {
                    prop_assert!(u128::from(n) << shift > u128::from(Memory::MAX.bytes()));
                    prop_assert!(e.ends_with("is more than the maximum of 1024Ti"), "{}", e);
                }
            }
        }

        #[test]
        fn durations_over_the_maximum_are_refused(n in 0u64..u64::MAX, unit in 0usize..4) {
            let (suffix, secs) = [("s", 1u128), ("m", 60), ("h", 3600), ("d", 86_400)][unit];
            match Duration::parse(&format!("{n}{suffix}")) {
                Ok(d) => prop_assert_eq!(u128::from(d.secs()), u128::from(n) * secs),
                Err(e) => {
                    prop_assert!(u128::from(n) * secs > u128::from(Duration::MAX.secs()));
                    prop_assert!(e.contains("is more than the maximum of 365d"), "{}", e);
                }
            }
        }
    }
}
