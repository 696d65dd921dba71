//! Durations and sizes as people write them: `30s`, `1h 30m`, `256MiB`.

use std::time::Duration;

/// Parses a duration such as `30s`, `5m`, `1h 30m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is not a duration; write it like `30s`, `5m` or `1h 30m`"))?;
    if d.is_zero() {
        return Err(format!("`{text}` is zero; a duration must be positive"));
    }
    Ok(d)
}

/// Parses a size such as `256MiB`, `1 GB` or `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize =
        text.trim().parse().map_err(|_| format!("`{text}` is not a size; write it like `256MiB`, `1GiB` or `4096`"))?;
    if size.as_u64() == 0 {
        return Err(format!("`{text}` is zero; a size must be positive"));
    }
    Ok(size.as_u64())
}

/// A size for people: `256 MiB`, `1.5 KiB`, `17 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("30 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(format_size(256 << 20), "256 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(17), "17 B");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
