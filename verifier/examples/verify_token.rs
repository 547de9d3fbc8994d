//! Verifies access tokens locally with `authd-verifier`, as a service would:
//!
//! ```text
//! cargo run -p authd-verifier --example verify_token -- \
//!     --jwks http://127.0.0.1:8080/.well-known/jwks.json --authd http://127.0.0.1:50051 \
//!     [--issuer authd] [--audience internal-services] TOKEN...
//! ```
//!
//! It starts a verifier (keys and revocation feed), waits until it is ready, and prints one
//! line per token: `valid: user ... session ...`, or `refused: REASON`.

use std::{process::ExitCode, time::Duration};

use authd_verifier::{Verifier, VerifierSettings};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("verify_token: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut jwks, mut authd) = (None, None);
    let (mut issuer, mut audience) = ("authd".to_owned(), "internal-services".to_owned());
    let mut tokens = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--jwks" => jwks = Some(value()?),
            "--authd" => authd = Some(value()?),
            "--issuer" => issuer = value()?,
            "--audience" => audience = value()?,
            _ => tokens.push(arg),
        }
    }
    let (Some(jwks), Some(authd)) = (jwks, authd) else {
        return Err("--jwks and --authd are required".into());
    };
    let verifier = Verifier::start(VerifierSettings::new(&jwks, &authd, &issuer, &audience)?);
    verifier.ready(Duration::from_secs(10)).await?;
    for token in tokens {
        match verifier.verify(&token).await {
            Ok(claims) => println!(
                "valid: user {} <{}> session {}",
                claims.sub, claims.email, claims.sid
            ),
            Err(refused) => println!("refused: {} ({refused})", refused.reason()),
        }
    }
    Ok(())
}
