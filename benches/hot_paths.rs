//! Micro-benchmarks of the per-call CPU work: `cargo bench --bench hot_paths`.
//!
//! Validate's cost is access-token verification plus the revocation lookup; Refresh's own CPU
//! is a new token, its hash and a signature; Login's is one argon2id hash at the configured
//! (default, production) parameters. Results go to BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{hint::black_box, time::Duration};

use authd::{
    auth::{
        Opened, Password, PasswordHasher, RefreshKey, RefreshToken, RevokedSessions, SuccessorKey,
        TokenKeys, ValidatedToken, VerifiedTokens,
    },
    config::Argon2Settings,
};
use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(900);

fn keys() -> TokenKeys {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    TokenKeys::new(
        &signing,
        &[],
        "authd",
        "internal-services",
        authd::auth::Acceptance {
            leeway: Duration::ZERO,
            max_lifetime: TTL,
        },
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn access_tokens(c: &mut Criterion) {
    let keys = keys();
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    c.bench_function("access_token/sign", |b| {
        b.iter(|| {
            keys.issue(user, session, "alice@example.com", now(), TTL)
                .unwrap()
        })
    });

    // As Validate does it: verify, then look the session up among 10,000 revoked ones.
    let revoked = RevokedSessions::new(TTL, Duration::ZERO, 1);
    for _ in 0..10_000 {
        revoked.insert(Uuid::new_v4(), chrono::Utc::now());
    }
    let token = keys
        .issue(user, session, "alice@example.com", now(), TTL)
        .unwrap();
    c.bench_function("access_token/verify_and_revocation_lookup", |b| {
        b.iter(|| {
            let claims = keys.verify(black_box(&token)).unwrap();
            assert!(!revoked.contains(&claims.sid));
        })
    });
    // A token seen before: its keyed hash, a cache lookup, then the revocation lookup.
    let verified = VerifiedTokens::<ValidatedToken>::new(50_000, keys.rules());
    c.bench_function("access_token/cached_verify_and_revocation_lookup", |b| {
        b.iter(|| {
            let claims = verified
                .get_or_verify(black_box(&token), now(), || keys.verify(&token))
                .unwrap();
            assert!(!revoked.contains(&claims.session_id));
        })
    });
    c.bench_function("revocation/lookup_among_10k", |b| {
        b.iter(|| revoked.contains(black_box(&session)))
    });
}

fn refresh_tokens(c: &mut Criterion) {
    let key = RefreshKey::new([8; 32]);
    let session = Uuid::new_v4();
    c.bench_function("refresh_token/seal", |b| {
        b.iter(|| key.seal(black_box(session), 7, black_box(&[5; 32])))
    });
    let raw = key.seal(session, 7, &[5; 32]).expose().to_owned();
    // What every Refresh does before its statement: the shape, the tag, the secret's hash.
    c.bench_function("refresh_token/parse_open_and_hash", |b| {
        b.iter(|| {
            let token = RefreshToken::parse(black_box(raw.clone())).unwrap();
            match key.open(&token).unwrap() {
                Opened::Sealed(secret) => secret.secret_hash(),
                Opened::Legacy(_) => unreachable!("a sealed token"),
            }
        })
    });
    let Ok(Opened::Sealed(parent)) = key.open(&RefreshToken::parse(raw).unwrap()) else {
        unreachable!("a sealed token");
    };
    let grace = SuccessorKey::new([9; 32]);
    c.bench_function("refresh_token/successor", |b| {
        b.iter(|| grace.successor_of(black_box(&parent)))
    });
}

fn argon2(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let settings = Argon2Settings::default();
    let hasher = PasswordHasher::new(settings, 1, 1).unwrap();
    let password = || Password::parse("correct horse battery staple".into()).unwrap();
    let stored = runtime.block_on(hasher.hash(password())).unwrap();
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(20);
    group.bench_function("verify_at_default_parameters", |b| {
        b.iter(|| {
            runtime
                .block_on(hasher.verify(password(), Some(stored.clone())))
                .unwrap()
        })
    });
    // A Login flood keeps both hashing threads busy: each hash then shares the memory
    // bandwidth and the L3 with the other, and takes longer than one alone.
    let pair = PasswordHasher::new(settings, 2, 2).unwrap();
    group.bench_function("two_verifies_at_once_on_two_threads", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (one, two) = tokio::join!(
                    pair.verify(password(), Some(stored.clone())),
                    pair.verify(password(), Some(stored.clone()))
                );
                (one.unwrap(), two.unwrap())
            })
        })
    });
    group.finish();
}

criterion_group!(benches, access_tokens, refresh_tokens, argon2);
criterion_main!(benches);
