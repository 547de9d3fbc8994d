//! Arbitrary bytes as each request message, decoded and parsed as the gRPC layer does:
//! never a panic, only documented errors.
#![no_main]

use authd::{
    auth::{AuthError, Email, Password, RefreshToken},
    proto::{LoginRequest, LogoutRequest, RefreshRequest},
};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn documented(result: Result<(), AuthError>) {
    match result {
        Ok(()) | Err(AuthError::InvalidArgument { .. } | AuthError::RefreshTokenInvalid) => {}
        Err(other) => panic!("undocumented error {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(login) = LoginRequest::decode(data) {
        documented(Email::parse(&login.email).map(drop));
        documented(Password::parse(login.password).map(drop));
    }
    if let Ok(refresh) = RefreshRequest::decode(data) {
        documented(RefreshToken::parse(refresh.refresh_token).map(drop));
    }
    if let Ok(logout) = LogoutRequest::decode(data) {
        documented(RefreshToken::parse(logout.refresh_token).map(drop));
    }
});
