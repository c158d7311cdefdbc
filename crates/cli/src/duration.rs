//! Duration flags as kubectl writes them: 90s, 5m, 72h, 7d.

use std::time::Duration;

use crate::DiagError;

/// Parses durations such as 90s, 5m, 72h, 7d (or a bare number of seconds). The error is a usage
/// error saying how to write one.
pub fn parse_duration(s: &str) -> Result<Duration, DiagError> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| {
        DiagError::Usage(format!(
            "{s:?} is not a duration; use a number with s, m, h or d, such as 90s or 72h"
        ))
    })?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(DiagError::Usage(format!(
                "{s:?} has unit {unit:?}; use s, m, h or d"
            )));
        }
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_flags() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("72h"), Duration::from_secs(72 * 3600));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86400));
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert!(
            parse_duration("5 minutes")
                .unwrap_err()
                .to_string()
                .contains("use s, m, h or d")
        );
        assert!(parse_duration("soon").is_err());
    }
}
