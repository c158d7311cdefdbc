//! Duration flags as kubectl writes them (90s, 5m, 72h, 7d, 1h30m): the parser lives in kdiag-api
//! so the controller's `GET /gate?maxAge=…` reads them exactly as `kubectl diag gate --max-age`.

pub use kdiag_api::duration::parse_duration;
