//! Where log lines go: stderr, written by a thread of their own.
//!
//! Formatting a line stays on the thread that logs; writing it does not. A process that
//! writes to stderr itself stops when stderr's reader does (a full pipe to a slow log
//! driver, a terminal paused with Ctrl-S): on gantry's single runtime thread, every
//! connection would stop with it. Here lines queue for the writer thread instead, and
//! beyond `log.buffer_lines` they are dropped and counted (`log_lines_dropped_total`):
//! the log is a diagnostic, and the audit trail, which must not lose anything, has its
//! own store.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

use super::log_writer::{self, LineQueue, WriterGuard};
use crate::config::{LogConfig, LogFormat};

/// The queue of the writer installed by [`init`], which counts what it dropped.
static QUEUE: OnceLock<LineQueue> = OnceLock::new();

/// Keeps the writer thread. Dropped at exit, it notes lines dropped since the log last
/// did and writes out what is queued, waiting for a stalled stderr for a second at most,
/// so a stuck log never holds up exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WriterGuard>,
}

/// Installs the global subscriber. Logs go to stderr so stdout stays free for the
/// start-up banner (and, for `demo-upstream`, for the MCP protocol itself). Only the
/// first call in a process installs anything.
pub fn init(config: &LogConfig) -> LogGuard {
    if QUEUE.get().is_some() {
        return LogGuard { _writer: None };
    }
    let (writer, guard) = log_writer::spawn(std::io::stderr(), config.buffer_lines);
    let queue = writer.clone();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_err() || QUEUE.set(queue).is_err() {
        return LogGuard { _writer: None };
    }
    LogGuard {
        _writer: Some(guard),
    }
}

/// Log lines dropped so far because stderr did not take them in time.
pub fn dropped_lines() -> u64 {
    QUEUE.get().map_or(0, LineQueue::dropped)
}
