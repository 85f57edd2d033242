//! Human-readable units for benchmark times and throughputs, with three
//! significant digits (`1.23 µs`, `45.6 Gelem/s`).

use crate::criterion::Throughput;

/// Element rates, in steps of 1000.
const ELEMENT_UNITS: [&str; 5] = ["elem/s", "Kelem/s", "Melem/s", "Gelem/s", "Telem/s"];
/// Byte rates, in steps of 1024.
const BYTE_UNITS: [&str; 5] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
/// Byte rates, in steps of 1000.
const DECIMAL_BYTE_UNITS: [&str; 5] = ["B/s", "KB/s", "MB/s", "GB/s", "TB/s"];
/// Bit rates, in steps of 1000.
const BIT_UNITS: [&str; 5] = ["bit/s", "Kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
/// Durations, in steps of 1000, starting from nanoseconds.
const TIME_UNITS: [&str; 4] = ["ns", "µs", "ms", "s"];

/// Formats a duration given in nanoseconds, e.g. `1234.0` as `1.23 µs`.
pub(crate) fn format_time(nanoseconds: f64) -> String {
    scaled(nanoseconds, 1000.0, &TIME_UNITS)
}

/// Formats the rate at which one iteration of `nanoseconds` processes `throughput`.
///
/// Units follow criterion's own report: `Bytes` in binary units (KiB/s, GiB/s),
/// `BytesDecimal` and `Bits` in decimal ones, `Elements` as elem/s with SI
/// prefixes (whatever the benchmark counts as an element, FLOPs included).
pub(crate) fn format_throughput(throughput: &Throughput, nanoseconds: f64) -> String {
    if nanoseconds <= 0.0 || !nanoseconds.is_finite() {
        return "n/a".to_owned();
    }
    let per_second = |amount: u64| amount as f64 / (nanoseconds * 1e-9);
    match *throughput {
        Throughput::Elements(n) => scaled(per_second(n), 1000.0, &ELEMENT_UNITS),
        Throughput::Bytes(n) => scaled(per_second(n), 1024.0, &BYTE_UNITS),
        Throughput::BytesDecimal(n) => scaled(per_second(n), 1000.0, &DECIMAL_BYTE_UNITS),
        Throughput::Bits(n) => scaled(per_second(n), 1000.0, &BIT_UNITS),
        Throughput::ElementsAndBytes { elements, bytes } => format!(
            "{}, {}",
            scaled(per_second(elements), 1000.0, &ELEMENT_UNITS),
            scaled(per_second(bytes), 1024.0, &BYTE_UNITS)
        ),
    }
}

/// Divides `value` by `step` until it prints with at most three digits before
/// the point (or the largest unit is reached) and appends that unit.
/// `units` must not be empty.
fn scaled(value: f64, step: f64, units: &[&str]) -> String {
    let mut value = value;
    let mut unit = 0;
    // 999.5 and above would round to 1000: show those in the next unit.
    while value.abs() >= 999.5 && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    format!("{} {}", three_significant_digits(value), units[unit])
}

/// Formats `value` with three significant digits: `1.23`, `12.3`, `123`, `0.0123`;
/// larger numbers keep all their integer digits (`4560`).
fn three_significant_digits(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = |x: f64| x.abs().log10().floor() as i32;
    let scale = 10f64.powi(2 - magnitude(value));
    // Rounding first makes 9.996 print as `10.0`, not `10.00`.
    let rounded = (value * scale).round() / scale;
    let decimals = (2 - magnitude(rounded)).max(0) as usize;
    format!("{rounded:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_digits() {
        assert_eq!(three_significant_digits(1.234), "1.23");
        assert_eq!(three_significant_digits(12.34), "12.3");
        assert_eq!(three_significant_digits(123.4), "123");
        assert_eq!(three_significant_digits(0.01236), "0.0124");
        assert_eq!(three_significant_digits(9.996), "10.0");
        assert_eq!(three_significant_digits(4567.0), "4570");
        assert_eq!(three_significant_digits(0.0), "0");
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0.5), "0.500 ns");
        assert_eq!(format_time(12.0), "12.0 ns");
        assert_eq!(format_time(999.4), "999 ns");
        assert_eq!(format_time(999.6), "1.00 µs");
        assert_eq!(format_time(1234.0), "1.23 µs");
        assert_eq!(format_time(45_600_000.0), "45.6 ms");
        assert_eq!(format_time(2.5e9), "2.50 s");
        assert_eq!(format_time(1.5e12), "1500 s");
    }

    #[test]
    fn element_rates() {
        // 2e9 elements in 1 s.
        assert_eq!(
            format_throughput(&Throughput::Elements(2_000_000_000), 1e9),
            "2.00 Gelem/s"
        );
        // 1000 elements in 1 µs = 1e9 elem/s.
        assert_eq!(
            format_throughput(&Throughput::Elements(1000), 1000.0),
            "1.00 Gelem/s"
        );
        assert_eq!(
            format_throughput(&Throughput::Elements(3), 1e9),
            "3.00 elem/s"
        );
        assert_eq!(
            format_throughput(&Throughput::Elements(123_456), 1e9),
            "123 Kelem/s"
        );
    }

    #[test]
    fn byte_and_bit_rates() {
        // 1 GiB in 1 s.
        assert_eq!(
            format_throughput(&Throughput::Bytes(1 << 30), 1e9),
            "1.00 GiB/s"
        );
        assert_eq!(
            format_throughput(&Throughput::Bytes(1536), 1e9),
            "1.50 KiB/s"
        );
        assert_eq!(
            format_throughput(&Throughput::BytesDecimal(2_500_000), 1e9),
            "2.50 MB/s"
        );
        assert_eq!(
            format_throughput(&Throughput::Bits(10_000_000_000), 1e9),
            "10.0 Gbit/s"
        );
        let both = Throughput::ElementsAndBytes {
            elements: 1_000_000,
            bytes: 4 << 20,
        };
        assert_eq!(format_throughput(&both, 1e9), "1.00 Melem/s, 4.00 MiB/s");
    }

    #[test]
    fn degenerate_time_has_no_rate() {
        assert_eq!(format_throughput(&Throughput::Elements(10), 0.0), "n/a");
        assert_eq!(
            format_throughput(&Throughput::Elements(10), f64::NAN),
            "n/a"
        );
    }
}
