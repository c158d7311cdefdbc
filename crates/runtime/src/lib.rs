//! kdiag-runtime: the plumbing kdiag's two long-running components, the cluster controller and
//! the node agent, share (as linkerd's kubert does for its controllers). It knows no role's
//! logic: each role hands in what is its own (its routes, its refresh of the gauges).
//!
//! Depends on kdiag-api and kdiag-pipeline (admission's registry lookups), kdiag's processor
//! crates (the built-ins), kube, tokio, warp, prometheus and tracing.

pub mod apply;
pub mod auth;
pub mod builtin;
pub mod cache;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod process;
pub mod ready;
pub mod recorder;
pub mod registrations;
pub mod server;
pub mod time;

pub use error::{Error, is_transient, kube_category};
pub use kdiag_pipeline::Category;
