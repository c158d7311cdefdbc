//! Triggers that create Abnormals: Kubernetes Events and Prometheus alerts (failed ProbeStatus
//! checkers are `crate::probes`). Shared here: the sink that creates the Abnormals, the
//! validation of AbnormalSources and storm control; the templates themselves are compiled and
//! matched by `kdiag_pipeline::templates`.

pub mod alerts;
pub mod events;
pub mod incidents;
pub mod sink;
pub mod storm;
pub mod validity;
