//! A million-contact bulk render (no criterion: one long run): the fixture's
//! 20 KB template for 1,000,000 synthetic contacts, streamed through
//! `bulk::run` on every core, messages dropped after counting. Prints the
//! rate and the process's RSS every 100,000 contacts, to show memory stays
//! flat however large the audience.
//!
//! Run: `cargo bench --bench render_million` (`HERALD_CONTACTS=N` for
//! another size). Results: BENCHMARKS.md.

mod fixture;

/// The daemon's allocator, so that the figures are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ops::ControlFlow;
use std::time::Instant;

use herald::render::bulk;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and criterion's listing
    }
    let n: u64 = std::env::var("HERALD_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = fixture::snapshot(dir.path());
    let compiled = fixture::compiled(&snap);
    let pool = bulk::pool(threads).unwrap();
    println!(
        "contacts {n}, threads {threads}, batch 500; RSS at start {} MB",
        rss_kb() / 1024
    );
    let start = Instant::now();
    let mut done = 0u64;
    let mut bytes = 0u64;
    let mut next_report = 100_000;
    let mut peak = 0u64;
    let mut samples = Vec::new();
    let totals = bulk::run(
        &compiled,
        &pool,
        500,
        (0..n).map(fixture::contact),
        || chrono::Utc::now().timestamp_millis(),
        |batch| {
            for o in &batch {
                if let bulk::Outcome::Built { message, .. } = o {
                    bytes += message.len() as u64;
                }
            }
            done += batch.len() as u64;
            if done >= next_report {
                let rss = rss_kb() / 1024;
                peak = peak.max(rss);
                samples.push(rss);
                println!(
                    "{done:>9} rendered  {:>8.0} msg/s  RSS {rss} MB",
                    done as f64 / start.elapsed().as_secs_f64()
                );
                next_report += 100_000;
            }
            ControlFlow::Continue(())
        },
    );
    let secs = start.elapsed().as_secs_f64();
    println!(
        "total: {} built, {} failed in {secs:.1} s = {:.0} msg/s ({:.0} per thread), {:.1} GB of MIME; RSS samples {:?} MB, peak {peak} MB",
        totals.built,
        totals.failed,
        totals.built as f64 / secs,
        totals.built as f64 / secs / threads as f64,
        bytes as f64 / 1e9,
        samples
    );
}
