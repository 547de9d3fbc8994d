//! Arbitrary bytes as a refresh token: parsing and opening never panic, give a documented
//! answer, and no forged token opens as a sealed one.
#![no_main]

use authd::auth::{AuthError, Opened, RefreshKey, RefreshToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data).into_owned();
    let key = RefreshKey::new([7; 32]);
    match RefreshToken::parse(raw).and_then(|token| key.open(&token)) {
        Ok(Opened::Legacy(_)) => assert_eq!(data.len(), 43),
        Ok(Opened::Sealed(_)) => panic!("a token with a forged tag opened"),
        Err(AuthError::InvalidArgument { .. } | AuthError::RefreshTokenInvalid) => {}
        Err(other) => panic!("undocumented error {other:?}"),
    }
});
