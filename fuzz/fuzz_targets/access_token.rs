//! Arbitrary bytes as an access token: verification never panics and only ever refuses.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use authd::auth::{AuthError, TokenKeys};
use ed25519_dalek::{SigningKey, pkcs8::DecodePrivateKey as _};
use libfuzzer_sys::fuzz_target;

/// A throwaway key for fuzzing only; it signs nothing anywhere else.
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMFECAQEwBQYDK2VwBCIEILfdtq3w1A2MP2w6WsLgOJ8W5fK0ONDB00u2IOfaZZgT\ngSEACHJg03FgE8GL2n4IGnO9JAMslak1fjsGQCgwGPG391c=\n-----END PRIVATE KEY-----\n";

fn keys() -> &'static TokenKeys {
    static KEYS: OnceLock<TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_pkcs8_pem(FUZZ_KEY).expect("fuzz key parses");
        TokenKeys::new(
            &key,
            &[],
            "authd",
            "fuzz",
            authd::auth::Acceptance {
                leeway: Duration::ZERO,
                max_lifetime: Duration::from_secs(900),
            },
        )
        .expect("fuzz keys")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let result = keys().verify(token);
        assert!(
            matches!(result, Err(AuthError::AccessTokenInvalid)),
            "{result:?}"
        );
    }
});
