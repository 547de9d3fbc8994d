//! Arbitrary bytes as a refresh token: parsing never panics and gives a documented answer.
#![no_main]

use authd::auth::{AuthError, RefreshToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data).into_owned();
    match RefreshToken::parse(raw) {
        Ok(token) => assert_eq!(token.expose().len(), 43),
        Err(AuthError::InvalidArgument { .. } | AuthError::RefreshTokenInvalid) => {}
        Err(other) => panic!("undocumented error {other:?}"),
    }
});
