//! Reading a client's JSON-RPC body, the first thing the gateway does with every request:
//! `gateway::jsonrpc::parse` (JSON into a tree, then classified and checked) against the
//! baseline measured in the same run, serde_json reading the same bytes into a tree and
//! nothing else. The ratio is what classification adds to parsing.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry::gateway::jsonrpc;
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let call = |arguments: serde_json::Value| {
        serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0", "id": 42, "method": "tools/call",
            "params": { "name": "echo", "arguments": arguments }
        }))
        .expect("JSON serializes")
    };
    vec![
        // What bench/mcp_call.lua sends.
        (
            "tools_call_small",
            call(serde_json::json!({ "message": "bench-1" })),
        ),
        // A tool call with a document in its arguments, as a file-writing tool gets.
        (
            "tools_call_4k",
            call(serde_json::json!({
                "path": "/tmp/notes.md",
                "content": "line of text with \"quotes\" and a tab\t\n".repeat(100),
                "options": { "overwrite": true, "mode": 420, "tags": ["a", "b", "c"] }
            })),
        ),
    ]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("jsonrpc_parse");
    for (name, body) in bodies() {
        assert!(
            matches!(jsonrpc::parse(&body), Ok(jsonrpc::Message::Request { .. })),
            "{name} is a request"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/baseline_serde_json_value"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)))
        });
        group.bench_function(format!("{name}/gantry_parse"), |b| {
            b.iter(|| jsonrpc::parse(black_box(&body)))
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
