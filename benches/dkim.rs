//! DKIM signing per core (criterion): one RSA-2048 and one Ed25519
//! signature over a 20 KB message and over a 2 KB one, exactly as the queue
//! signs (relaxed/relaxed, Herald's header list, body hash included).
//!
//! `dkim_sign_rsa2048_ring` signs the same 2 KB message with mail-auth's own
//! ring-backed key, what Herald used before its AWS-LC key: the difference
//! stays visible in every run.
//!
//! Run: `cargo bench --bench dkim`, or `scripts/bench-dkim`, which also runs
//! `openssl speed` and prints the ratio. Results: BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald::delivery::dkim::{Algorithm, DkimKey, keygen};

fn message(body_bytes: usize) -> Vec<u8> {
    let line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n";
    let mut m =
        b"From: Shop <news@shop.example>\r\nTo: someone@example.com\r\nSubject: Our news\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1.2@shop.example>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\nList-Unsubscribe: <https://shop.example/u/x>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
            .to_vec();
    while m.len() < body_bytes {
        m.extend_from_slice(line.as_bytes());
    }
    m
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (alg, name) in [(Algorithm::Rsa, "rsa2048"), (Algorithm::Ed25519, "ed25519")] {
        let path = dir.path().join(format!("{name}.pem"));
        keygen("shop.example", "s1", alg, &path).expect("keygen");
        let key = DkimKey::load(&path, "shop.example", "s1").expect("load");
        let mut g = c.benchmark_group(format!("dkim_sign_{name}"));
        g.throughput(Throughput::Elements(1));
        for size in [2_000, 20_000] {
            let msg = message(size);
            g.bench_function(format!("{}kb", size / 1000), |b| {
                b.iter(|| key.signature_header(black_box(&msg)).expect("sign"))
            });
        }
        g.finish();
    }
    ring_reference(c, &dir.path().join("rsa2048.pem"));
}

/// The same RSA key and settings, signed by ring through mail-auth's `RsaKey`.
fn ring_reference(c: &mut Criterion, pem: &std::path::Path) {
    use mail_auth::common::crypto::{RsaKey, Sha256};
    use mail_auth::dkim::{Canonicalization, DkimSigner};
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let der = PrivateKeyDer::from_pem_file(pem).expect("pem");
    let key = RsaKey::<Sha256>::from_key_der(der).expect("ring key");
    let signer = DkimSigner::from_key(key)
        .domain("shop.example")
        .selector("s1")
        .headers(herald::delivery::dkim::SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let msg = message(2_000);
    let mut g = c.benchmark_group("dkim_sign_rsa2048_ring");
    g.throughput(Throughput::Elements(1));
    g.bench_function("2kb", |b| {
        b.iter(|| signer.sign(black_box(&msg)).expect("sign"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
