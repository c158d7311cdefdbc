//! The clock, in the API's timestamp type.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Now, to the second: the API stores seconds, so in-memory values match what is read back.
pub fn now() -> Time {
    let ts = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// Seconds from `from` to now (0 if `from` is in the future).
pub fn seconds_since(from: &Time) -> f64 {
    let d = jiff::Timestamp::now().duration_since(from.0);
    d.as_secs_f64().max(0.0)
}
