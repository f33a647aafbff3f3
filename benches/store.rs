//! Store-level benchmarks (criterion): contact lookup by e-mail, the read path
//! behind `GET /api/v1/contacts/{email}` and every import row's identity check,
//! without HTTP in the way. The store holds 200,000 contacts written through the
//! same upsert path as the API and imports.
//!
//! Run: `cargo bench --bench store`. Results: BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::contacts::{self, ContactUpdate, normalize_email};
use herald::store::ReadTables as _;
use herald::store::Store;

const CONTACTS: u64 = 200_000;

fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for chunk in 0..(CONTACTS / 10_000) {
        let rx = store
            .write_blocking(move |t| {
                for i in chunk * 10_000..(chunk + 1) * 10_000 {
                    let email = normalize_email(&format!("person.{i}@example.com")).expect("valid");
                    let _ = contacts::apply_upsert(
                        t,
                        &email,
                        ContactUpdate::default(),
                        true,
                        chrono::Utc::now(),
                    )?;
                }
                Ok(())
            })
            .expect("writer");
        rx.blocking_recv().expect("reply").expect("commit");
    }
    (dir, store)
}

fn lookup(c: &mut Criterion) {
    let (_dir, store) = setup();
    let mut i: u64 = 0;
    c.bench_function(
        "lookup by e-mail (index + contact record), 200k contacts",
        |b| {
            b.iter(|| {
                i = (i + 7919) % CONTACTS;
                let key = format!("person.{i}@example.com");
                let found = store
                    .read_blocking(|r| match r.contact_id_by_email(&key)? {
                        Some(id) => r.contact(id),
                        None => Ok(None),
                    })
                    .expect("read");
                black_box(found.expect("present"));
            })
        },
    );
}

criterion_group!(benches, lookup);
criterion_main!(benches);
