//! Kubernetes resource quantities (`100m`, `2`, `0.5`, `64Mi`, `1G`, `1e3`, `250n`), as the
//! scheduler, the autoscaler, the node agents and quota admission read them.

/// Parses quantity `q` times `scale` (1000 to get millicores from cores, 1 for bytes); `None`
/// if it is not a non-negative quantity.
pub fn parse(q: &str, scale: f64) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
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
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * factor * scale)
}

/// [`parse`], rounded up to a whole number (what requests and capacities add up in).
pub fn parse_ceil(q: &str, scale: f64) -> Option<u64> {
    parse(q, scale).map(|v| v.ceil() as u64)
}

/// Quantity `q` in thousandths of its unit (millicores, millibytes), rounded up: the exact
/// integer form quotas and limits compare and add in.
pub fn milli(q: &str) -> Option<u128> {
    parse(q, 1000.0).map(|v| v.ceil() as u128)
}

/// `milli` thousandths as a quantity, in the form Kubernetes prints it: a whole number, else
/// millis (`500m`); whole amounts that are a multiple of 1024 take a binary suffix when
/// `binary` (memory), else a decimal one when a multiple of 1000 (`2k`, `3M`).
pub fn format(milli: u128, binary: bool) -> String {
    if !milli.is_multiple_of(1000) {
        return format!("{milli}m");
    }
    let mut n = milli / 1000;
    if n == 0 {
        return "0".into();
    }
    let (base, suffixes): (u128, &[&str]) = if binary {
        (1024, &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
    } else {
        (1000, &["k", "M", "G", "T", "P", "E"])
    };
    let mut suffix = "";
    for s in suffixes {
        if !n.is_multiple_of(base) {
            break;
        }
        n /= base;
        suffix = s;
    }
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_ceil("100m", 1000.0), Some(100));
        assert_eq!(parse_ceil("2", 1000.0), Some(2000));
        assert_eq!(parse_ceil("0.5", 1000.0), Some(500));
        assert_eq!(parse_ceil("64Mi", 1.0), Some(64 * 1024 * 1024));
        assert_eq!(parse_ceil("1G", 1.0), Some(1_000_000_000));
        assert_eq!(parse_ceil("1e3", 1.0), Some(1000));
        assert_eq!(parse_ceil("250000000n", 1000.0), Some(250));
        assert_eq!(parse("12Xi", 1.0), None);
        assert_eq!(parse("-1", 1.0), None);
        assert_eq!(milli("250m"), Some(250));
        assert_eq!(milli("1Gi"), Some(1024 * 1024 * 1024 * 1000));
    }

    #[test]
    fn quantities_print_like_kubernetes() {
        assert_eq!(format(500, false), "500m");
        assert_eq!(format(2000, false), "2");
        assert_eq!(format(0, true), "0");
        assert_eq!(format(milli("128Mi").unwrap(), true), "128Mi");
        assert_eq!(format(milli("1536Mi").unwrap(), true), "1536Mi");
        assert_eq!(format(milli("2Gi").unwrap(), true), "2Gi");
        assert_eq!(format(milli("1000").unwrap(), true), "1000");
        assert_eq!(format(milli("3000").unwrap(), false), "3k");
    }
}
