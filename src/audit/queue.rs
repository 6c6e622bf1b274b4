//! The bounded queue between the gateway and the audit store, and the one task that
//! drains it. Recording is a non-blocking `try_send`; the task batches, writes, and on
//! failure spills to a local JSON-lines file that it replays once the store answers
//! again. A full queue or a full spill file drops events — counted, and logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::redact::Redactor;
use super::{AuditEvent, AuditStore};
use crate::config::AuditConfig;
use crate::telemetry::metrics as m;

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_secs(2);
const PURGE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    /// Told when a whole batch is queued: the writer, while it gathers, does not watch
    /// the channel itself (see `Writer::run`).
    batch_ready: Arc<Notify>,
    batch_size: usize,
    redactor: Arc<Redactor>,
    /// When a full queue was last reported in the log (ms).
    last_warning: Arc<AtomicI64>,
}

impl AuditQueue {
    /// Never waits: the call being audited must not be slowed by its audit.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_ok() {
            // The writer holds the batch's first event already while it gathers.
            if self.tx.max_capacity() - self.tx.capacity() + 1 >= self.batch_size {
                self.batch_ready.notify_one();
            }
        } else {
            metrics::counter!(m::AUDIT_DROPPED, "reason" => "queue_full").increment(1);
            // Once a minute at most: a full queue under load must not flood the log too.
            let now = crate::store::now_ms();
            let last = self.last_warning.load(Ordering::Relaxed);
            if now - last >= 60_000
                && self
                    .last_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    "audit queue full: events dropped (counted in audit_events_dropped_total)"
                );
            }
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

pub struct AuditWriter {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl AuditWriter {
    /// Writes out what is queued (or spills it), within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            tracing::warn!("audit writer did not finish within the grace period");
        }
    }
}

pub fn start(store: Arc<dyn AuditStore>, config: &AuditConfig) -> (AuditQueue, AuditWriter) {
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let batch_ready = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let spill = Spill::claim(&config.spill_dir, config.spill_max_bytes);
    let writer = Writer {
        store,
        spill,
        batch_size: config.batch_size,
        gather_for: Duration::from_millis(config.flush_interval_ms),
        retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
        down_since: None,
    };
    let handle = tokio::spawn(writer.run(rx, Arc::clone(&batch_ready), stop.clone()));
    let queue = AuditQueue {
        tx,
        batch_ready,
        batch_size: config.batch_size,
        redactor: Arc::new(Redactor::new(&config.redact_keys)),
        last_warning: Arc::new(AtomicI64::new(0)),
    };
    (queue, AuditWriter { stop, handle })
}

struct Writer {
    store: Arc<dyn AuditStore>,
    spill: Spill,
    batch_size: usize,
    gather_for: Duration,
    retention: Duration,
    /// Set while the store is failing: batches then go straight to the spill file
    /// instead of each waiting for a timeout.
    down_since: Option<Instant>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<AuditEvent>,
        batch_ready: Arc<Notify>,
        stop: CancellationToken,
    ) {
        metrics::gauge!(m::AUDIT_STORE_UP, "store" => self.store.name()).set(1.0);
        let mut retry = tokio::time::interval(RETRY_EVERY);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        // Reused: growing a new vector of events for every batch costs more than the
        // batch's own bookkeeping.
        let mut batch = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                event = rx.recv() => event,
                _ = stop.cancelled() => None,
                _ = retry.tick() => {
                    self.replay().await;
                    continue;
                }
                _ = purge.tick() => {
                    self.purge().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            // Gather for a while: the store then commits (and syncs to disk) once per
            // batch rather than per event, and the writer and the store's threads wake
            // once per batch. An event waits at most this long; a full batch goes at once.
            // The channel is not watched meanwhile: a receiver waiting on it is woken by
            // every event sent, which would run this task once per audited call.
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.gather_for;
            // A notification may be stale (left from a batch already written): the queue
            // is looked at again before the gathering ends early.
            while batch.len() + rx.len() < self.batch_size {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = batch_ready.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            while batch.len() < self.batch_size {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            self.deliver(&batch).await;
            batch.clear();
        }
        // Shutting down: what is queued is written or spilled, not abandoned.
        rx.close();
        while let Some(event) = rx.recv().await {
            batch.push(event);
            if batch.len() == self.batch_size {
                self.deliver(&batch).await;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.deliver(&batch).await;
        }
    }

    async fn deliver(&mut self, batch: &[AuditEvent]) {
        if self.down_since.is_none() && self.spill.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, self.store.write(batch)).await {
                Ok(Ok(())) => {
                    metrics::counter!(m::AUDIT_EVENTS, "result" => "written")
                        .increment(batch.len() as u64);
                    return;
                }
                Ok(Err(e)) => self.mark_down(&e.to_string()),
                Err(_) => self.mark_down("no answer within 5 s"),
            }
        }
        // While the store is down, or older events wait in the spill file, new events join
        // them there so they are replayed in order.
        self.spill.append(batch).await;
    }

    fn mark_down(&mut self, reason: &str) {
        if self.down_since.is_none() {
            tracing::error!(store = self.store.name(), %reason, "audit store unavailable: spilling events to disk until it returns");
            metrics::gauge!(m::AUDIT_STORE_UP, "store" => self.store.name()).set(0.0);
        }
        self.down_since = Some(Instant::now());
    }

    /// Tries the store again and, when it answers, writes the spilled events back.
    async fn replay(&mut self) {
        if self.down_since.is_some() {
            if self.store.ping().await.is_err() {
                return;
            }
            tracing::info!(store = self.store.name(), "audit store is back");
            metrics::gauge!(m::AUDIT_STORE_UP, "store" => self.store.name()).set(1.0);
            self.down_since = None;
        }
        if self.spill.is_empty() {
            return;
        }
        match self
            .spill
            .replay(self.store.as_ref(), self.batch_size)
            .await
        {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(events = n, "spilled audit events replayed");
                }
            }
            Err(reason) => self.mark_down(&reason),
        }
    }

    async fn purge(&self) {
        if self.down_since.is_some() {
            return;
        }
        let before = crate::store::now_ms() - self.retention.as_millis() as i64;
        match self.store.purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit events past retention deleted"),
            Err(e) => tracing::warn!(error = %e, "audit retention purge failed"),
        }
    }
}

