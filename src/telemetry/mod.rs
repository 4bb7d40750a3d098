//! What operators see: Prometheus [`metrics`] and the HTTP endpoint that serves them with
//! health and readiness ([`server`]). Every stage counts through the handles in [`Metrics`]; the catalogue in
//! `docs/metrics.md` lists them.

pub mod cameras;
pub mod gateway;
pub mod metrics;
pub mod server;

pub use gateway::SiteMetrics;
pub use metrics::{GatewayMetrics, IngestMetrics, Metrics};
pub use server::{serve, Phase, Readiness};
