//! A writer thread for log lines: loggers queue lines without waiting or waking anyone,
//! the thread writes what has queued every 20 ms, and lines that find the queue full are
//! dropped and counted.
//!
//! Not `tracing-appender`'s non-blocking writer, which was measured first: its channel
//! wakes the writer thread for every line, and at the default log level (one access line
//! per request) that cost 1.1–1.4 times the CPU per call of writing to stderr directly, at
//! concurrency 1 (bench/README.md). Here a line costs a push onto a lock-free queue; the
//! thread wakes on a timer while lines come, and parks once they stop, to be woken by the
//! next one.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

/// How long the writer lets lines gather: the log lags by at most this much.
const TICK: Duration = Duration::from_millis(20);
/// Quiet ticks before the writer parks (one second).
const TICKS_BEFORE_PARK: u32 = 50;
/// How long dropping the guard waits for the queued lines to be written.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);
/// The least time between two notes of dropped lines in the log.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A batch is written once it holds this much, so that one write stays bounded.
const BATCH_BYTES: usize = 64 * 1024;

struct Shared {
    lines: ArrayQueue<Vec<u8>>,
    dropped: AtomicU64,
    /// How many of the dropped lines the log has already noted.
    reported: AtomicU64,
    /// Set by the writer before it parks; a logger that sees it wakes the writer.
    parked: AtomicBool,
    closing: AtomicBool,
    writer: OnceLock<Thread>,
}

impl Shared {
    fn wake(&self) {
        if let Some(thread) = self.writer.get() {
            thread.unpark();
        }
    }

    /// Notes in the log itself the lines dropped since its last note, so that a reader
    /// without the metric sees the gap explained; false when there were none.
    fn report_drops(&self) -> bool {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let reported = self.reported.swap(dropped, Ordering::Relaxed);
        if dropped == reported {
            return false;
        }
        tracing::warn!(
            dropped = dropped - reported,
            dropped_in_all = dropped,
            "log lines were dropped because stderr was not read fast enough"
        );
        true
    }
}

/// The loggers' end: a [`tracing_subscriber::fmt::MakeWriter`] whose writes queue one
/// formatted line each.
#[derive(Clone)]
pub struct LineQueue(Arc<Shared>);

impl LineQueue {
    /// Lines dropped so far: they found the queue full, or their write failed.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LineQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.lines.push(buf.to_vec()).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Pairs with the writer's fence between setting `parked` and its last look at the
        // queue: either it sees this line, or this sees it parked.
        fence(Ordering::SeqCst);
        if self.0.parked.load(Ordering::Relaxed) && self.0.parked.swap(false, Ordering::Relaxed) {
            self.0.wake();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineQueue {
    type Writer = LineQueue;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the writer thread; dropped, it has the queued lines written, waiting at most
/// [`FLUSH_AT_EXIT`] for an output that does not take them.
pub struct WriterGuard {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // Drops not yet noted (the writer notes them at most every REPORT_EVERY).
        self.shared.report_drops();
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake();
        let _ = self.done.recv_timeout(FLUSH_AT_EXIT);
    }
}

/// Starts a thread that writes the lines queued on the returned [`LineQueue`] to `out`;
/// at most `capacity` lines wait.
pub fn spawn<W: Write + Send + 'static>(out: W, capacity: usize) -> (LineQueue, WriterGuard) {
    spawn_with(out, capacity, TICK, TICKS_BEFORE_PARK)
}

fn spawn_with<W: Write + Send + 'static>(
    mut out: W,
    capacity: usize,
    tick: Duration,
    ticks_before_park: u32,
) -> (LineQueue, WriterGuard) {
    let shared = Arc::new(Shared {
        lines: ArrayQueue::new(capacity),
        dropped: AtomicU64::new(0),
        reported: AtomicU64::new(0),
        parked: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        writer: OnceLock::new(),
    });
    let (done_tx, done) = mpsc::channel();
    let state = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("gantry-log".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(BATCH_BYTES);
            let mut quiet = 0;
            let mut last_report: Option<Instant> = None;
            loop {
                let closing = state.closing.load(Ordering::SeqCst);
                if write_queued(&state, &mut out, &mut batch) {
                    quiet = 0;
                    // Once lines are written again, and not more often than REPORT_EVERY
                    // however long a slow reader keeps lines dropping.
                    if last_report.is_none_or(|at| at.elapsed() >= REPORT_EVERY)
                        && state.report_drops()
                    {
                        last_report = Some(Instant::now());
                    }
                } else {
                    quiet += 1;
                }
                if closing {
                    let _ = done_tx.send(());
                    return;
                }
                if quiet < ticks_before_park {
                    std::thread::sleep(tick);
                    continue;
                }
                state.parked.store(true, Ordering::Relaxed);
                // Pairs with the loggers' fence (see `LineQueue::write`).
                fence(Ordering::SeqCst);
                if state.lines.is_empty() && !state.closing.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                state.parked.store(false, Ordering::Relaxed);
                quiet = 0;
            }
        })
        .expect("the log writer thread starts");
    let _ = shared.writer.set(thread.thread().clone());
    (LineQueue(Arc::clone(&shared)), WriterGuard { shared, done })
}

