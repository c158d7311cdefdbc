//! Duration flags as kubectl writes them: 90s, 5m, 72h, 7d, and compound forms such as 1h30m.

use std::time::Duration;

use jiff::{Span, SpanRelativeTo};

/// Parses durations such as 90s, 5m, 72h, 7d, 1h30m or 2d12h (or a bare number of seconds).
///
/// Everything but the bare number is jiff's friendly duration format, so `1h 30m`,
/// `90 minutes` and ISO 8601's `PT90M` are read too. A day is 24 hours; months and years are
/// refused, as their length depends on the date.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too many seconds"));
    }
    let span: Span = s.parse().map_err(|e| {
        format!(
            "{s:?} is not a duration ({e}); use numbers with s, m, h or d, such as 90s, 72h or 1h30m"
        )
    })?;
    let signed = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{s:?} has no fixed length ({e}); use s, m, h or d"))?;
    Duration::try_from(signed).map_err(|_| format!("{s:?} is negative; a duration here is not"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_flags() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 20s "), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn compound_durations_add_up() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("2d12h"),
            Ok(Duration::from_secs(60 * 3600)),
            "a day is 24 hours"
        );
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5 minutes"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn what_is_not_a_duration_says_how_to_write_one() {
        for bad in ["soon", "", "5x", "m5", "1h30"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("such as 90s, 72h or 1h30m"), "{bad:?}: {e}");
        }
        // Months and years have no fixed length.
        assert!(
            parse_duration("1mo")
                .unwrap_err()
                .contains("no fixed length")
        );
        assert!(
            parse_duration("1y")
                .unwrap_err()
                .contains("no fixed length")
        );
        assert!(parse_duration("-5m").unwrap_err().contains("negative"));
        assert!(parse_duration("99999999999999999999").is_err());
    }
}
