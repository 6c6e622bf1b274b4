//! Logs (JSON by default, with request ids) and Prometheus metrics.

pub mod http_metrics;
mod log_writer;
mod logs;
pub mod mcp_metrics;
pub mod metrics;
pub mod upstream_state;

pub use logs::{LogGuard, dropped_lines, init};
