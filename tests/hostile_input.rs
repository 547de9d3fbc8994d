//! Arbitrary bytes and arbitrary field values sent to the real server: every answer is one of
//! the documented statuses, and the server stays up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Buf as _, BufMut as _};
use common::{Backend, TestApp, validate};
use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// Sends and receives message bodies as raw bytes, so tests can send what no client would.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

const METHODS: [&str; 4] = ["Login", "Refresh", "Logout", "Validate"];

async fn call_raw(channel: Channel, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = format!("/auth.v1.AuthService/{method}").parse().unwrap();
    grpc.unary(Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// The codes a client of authd may see for bad input; INTERNAL or UNKNOWN would be a bug.
fn documented(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::Unavailable
    )
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn arbitrary_bytes_get_documented_statuses_and_the_server_stays_up() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(TestApp::spawn(Backend::Sqlite));
    let channel = runtime.block_on(common::channel(app.addr));
    let session = runtime.block_on(app.user_with_session("alice@example.com"));

    let strategy = (0..METHODS.len(), vec(any::<u8>(), 0..512));
    runner(256)
        .run(&strategy, |(method, body)| {
            let result = runtime.block_on(call_raw(channel.clone(), METHODS[method], body));
            let code = result.err().map_or(Code::Ok, |s| s.code());
            prop_assert!(documented(code), "{} answered {code:?}", METHODS[method]);
            Ok(())
        })
        .unwrap();

    runtime
        .block_on(validate(&app.client, &session.access_token))
        .expect("the server still answers");
}

#[test]
fn arbitrary_field_values_get_documented_statuses() {
    use authd::proto::{LoginRequest, LogoutRequest, RefreshRequest, ValidateRequest};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(TestApp::spawn(Backend::Sqlite));
    runtime.block_on(app.add_user("alice@example.com", common::PASSWORD));
    let text = || {
        prop_oneof![
            ".{0,40}",
            "\\PC{0,300}",
            // The shapes of a pre-upgrade and of a sealed refresh token.
            "[a-zA-Z0-9_-]{43}",
            "[a-zA-Z0-9_-]{119}",
            Just(String::new())
        ]
    };

    let strategy = (0..METHODS.len(), text(), text(), any::<bool>());
    runner(256)
        .run(&strategy, |(method, first, second, flag)| {
            let mut client = app.client.clone();
            let code = runtime.block_on(async {
                let result = match METHODS[method] {
                    "Login" => client
                        .login(LoginRequest {
                            email: first,
                            password: second,
                        })
                        .await
                        .map(|_| ()),
                    "Refresh" => client
                        .refresh(RefreshRequest {
                            refresh_token: first,
                        })
                        .await
                        .map(|_| ()),
                    "Logout" => client
                        .logout(LogoutRequest {
                            refresh_token: first,
                            all_sessions: flag,
                        })
                        .await
                        .map(|_| ()),
                    _ => client
                        .validate(ValidateRequest {
                            access_token: first,
                        })
                        .await
                        .map(|_| ()),
                };
                result.err().map_or(Code::Ok, |s| s.code())
            });
            prop_assert!(documented(code), "{} answered {code:?}", METHODS[method]);
            Ok(())
        })
        .unwrap();
}
