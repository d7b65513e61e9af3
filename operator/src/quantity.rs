//! Kubernetes resource quantities, read as byte counts, so storage sizes can be compared.

/// Bytes a quantity such as `10Gi`, `500M` or `1.5Ti` stands for; `None` when it is not a
/// quantity the storage rules accept (signs, exponents and milli-units are refused).
pub fn bytes(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn binary_and_decimal_suffixes_are_read() {
        assert_eq!(bytes("10Gi"), Some(10.0 * 1024f64.powi(3)));
        assert_eq!(bytes("500M"), Some(5e8));
        assert_eq!(bytes("1.5Ki"), Some(1536.0));
        assert_eq!(bytes("42"), Some(42.0));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for q in [
            "", "Gi", "-1Gi", "1.Gi", ".5Gi", "1e3", "10GB", "10 Gi", "1..2Gi", "100m",
        ] {
            assert_eq!(bytes(q), None, "{q:?}");
        }
    }
}
