//! KubeProber's probes in kdiag: failed checkers become Abnormals (the trigger), their root causes
//! are written next to the probe result (the writeback), and the release gate reads them.

pub mod change;
pub mod checks;
pub mod cluster;
pub mod continuous;
pub mod denoise;
pub mod episodes;
pub mod gate;
pub mod report;
pub mod runner;
pub mod runs;
pub mod schedule;
pub mod trigger;
pub mod triggers;
pub mod writeback;
