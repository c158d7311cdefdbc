//! Triggers that create Abnormals: failed ProbeStatus checkers, Kubernetes Events, Prometheus
//! alerts. Shared here: AbnormalSource templates (compiled, validated, ordered) and storm control.

pub mod alerts;
pub mod events;
pub mod pattern;
pub mod sink;
pub mod storm;
pub mod templates;
pub mod validity;
