//! HTTP plugins: the client (IO). The protocol's pure half, checking and merging a reply, is
//! `kdiag_pipeline::protocol`.

pub mod client;
mod clients;

pub use client::{Endpoint, MAX_RESPONSE_BYTES, PluginClient, PluginError};
