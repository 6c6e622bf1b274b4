//! stdio upstream: a child process speaking newline-delimited JSON-RPC.
//!
//! The child leads its own process group so that shutdown ends it together with every
//! process it started (`npx` → `node`, `uvx` → `python`), leaving no orphans.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Mutex;
use tokio_util::codec::{FramedRead, LinesCodec};

use super::message_limit::TooLarge;
use super::transport::{self, Inbox, Outbox, TransportHandle};
use crate::config::{UpstreamConfig, resolve_reference};

const STDERR_LINE_LIMIT: usize = 4096;

/// Writes lines to the child's stdin; the lock keeps each message's line whole.
struct StdinOutbox {
    stdin: Arc<Mutex<ChildStdin>>,
}

impl StdinOutbox {
    fn write(&self, msg: Value) -> BoxFuture<'static, ()> {
        let stdin = Arc::clone(&self.stdin);
        Box::pin(async move {
            let mut line = serde_json::to_vec(&msg).expect("JSON values serialize");
            line.push(b'\n');
            let mut stdin = stdin.lock().await;
            // A failed write means the child is gone; the reader reports why.
            let _ = stdin.write_all(&line).await;
            let _ = stdin.flush().await;
        })
    }
}

impl Outbox for StdinOutbox {
    fn exchange(&self, msg: Value) -> BoxFuture<'static, ()> {
        self.write(msg)
    }
}

pub async fn connect(
    name: &str,
    config: &UpstreamConfig,
    inbox: Inbox,
) -> Result<TransportHandle, String> {
    let command = config.command.as_deref().unwrap_or_default();
    let mut cmd = Command::new(command);
    cmd.args(&config.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The child inherits the environment minus gantry's own settings, which can hold
    // secrets (session keys, tokens) that are none of the child's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANTRY_") {
            cmd.env_remove(&key);
        }
    }
    for (key, value) in &config.env {
        let resolved = resolve_reference(value).map_err(|e| format!("env {key}: {e}"))?;
        cmd.env(key, resolved);
    }
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{command}`: {e}"))?;
    let pid = child.id().ok_or("child exited immediately")? as i32;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    tokio::spawn(log_stderr(name.to_string(), stderr));
    let limit = config.max_message_bytes;
    tokio::spawn(read_loop(name.to_string(), stdout, child, inbox, limit));

    Ok(TransportHandle {
        outbox: Arc::new(StdinOutbox {
            stdin: Arc::new(Mutex::new(stdin)),
        }),
        shutdown: Box::new(move || Box::pin(terminate_group(pid))),
    })
}

/// Delivers the child's lines. A line longer than `limit` closes the transport: the rest
/// of it cannot be told apart from the next message, and its call is not known until it
/// is read whole.
async fn read_loop(
    name: String,
    stdout: tokio::process::ChildStdout,
    mut child: Child,
    inbox: Inbox,
    limit: usize,
) {
    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(limit));
    let mut failure = None;
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => {
                if let Err(e) = inbox.deliver_bytes(line.into(), None) {
                    let line = String::from_utf8_lossy(&e.bytes);
                    tracing::warn!(upstream = %name, line = %truncate(&line), "upstream wrote a non-JSON line to stdout");
                }
                transport::delivered().await;
            }
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                let e = TooLarge { limit };
                tracing::warn!(upstream = %name, limit, "upstream wrote {e}; restarting it");
                failure = Some(format!("wrote {e}"));
                break;
            }
            Err(e) => {
                failure = Some(format!("unreadable output: {e}"));
                break;
            }
        }
    }
    // A child still writing (the rest of a line too long) gets a broken pipe rather than
    // blocking on a full one while it is waited on.
    drop(lines);
    // Reap the child so its exit status names the cause; a child that closed stdout but
    // lingers is killed rather than waited on forever.
    let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        _ => {
            let _ = child.start_kill();
            "closed its stdout".into()
        }
    };
    let reason = failure.unwrap_or_else(|| format!("process {status}"));
    inbox.close(reason);
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(STDERR_LINE_LIMIT));
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => tracing::info!(upstream = %name, stream = "stderr", "{}", line),
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                tracing::info!(upstream = %name, stream = "stderr", "(line longer than {STDERR_LINE_LIMIT} bytes skipped)");
            }
            Err(_) => break,
        }
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// SIGTERM to the whole group, then SIGKILL to whatever is left after a grace period.
pub async fn terminate_group(pgid: i32) {
    let group = Pid::from_raw(pgid);
    if killpg(group, Signal::SIGTERM).is_err() {
        return; // the group is already gone
    }
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if killpg(group, None).is_err() {
            return;
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
}