/// Writes every queued line to `out` in batches; false when none was queued.
fn write_queued(shared: &Shared, out: &mut impl Write, batch: &mut Vec<u8>) -> bool {
    let mut any = false;
    loop {
        batch.clear();
        let mut lines = 0;
        while batch.len() < BATCH_BYTES {
            let Some(line) = shared.lines.pop() else {
                break;
            };
            batch.extend_from_slice(&line);
            lines += 1;
        }
        if lines == 0 {
            return any;
        }
        any = true;
        if out.write_all(batch).and_then(|()| out.flush()).is_err() {
            shared.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// An output that keeps what it is given, and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        entered: Option<mpsc::SyncSender<()>>,
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }

        fn hold(&self) {
            *self.gate.0.lock().unwrap() = true;
        }

        fn release(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(entered) = &self.entered {
                let _ = entered.try_send(());
            }
            let (held, released) = &*self.gate;
            let _unused = released
                .wait_while(held.lock().unwrap(), |held| *held)
                .unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_by_exit() {
        let sink = Sink::default();
        let (mut queue, guard) = spawn(sink.clone(), 10_000);
        let expected: String = (0..5_000).map(|i| format!("line {i}\n")).collect();
        for line in expected.lines() {
            queue.write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        drop(guard);
        assert_eq!(sink.text(), expected);
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn a_stalled_output_costs_the_logger_nothing_and_the_overflow_is_counted() {
        let (entered, writing) = mpsc::sync_channel(1);
        let sink = Sink {
            entered: Some(entered),
            ..Sink::default()
        };
        sink.hold();
        let (mut queue, guard) = spawn_with(sink.clone(), 100, Duration::from_millis(1), 1_000);
        queue.write_all(b"first\n").unwrap();
        writing.recv().unwrap(); // the writer is stuck writing "first"
        for i in 0..110 {
            queue.write_all(format!("{i}\n").as_bytes()).unwrap();
        }
        assert_eq!(
            queue.dropped(),
            10,
            "100 lines wait; the other 10 are counted"
        );
        sink.release();
        drop(guard);
        let expected: String = std::iter::once("first\n".to_string())
            .chain((0..100).map(|i| format!("{i}\n")))
            .collect();
        assert_eq!(sink.text(), expected);
    }

    #[test]
    fn exit_waits_only_so_long_for_an_output_that_never_takes_the_lines() {
        let sink = Sink::default();
        sink.hold();
        let (mut queue, guard) = spawn(sink.clone(), 10);
        queue.write_all(b"never written\n").unwrap();
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < FLUSH_AT_EXIT + Duration::from_secs(2));
        sink.release();
    }

    #[test]
    fn a_parked_writer_is_woken_by_the_next_line() {
        let sink = Sink::default();
        let (mut queue, _guard) = spawn_with(sink.clone(), 10, Duration::from_millis(1), 2);
        wait_for("the writer to park", || {
            queue.0.parked.load(Ordering::Relaxed)
        });
        queue.write_all(b"wake up\n").unwrap();
        wait_for("the line to be written", || sink.text() == "wake up\n");
    }
}
