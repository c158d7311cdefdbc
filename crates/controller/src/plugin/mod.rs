//! HTTP plugins: the protocol (pure) and the client (IO).

pub mod client;
pub mod protocol;

pub use client::{Endpoint, MAX_RESPONSE_BYTES, PluginClient, PluginError};