/// The local spill file: JSON lines, appended while the store is down, replayed in
/// order, bounded in size. It survives restarts: a new process replays what an old
/// one left.
struct Spill {
    path: PathBuf,
    max_bytes: u64,
    bytes: u64,
    /// Held for the life of the process: the slot's file is this process's alone.
    _slot: Option<SlotLock>,
}

/// Replicas may share one spill directory (a volume): each takes the first slot
/// (`audit-spill.jsonl`, `audit-spill-1.jsonl`, …) whose lock file no running process
/// holds, so two processes never write one file, and a restarted replica adopts the
/// events a stopped one left in that slot.
const SPILL_SLOTS: usize = 64;

fn slot_stem(slot: usize) -> String {
    if slot == 0 {
        "audit-spill".into()
    } else {
        format!("audit-spill-{slot}")
    }
}

type SlotLock = nix::fcntl::Flock<std::fs::File>;

/// The slot's lock, if no running process holds it (`create`: make the lock file when
/// missing). Dropping it releases the slot.
fn lock_slot(dir: &std::path::Path, slot: usize, create: bool) -> Option<SlotLock> {
    let file = std::fs::OpenOptions::new()
        .create(create)
        .append(true)
        .open(dir.join(format!("{}.lock", slot_stem(slot))))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

impl Spill {
    fn claim(dir: &std::path::Path, max_bytes: u64) -> Self {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(error = %e, path = %dir.display(), "cannot create the audit spill directory");
        }
        for slot in 0..SPILL_SLOTS {
            if let Some(held) = lock_slot(dir, slot, true) {
                let path = dir.join(format!("{}.jsonl", slot_stem(slot)));
                let spill = Self::open(path, max_bytes, Some(held));
                spill.warn_about_unclaimed(dir, slot);
                return spill;
            }
        }
        // No lockable slot (read-only directory, or more processes than slots): the
        // first file, unguarded, as before slots existed.
        Self::open(dir.join("audit-spill.jsonl"), max_bytes, None)
    }

    /// Events left in a slot no running process holds wait until a process takes that
    /// slot (scaling back up, or a restart); say so rather than leave them unseen.
    fn warn_about_unclaimed(&self, dir: &std::path::Path, own: usize) {
        for slot in (0..SPILL_SLOTS).filter(|s| *s != own) {
            let data = dir.join(format!("{}.jsonl", slot_stem(slot)));
            let bytes = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            // Lockable now means no running process holds it (the probe lock is
            // released at once when dropped).
            if bytes > 0 && lock_slot(dir, slot, false).is_some() {
                tracing::warn!(path = %data.display(), bytes, "audit events wait in another replica's spill slot; the replica that takes that slot replays them");
            }
        }
    }

    fn open(path: PathBuf, max_bytes: u64, slot: Option<SlotLock>) -> Self {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if bytes > 0 {
            tracing::info!(path = %path.display(), bytes, "audit events from an earlier run are waiting to be replayed");
        }
        metrics::gauge!(m::AUDIT_SPILL_BYTES).set(bytes as f64);
        Self {
            path,
            max_bytes,
            bytes,
            _slot: slot,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends the batch, oldest first, as far as the file's bound allows; the rest is
    /// dropped and counted.
    async fn append(&mut self, batch: &[AuditEvent]) {
        let mut data = Vec::new();
        let mut kept = 0;
        for event in batch {
            let before = data.len();
            serde_json::to_writer(&mut data, event).expect("events serialize");
            data.push(b'\n');
            if self.bytes + data.len() as u64 > self.max_bytes {
                data.truncate(before);
                break;
            }
            kept += 1;
        }
        let dropped = batch.len() - kept;
        if dropped > 0 {
            metrics::counter!(m::AUDIT_DROPPED, "reason" => "spill_full").increment(dropped as u64);
            tracing::error!(
                events = dropped,
                max_bytes = self.max_bytes,
                "audit spill file full: events dropped"
            );
        }
        if kept == 0 {
            return;
        }
        let batch = &batch[..kept];
        let written = async {
            if let Some(dir) = self.path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            file.write_all(&data).await?;
            file.sync_data().await
        }
        .await;
        match written {
            Ok(()) => {
                self.bytes += data.len() as u64;
                metrics::gauge!(m::AUDIT_SPILL_BYTES).set(self.bytes as f64);
                metrics::counter!(m::AUDIT_EVENTS, "result" => "spilled")
                    .increment(batch.len() as u64);
            }
            Err(e) => {
                metrics::counter!(m::AUDIT_DROPPED, "reason" => "spill_failed")
                    .increment(batch.len() as u64);
                tracing::error!(error = %e, path = %self.path.display(), events = batch.len(), "cannot write the audit spill file: events dropped");
            }
        }
    }

    /// Writes the spilled events to the store in batches. On failure, what is left is
    /// kept (rewritten to the file) for the next attempt; writes are idempotent by id,
    /// so a batch that half-succeeded is safely sent again.
    async fn replay(&mut self, store: &dyn AuditStore, batch_size: usize) -> Result<usize, String> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(file).lines();
        let mut batch: Vec<AuditEvent> = Vec::new();
        let mut raw: Vec<String> = Vec::new();
        let mut replayed = 0;
        loop {
            let line = lines.next_line().await.map_err(|e| e.to_string())?;
            let done = line.is_none();
            if let Some(line) = line {
                match serde_json::from_str(&line) {
                    Ok(event) => {
                        batch.push(event);
                        raw.push(line);
                    }
                    // A torn last line (crash mid-write) cannot be recovered; count it.
                    Err(_) => metrics::counter!(m::AUDIT_DROPPED, "reason" => "spill_corrupt")
                        .increment(1),
                }
            }
            if batch.len() >= batch_size || (done && !batch.is_empty()) {
                let outcome = tokio::time::timeout(WRITE_TIMEOUT, store.write(&batch)).await;
                if !matches!(outcome, Ok(Ok(()))) {
                    self.keep_rest(raw, lines).await?;
                    return Err("replay failed".into());
                }
                metrics::counter!(m::AUDIT_EVENTS, "result" => "replayed")
                    .increment(batch.len() as u64);
                replayed += batch.len();
                batch.clear();
                raw.clear();
            }
            if done {
                break;
            }
        }
        tokio::fs::remove_file(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        self.bytes = 0;
        metrics::gauge!(m::AUDIT_SPILL_BYTES).set(0.0);
        Ok(replayed)
    }

    async fn keep_rest(
        &mut self,
        pending: Vec<String>,
        mut lines: tokio::io::Lines<BufReader<tokio::fs::File>>,
    ) -> Result<(), String> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| e.to_string())?;
        let mut bytes = 0u64;
        for line in pending {
            out.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            out.write_all(b"\n").await.map_err(|e| e.to_string())?;
            bytes += line.len() as u64 + 1;
        }
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            out.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            out.write_all(b"\n").await.map_err(|e| e.to_string())?;
            bytes += line.len() as u64 + 1;
        }
        out.sync_data().await.map_err(|e| e.to_string())?;
        tokio::fs::rename(&tmp, &self.path)
            .await
            .map_err(|e| e.to_string())?;
        self.bytes = bytes;
        metrics::gauge!(m::AUDIT_SPILL_BYTES).set(bytes as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Spill;
    use crate::audit::{AuditError, AuditEvent, AuditFilter, AuditStore};
    use crate::config::AuditConfig;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            id: format!("event-{n}"),
            time: n as i64,
            tenant_id: String::new(),
            principal: "key:test".into(),
            server: "demo".into(),
            method: "tools/call".into(),
            tool: Some("echo".into()),
            arguments: None,
            outcome: "ok".into(),
            latency_ms: 1.0,
            request_id: None,
        }
    }

    /// Keeps every batch it is given, with the (tokio) time it came.
    #[derive(Default)]
    struct Batches(Mutex<Vec<(Instant, Vec<String>)>>);

    #[async_trait::async_trait]
    impl AuditStore for Batches {
        fn name(&self) -> &'static str {
            "test"
        }
        async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
            let ids = events.iter().map(|e| e.id.clone()).collect();
            self.0.lock().unwrap().push((Instant::now(), ids));
            Ok(())
        }
        async fn query(&self, _: &str, _: &AuditFilter) -> Result<Vec<AuditEvent>, AuditError> {
            Ok(Vec::new())
        }
        async fn ping(&self) -> Result<(), AuditError> {
            Ok(())
        }
        async fn purge(&self, _: i64) -> Result<u64, AuditError> {
            Ok(0)
        }
    }

    fn config(dir: &std::path::Path, batch_size: usize, flush_interval_ms: u64) -> AuditConfig {
        AuditConfig {
            batch_size,
            flush_interval_ms,
            spill_dir: dir.to_path_buf(),
            ..AuditConfig::default()
        }
    }

    /// Lets the writer run until the store has `n` batches, for at most 200 s of paused
    /// time (it moves only when every task waits, so this takes no real time).
    async fn batches(store: &Batches, n: usize) -> Vec<(Instant, Vec<String>)> {
        for _ in 0..20_000 {
            if store.0.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.0.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn events_arriving_while_a_batch_gathers_are_written_together_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Batches::default());
        let (queue, _writer) = super::start(store.clone(), &config(dir.path(), 10, 1000));
        let start = Instant::now();
        queue.record(event(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue.record(event(2));
        queue.record(event(3));
        let written = batches(&store, 1).await;
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].1, ["event-1", "event-2", "event-3"]);
        assert!(written[0].0 - start >= Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_written_without_waiting_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Batches::default());
        let (queue, _writer) = super::start(store.clone(), &config(dir.path(), 3, 60_000));
        let start = Instant::now();
        for n in 0..7 {
            queue.record(event(n));
        }
        let written = batches(&store, 2).await;
        assert_eq!(written[0].1, ["event-0", "event-1", "event-2"]);
        assert_eq!(written[1].1, ["event-3", "event-4", "event-5"]);
        assert!(
            written[1].0 - start < Duration::from_secs(60),
            "{written:?}"
        );
        // The seventh waits for its batch to fill or for the interval.
        assert_eq!(written.len(), 2);
        let written = batches(&store, 3).await;
        assert_eq!(written[2].1, ["event-6"]);
        assert!(written[2].0 - start >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn shutting_down_writes_what_is_gathering_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Batches::default());
        let (queue, writer) = super::start(store.clone(), &config(dir.path(), 100, 60_000));
        let start = Instant::now();
        queue.record(event(1));
        queue.record(event(2));
        tokio::task::yield_now().await;
        writer.shutdown(Duration::from_secs(5)).await;
        let written = store.0.lock().unwrap().clone();
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].1, ["event-1", "event-2"]);
        assert!(written[0].0 - start < Duration::from_secs(5));
    }

    #[test]
    fn processes_sharing_a_spill_directory_get_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spill::claim(dir.path(), 1024);
        let second = Spill::claim(dir.path(), 1024);
        assert_eq!(first.path, dir.path().join("audit-spill.jsonl"));
        assert_eq!(second.path, dir.path().join("audit-spill-1.jsonl"));
        drop(first);
        // A process started after the first one ended adopts its slot and its events.
        let third = Spill::claim(dir.path(), 1024);
        assert_eq!(third.path, dir.path().join("audit-spill.jsonl"));
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_room_left_keeps_its_oldest_events() {
        let line = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::claim(dir.path(), line * 3 + line / 2);
        let batch: Vec<_> = (0..5).map(event).collect();
        spill.append(&batch).await;
        let kept: Vec<AuditEvent> = std::fs::read_to_string(&spill.path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(kept, batch[..3]);
    }
}
