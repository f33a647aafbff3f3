//! Rendering per core and on all cores (criterion): the 20 KB template of
//! `fixture` with ten personal tokens and four products, rendered, links
//! rewritten and pixel added, and built into a MIME message (no DKIM), for
//! batches of 1,000 contacts on a rayon pool of 1 and of 2 threads.
//! Then, outside criterion, the cores each pool size keeps busy and the CPU
//! one message costs on it (`render/cores_busy` lines on stderr).
//!
//! Run: `cargo bench --bench render`. Results: BENCHMARKS.md.

mod fixture;

/// The daemon's allocator, so that the figures are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald::render::bulk;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = fixture::snapshot(dir.path());
    let compiled = fixture::compiled(&snap);
    let one = fixture::contact(1);
    let r = compiled.render(&one).expect("render");
    let m = compiled.build(&r, 0).expect("build");
    eprintln!(
        "template {} bytes; rendered HTML {} bytes, text {} bytes, message {} bytes",
        fixture::body().len(),
        r.html.len(),
        r.text.len(),
        m.len()
    );

    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_message", |b| {
        b.iter(|| {
            let r = compiled.render(black_box(&one)).unwrap();
            black_box(compiled.build(&r, 0).unwrap())
        })
    });
    // The two halves, to see where the time goes.
    g.bench_function("render_only", |b| {
        b.iter(|| black_box(compiled.render(black_box(&one)).unwrap()))
    });
    g.bench_function("build_only", |b| {
        b.iter(|| black_box(compiled.build(black_box(&r), 0).unwrap()))
    });
    // Without tracking: what the template engine alone costs.
    let untracked = fixture::compiled_with(&snap, false);
    g.bench_function("render_only_untracked", |b| {
        b.iter(|| black_box(untracked.render(black_box(&one)).unwrap()))
    });
    const BATCH: u64 = 1000;
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    let contacts = contacts_of(BATCH);
    for threads in [1usize, 2] {
        let pool = bulk::pool(threads).unwrap();
        g.bench_function(format!("batch_{BATCH}_threads_{threads}"), |b| {
            b.iter(|| black_box(render_all(&compiled, &pool, &contacts)))
        });
    }
    g.finish();
    cores_busy(&compiled, &contacts);
}

/// Renders and builds a message for each of `contacts` through
/// `bulk::run` in batches of 250; the number built.
fn render_all(
    compiled: &herald::render::Compiled,
    pool: &rayon::ThreadPool,
    contacts: &[herald::render::Recipient],
) -> usize {
    let mut n = 0usize;
    bulk::run(
        compiled,
        pool,
        250,
        contacts.iter().cloned(),
        || 0,
        |batch| {
            n += batch.len();
            ControlFlow::Continue(())
        },
    );
    n
}

fn contacts_of(n: u64) -> Vec<herald::render::Recipient> {
    (0..n).map(fixture::contact).collect()
}

/// How many cores each pool size keeps busy, and the CPU one message
/// costs on it (user and system), over 20 batches: with one figure per
/// pool size, the scaling from one thread to two splits into the cores the
/// pool kept busy (the batch hand-offs leave some idle) and what each
/// message cost on a core (more when both cores render: they share caches
/// and memory bandwidth). BENCHMARKS.md, rendering, has the figures.
fn cores_busy(compiled: &herald::render::Compiled, contacts: &[herald::render::Recipient]) {
    const RUNS: usize = 20;
    for threads in [1usize, 2] {
        let pool = bulk::pool(threads).unwrap();
        let (cpu0, t0) = (process_cpu(), std::time::Instant::now());
        let n: usize = (0..RUNS)
            .map(|_| render_all(compiled, &pool, contacts))
            .sum();
        let (wall, cpu1) = (t0.elapsed().as_secs_f64(), process_cpu());
        let (user, system) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
        eprintln!(
            "render/cores_busy threads {threads}: {:.0} msg/s, {:.2} cores busy, \
             {:.1} µs CPU per message ({:.1} user, {:.1} system)",
            n as f64 / wall,
            (user + system) / wall,
            (user + system) / n as f64 * 1e6,
            user / n as f64 * 1e6,
            system / n as f64 * 1e6,
        );
    }
}

/// CPU seconds (user, system) of this process so far.
fn process_cpu() -> (f64, f64) {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime))
}

criterion_group!(benches, bench);
criterion_main!(benches);
