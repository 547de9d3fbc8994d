//! `authd-verifier`'s verification, against a live authd: `cargo bench --bench verifier`.
//!
//! Cached: a token verified before (the signature is checked once per token), so what is
//! left is the cache lookup, the expiry, the revoked-set lookup and the feed's freshness.
//! Uncached: the cache off, so every call checks the Ed25519 signature and the claims.
//! Criterion runs on one thread, so the cached figure's inverse is the throughput of one
//! core. Results go to BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{hint::black_box, time::Duration};

use authd_verifier::Verifier;
use criterion::{Criterion, criterion_group, criterion_main};

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        folder.path().join("authd.db").display()
    );
    let (authd, token, cached, uncached) = runtime.block_on(async {
        let authd = support::Running::start(&[("AUTH_DATABASE_URL", &url)]).await;
        authd.add_user("alice@example.com").await;
        let login = support::login(&authd.client().await, "alice@example.com").await;
        let cached = Verifier::start(authd.verifier_settings());
        let mut settings = authd.verifier_settings();
        settings.cache_size = 0;
        let uncached = Verifier::start(settings);
        for verifier in [&cached, &uncached] {
            verifier.ready(Duration::from_secs(10)).await.unwrap();
        }
        (authd, login.access_token, cached, uncached)
    });
    cached.verify_local(&token).unwrap();
    c.bench_function("verifier/cached", |b| {
        b.iter(|| cached.verify_local(black_box(&token)).unwrap())
    });
    c.bench_function("verifier/uncached", |b| {
        b.iter(|| uncached.verify_local(black_box(&token)).unwrap())
    });
    runtime.block_on(authd.stop());
}

criterion_group!(benches, verify);
criterion_main!(benches);
