//! Times failed logins of different kinds, interleaved, against a running authd: an unknown
//! email, and a wrong password on accounts whose stored hashes have different argon2
//! parameters. Equal means say that the time of a failure reveals nothing about the account.
//!
//! `cargo run --release --example login_timing -- --account cheaper=a@x --account costlier=b@x`
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::time::{Duration, Instant};

use authd::proto::{LoginRequest, auth_service_client::AuthServiceClient};
use clap::Parser;
use tonic::Code;

#[derive(Debug, Parser)]
struct Args {
    /// authd's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// `label=email`, one per kind of account; an unknown email is always added.
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// Rounds; each tries every kind once, in a rotating order.
    #[arg(long, default_value_t = 40)]
    rounds: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut kinds: Vec<(String, String)> = args
        .accounts
        .iter()
        .map(|pair| {
            let (label, email) = pair.split_once('=').expect("label=email");
            (label.to_owned(), email.to_owned())
        })
        .collect();
    kinds.push(("unknown email".to_owned(), "nobody@example.com".to_owned()));
    let mut client = AuthServiceClient::connect(args.target).await.unwrap();
    let mut times = vec![Vec::new(); kinds.len()];
    for round in 0..=args.rounds {
        for offset in 0..kinds.len() {
            let index = (round + offset) % kinds.len();
            let started = Instant::now();
            let answer = client
                .login(LoginRequest {
                    email: kinds[index].1.clone(),
                    password: "not the password, not at all".to_owned(),
                    client: None,
                })
                .await;
            let took = started.elapsed();
            let status = answer.expect_err("every password is wrong");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            // Round 0 warms up: connections, caches, the hashing threads' memory.
            if round > 0 {
                times[index].push(took);
            }
        }
    }
    if args.rounds == 0 {
        return; // only the warm-up: the server answers
    }
    println!("kind mean_ms median_ms");
    let means: Vec<f64> = times
        .iter()
        .zip(&kinds)
        .map(|(times, (label, _))| {
            let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e3 / times.len() as f64;
            let mut sorted = times.clone();
            sorted.sort();
            let median = sorted[sorted.len() / 2].as_secs_f64() * 1e3;
            println!("{label:?} {mean:.2} {median:.2}");
            mean
        })
        .collect();
    let (low, high) = means.iter().fold((f64::MAX, 0.0_f64), |(low, high), m| {
        (low.min(*m), high.max(*m))
    });
    println!("largest pair ratio of means: {:.3}", high / low);
}
