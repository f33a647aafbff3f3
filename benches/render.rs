//! Rendering per core and on all cores (criterion): the 20 KB template of
//! `fixture` with ten personal tokens and four products, rendered, links
//! rewritten and pixel added, and built into a MIME message (no DKIM), for
//! batches of 1,000 contacts on a rayon pool of 1 and of 2 threads.
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
    for threads in [1usize, 2] {
        let pool = bulk::pool(threads).unwrap();
        let contacts: Vec<_> = (0..BATCH).map(fixture::contact).collect();
        g.bench_function(format!("batch_{BATCH}_threads_{threads}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                bulk::run(
                    &compiled,
                    &pool,
                    250,
                    contacts.iter().cloned(),
                    || 0,
                    |batch| {
                        n += batch.len();
                        ControlFlow::Continue(())
                    },
                );
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
