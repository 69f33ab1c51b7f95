//! Kubernetes resource quantities (`100m`, `2`, `0.5`, `64Mi`, `1G`, `1e3`, `250n`), as the
//! scheduler, the autoscaler and the node agents read them.

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

/// The sum of `pod`'s containers' requests of `resource` (`cpu`, `memory`), times `scale`.
pub fn pod_request(pod: &k8s_openapi::api::core::v1::Pod, resource: &str, scale: f64) -> f64 {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .filter_map(|q| parse(&q.0, scale))
        .sum()
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
    }
}
