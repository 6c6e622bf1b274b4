//! The embedded audit's writer: time to insert a batch of events into a fresh SQLite
//! file through `SqlAudit::write`, per event, for the batch sizes the queue hands it (one
//! event when calls are rare, dozens under load, more than one hundred at the default
//! one-second gathering under steady traffic). The baseline, measured in the same run,
//! is one round trip to the same pool (`SELECT 1`): what any statement costs before it
//! writes anything. Compare two commits with `-- --save-baseline before` on one and
//! `-- --baseline before` on the other (bench/README.md).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gantry::audit::sql::SqlAudit;
use gantry::audit::{AuditEvent, AuditStore};
use gantry::store::Store;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events like the ones a `tools/call` through `/mcp` records, each with a new id.
fn events(size: usize) -> Vec<AuditEvent> {
    (0..size)
        .map(|n| AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            time: gantry::store::now_ms(),
            tenant_id: String::new(),
            principal: "key:default".into(),
            server: "everything".into(),
            method: "tools/call".into(),
            tool: Some("echo".into()),
            arguments: Some(serde_json::json!({ "message": format!("hello {n}") })),
            outcome: "ok".into(),
            latency_ms: 0.412,
            request_id: Some(uuid::Uuid::new_v4().to_string()),
        })
        .collect()
}

/// A migrated SQLite file in `dir`, opened as `gantry serve` opens its own.
fn open(runtime: &tokio::runtime::Runtime, dir: &tempfile::TempDir) -> Store {
    runtime.block_on(async {
        let url = format!("sqlite://{}/audit.db", dir.path().display());
        let store = Store::connect(&url, &Default::default())
            .await
            .expect("SQLite opens");
        store.migrate().await.expect("migrations apply");
        store
    })
}

fn write(c: &mut Criterion) {
    // One worker thread, as `gantry serve` runs by default.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let mut group = c.benchmark_group("audit_write_sqlite");

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(&runtime, &dir);
    group.bench_function("baseline_round_trip", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.ping().await.expect("SQLite answers") })
    });

    for size in [1usize, 8, 64, 256] {
        // A fresh file per size: the table's growth under one size must not slow the next.
        let dir = tempfile::tempdir().expect("temporary directory");
        let audit = SqlAudit::new(open(&runtime, &dir));
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("batch_{size}"), |b| {
            b.to_async(&runtime).iter_batched(
                || events(size),
                |batch| async {
                    audit.write(&batch).await.expect("the batch is written");
                    // Dropped outside the measurement.
                    batch
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);
