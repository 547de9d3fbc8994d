//! Arbitrary bytes and arbitrary field values sent to the real server: every answer is one of
//! the documented statuses, and the server stays up. Raw HTTP/2 floods: one connection cannot
//! hold more than its share.

use crate::common;

use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use common::{
    Backend, PASSWORD, TestApp, TestDatabase, add_user, assert_status, login,
    process::AuthdProcess, validate,
};
use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
                            client: None,
                        })
                        .await
                        .map(|_| ()),
                    "Refresh" => client
                        .refresh(RefreshRequest {
                            refresh_token: first,
                            client: None,
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

on_both_backends!(
    one_connection_cannot_open_more_streams_than_advertised,
    connections_that_never_send_a_preface_are_closed_within_the_handshake_timeout,
    running_out_of_descriptors_does_not_spin_and_service_resumes,
    a_rapid_reset_flood_is_cut_off_and_costs_little,
    partial_http1_request_heads_are_closed_within_the_handshake_timeout,
    idle_connections_are_closed_and_their_clients_reconnect,
    a_call_in_flight_keeps_its_connection_past_the_idle_timeout,
    calls_beyond_the_cap_are_refused_at_once_while_probes_answer,
    an_abandoned_call_frees_its_slot_at_once,
);

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A Login request's headers, HPACK literals without indexing or Huffman coding.
fn login_headers() -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/auth.v1.AuthService/Login"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// Reads one frame: kind, flags, stream and payload.
async fn read_frame(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut header = [0_u8; 9];
    reader.read_exact(&mut header).await.ok()?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0_u8; length];
    reader.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4], stream, payload))
}

/// A raw TCP connection to `addr` that has sent the HTTP/2 preface and an empty SETTINGS.
async fn open_http2(
    addr: std::net::SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    writer
        .write_all(&frame(FRAME_SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    (reader, writer)
}

/// A new client of `server` logs in within 2 s, and its access token validates.
async fn serves_a_new_client_at_once(server: &AuthdProcess) {
    let client = server.client().await;
    let session = tokio::time::timeout(
        Duration::from_secs(2),
        login(&client, "alice@example.com", PASSWORD),
    )
    .await
    .expect("a Login by a new client answers within 2 s")
    .expect("the Login succeeds");
    validate(&client, &session.access_token).await.unwrap();
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 30,000 streams that send headers and never a body, on one connection: the server advertises
/// its limit, refuses the streams beyond it, stays small, and serves the next client at once.
async fn one_connection_cannot_open_more_streams_than_advertised(backend: Backend) {
    const STREAMS: u32 = 30_000;
    const LIMIT: u32 = 100;
    let db = TestDatabase::create(backend).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let server = AuthdProcess::spawn(&db, &[("AUTH_GRPC_MAX_CONCURRENT_STREAMS", "100")]).await;
    let pid = server.child.id().unwrap();

    let (mut reader, mut writer) = open_http2(server.addr).await;
    let advertised = loop {
        let (kind, flags, _, payload) = read_frame(&mut reader).await.expect("server SETTINGS");
        if kind == FRAME_SETTINGS && flags & 0x1 == 0 {
            break payload
                .chunks_exact(6)
                .find(|setting| {
                    u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS
                })
                .map(|setting| {
                    u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]])
                });
        }
    };
    assert_eq!(advertised, Some(LIMIT), "SETTINGS_MAX_CONCURRENT_STREAMS");
    writer
        .write_all(&frame(FRAME_SETTINGS, 0x1, 0, &[]))
        .await
        .unwrap();

    // Count what the server answers while the flood goes out, so its writes never block.
    let answers = tokio::spawn(async move {
        let (mut refused, mut goaway) = (0_u32, false);
        while let Some((kind, _, _, payload)) = read_frame(&mut reader).await {
            match kind {
                FRAME_RST_STREAM
                    if u32::from_be_bytes(payload[..4].try_into().unwrap()) == REFUSED_STREAM =>
                {
                    refused += 1
                }
                FRAME_GOAWAY => goaway = true,
                _ => {}
            }
        }
        (refused, goaway)
    });
    let headers = login_headers();
    let mut peak_kib = 0;
    for id in 0..STREAMS {
        // END_HEADERS, and no END_STREAM: the request body never comes.
        if writer
            .write_all(&frame(FRAME_HEADERS, 0x4, 2 * id + 1, &headers))
            .await
            .is_err()
        {
            break; // the server closed the connection: also a refusal
        }
        if id % 1_000 == 0 {
            peak_kib = peak_kib.max(resident_kib(pid));
        }
    }
    peak_kib = peak_kib.max(resident_kib(pid));
    drop(writer);
    let (refused, goaway) = tokio::time::timeout(Duration::from_secs(30), answers)
        .await
        .unwrap()
        .unwrap();
    assert!(
        goaway || refused >= STREAMS - LIMIT,
        "{refused} of {STREAMS} streams refused, no GOAWAY"
    );
    let after_kib = resident_kib(pid);
    assert!(
        peak_kib < 128 * 1024,
        "resident {peak_kib} KiB during the flood"
    );
    assert!(
        after_kib < 128 * 1024,
        "resident {after_kib} KiB after the flood"
    );

    serves_a_new_client_at_once(&server).await;
}

/// 100 connections that send nothing are closed once the handshake timeout passes; meanwhile a
/// new client logs in at once.
async fn connections_that_never_send_a_preface_are_closed_within_the_handshake_timeout(
    backend: Backend,
) {
    let db = TestDatabase::create(backend).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let server = AuthdProcess::spawn(&db, &[("AUTH_HANDSHAKE_TIMEOUT", "1s")]).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let opened = std::time::Instant::now();

    let client = server.client().await;
    tokio::time::timeout(
        Duration::from_secs(2),
        login(&client, "alice@example.com", PASSWORD),
    )
    .await
    .expect("a Login beside 100 silent connections answers within 2 s")
    .expect("the Login succeeds");

    for (at, mut connection) in silent.into_iter().enumerate() {
        let mut byte = [0_u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "silent connection {at} still open {:?} after it opened: {read:?}",
            opened.elapsed()
        );
    }
}

/// CPU time the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Under a descriptor limit of 128, 150 idle connections (more than the limit leaves after
/// the server's own files): the server does not spin (it stops accepting instead of failing
/// `accept` in a loop), and serves again once they close.
async fn running_out_of_descriptors_does_not_spin_and_service_resumes(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let extra = [
        ("AUTH_HANDSHAKE_TIMEOUT", "60s"),
        ("AUTH_HTTP_LISTEN", "127.0.0.1:0"),
    ];
    let server = AuthdProcess::spawn_with_descriptor_limit(&db, &extra, 128).await;
    let pid = server.child.id().unwrap();
    let mut idle = Vec::new();
    for _ in 0..150 {
        // Past the server's cap these wait in the backlog (128), which the kernel completes.
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 20,
        "{spent} ticks of CPU in 2 s with its connections full"
    );

    drop(idle);
    let client = server.client().await;
    let session = common::eventually(
        Duration::from_secs(10),
        "a Login once the idle connections closed",
        || {
            let client = client.clone();
            async move { login(&client, "alice@example.com", PASSWORD).await.ok() }
        },
    )
    .await;
    validate(&client, &session.access_token).await.unwrap();
}

/// HTTP/2 rapid reset (CVE-2023-44487): 20,000 streams opened and at once reset on one
/// connection. The server closes the connection (GOAWAY) before the flood is through, spends
/// under 5 core-seconds on it, and keeps serving.
async fn a_rapid_reset_flood_is_cut_off_and_costs_little(backend: Backend) {
    const CYCLES: u32 = 20_000;
    let db = TestDatabase::create(backend).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let server = AuthdProcess::spawn(&db, &[]).await;
    let pid = server.child.id().unwrap();

    let (mut reader, mut writer) = open_http2(server.addr).await;
    let goaway = tokio::spawn(async move {
        let mut goaway = false;
        while let Some((kind, _, _, _)) = read_frame(&mut reader).await {
            goaway |= kind == FRAME_GOAWAY;
        }
        goaway
    });
    let before = cpu_ticks(pid);
    let headers = login_headers();
    let started = std::time::Instant::now();
    let mut sent = 0;
    'flood: for chunk in 0..CYCLES / 500 {
        let mut burst = Vec::new();
        for n in 0..500 {
            let id = 2 * (chunk * 500 + n) + 1;
            burst.extend(frame(FRAME_HEADERS, 0x4, id, &headers));
            burst.extend(frame(FRAME_RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if writer.write_all(&burst).await.is_err() {
            break 'flood; // the server closed the connection
        }
        sent += 500;
    }
    let flood_took = started.elapsed();
    drop(writer);
    let goaway = tokio::time::timeout(Duration::from_secs(30), goaway)
        .await
        .unwrap()
        .unwrap();
    let spent = cpu_ticks(pid) - before;
    // h2's limit on streams reset before they were accepted cuts the flood off.
    assert!(
        goaway || sent < CYCLES,
        "all {sent} cycles went through in {flood_took:?}, no GOAWAY"
    );
    assert!(spent < 500, "the flood cost the server {spent} ticks");

    serves_a_new_client_at_once(&server).await;
}

/// Reads `connection` until the server closes it, within `deadline` of `opened`; how long
/// after `opened` that was.
async fn closed_within(
    connection: &mut (impl tokio::io::AsyncRead + Unpin),
    opened: std::time::Instant,
    deadline: Duration,
    what: &str,
) -> Duration {
    let started = opened;
    let mut buffer = [0_u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + deadline),
            connection.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("{what} still open after {deadline:?}"),
        }
    }
}

/// A request head cut off before its empty line, longer than an HTTP/2 preface, on the gRPC
/// port (gRPC-Web) and on the HTTP port (JWKS): both are closed once the handshake timeout
/// passes, unanswered, while a complete request on the HTTP port is answered.
async fn partial_http1_request_heads_are_closed_within_the_handshake_timeout(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_HANDSHAKE_TIMEOUT", "1s")]).await;
    let partial = b"POST /auth.v1.AuthService/Validate HTTP/1.1\r\nHost: localhost\r\nX-Slow: a";
    for (port, addr) in [("gRPC", app.addr), ("HTTP", app.http_addr)] {
        let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
        connection.write_all(partial).await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut answer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a partial head on the {port} port: still open after 5 s, or answered: {read:?}"
        );
        assert!(
            answer.is_empty(),
            "answered {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (head, _) = common::http_get(app.http_addr, "/.well-known/jwks.json").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// With a 1 s idle timeout: an HTTP/2 connection that made no call, and an HTTP/1 connection
/// kept alive after a JWKS fetch, are closed after about that long; a client whose connection
/// was closed that way calls again without an error.
async fn idle_connections_are_closed_and_their_clients_reconnect(backend: Backend) {
    const IDLE: Duration = Duration::from_secs(1);
    let app = TestApp::spawn_with(backend, &[("AUTH_IDLE_TIMEOUT", "1s")]).await;
    app.add_user("alice@example.com", PASSWORD).await;
    // Through another client: the app's own has been idle since it connected, so its
    // connection is closed well before the call at the end (a call sent at the very instant
    // of an idle close would fail, as the README says).
    let other = common::connect(app.addr).await;
    let session = login(&other, "alice@example.com", PASSWORD).await.unwrap();

    let opened = std::time::Instant::now();
    let (mut http2, _writer) = open_http2(app.addr).await;
    let mut http1 = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    http1
        .write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let http2_open_for =
        closed_within(&mut http2, opened, Duration::from_secs(10), "idle HTTP/2").await;
    let http1_open_for =
        closed_within(&mut http1, opened, Duration::from_secs(10), "idle HTTP/1").await;
    assert!(
        http2_open_for >= IDLE - Duration::from_millis(50),
        "an idle HTTP/2 connection closed after {http2_open_for:?}"
    );
    assert!(
        http1_open_for >= IDLE - Duration::from_millis(50),
        "a kept-alive HTTP/1 connection closed after {http1_open_for:?}"
    );

    // The app's client's connection was closed for idleness before these were.
    validate(&app.client, &session.access_token)
        .await
        .expect("a call after the idle close reconnects");
}

/// A call whose request body never comes is in flight: its connection stays open past the
/// 1 s idle timeout until the 3 s call timeout abandons it with DEADLINE_EXCEEDED.
async fn a_call_in_flight_keeps_its_connection_past_the_idle_timeout(backend: Backend) {
    const CALL_TIMEOUT: Duration = Duration::from_secs(3);
    let app = TestApp::spawn_with(
        backend,
        &[("AUTH_IDLE_TIMEOUT", "1s"), ("AUTH_CALL_TIMEOUT", "3s")],
    )
    .await;
    let started = std::time::Instant::now();
    let status = call_without_a_body(common::channel(app.addr).await, "Validate").await;
    let took = started.elapsed();
    assert_status(&status, Code::DeadlineExceeded, "CALL_TIMEOUT");
    assert!(
        took >= CALL_TIMEOUT - Duration::from_millis(50),
        "answered after {took:?}"
    );
}

/// A call to `method` that sends its headers and never a message, as a slow or hostile
/// client would; its final status.
async fn call_without_a_body(channel: Channel, method: &str) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = format!("/auth.v1.AuthService/{method}").parse().unwrap();
    let call = grpc.client_streaming::<_, Vec<u8>, Vec<u8>, _>(
        Request::new(tokio_stream::pending::<Vec<u8>>()),
        path,
        RawCodec,
    );
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the server answers a call without a body within 20 s")
        .expect_err("a call without a request cannot succeed")
}

/// A Login whose body never comes, holding one of AuthService's slots for calls in flight
/// until the call timeout; its final status. A probe may hold a slot just as it arrives: then
/// it tries again, so that it ends up holding one.
fn hold_a_slot(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<Status> {
    tokio::spawn(async move {
        let channel = common::channel(addr).await;
        loop {
            let status = call_without_a_body(channel.clone(), "Login").await;
            if status.code() != Code::ResourceExhausted {
                return status;
            }
        }
    })
}

/// With room for one call in flight, held by a call whose body never comes: its client giving
/// up (RST_STREAM) frees the slot at once, not at the 60 s call timeout.
async fn an_abandoned_call_frees_its_slot_at_once(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_MAX_CALLS_IN_FLIGHT", "1"),
            ("AUTH_CALL_TIMEOUT", "60s"),
        ],
    )
    .await;
    let session = app.user_with_session("alice@example.com").await;
    let held = hold_a_slot(app.addr);
    common::eventually(Duration::from_secs(10), "the held call's slot", || async {
        let refused = validate(&app.client, &session.access_token).await.err()?;
        assert_status(&refused, Code::ResourceExhausted, "OVERLOADED");
        Some(())
    })
    .await;
    held.abort();
    common::eventually(Duration::from_secs(10), "the slot given back", || async {
        validate(&app.client, &session.access_token).await.ok()
    })
    .await;
}

/// With room for 2 calls in flight, held by two calls whose bodies never come: a third is
/// refused at once with RESOURCE_EXHAUSTED (OVERLOADED), health still answers SERVING, and
/// once the call timeout frees the slots, calls succeed again. The probes run one at a time,
/// so a refused probe means both slots are held by the body-less calls.
async fn calls_beyond_the_cap_are_refused_at_once_while_probes_answer(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_MAX_CALLS_IN_FLIGHT", "2"),
            ("AUTH_CALL_TIMEOUT", "6s"),
        ],
    )
    .await;
    let session = app.user_with_session("alice@example.com").await;
    let held: Vec<_> = (0..2).map(|_| hold_a_slot(app.addr)).collect();

    // Within the held calls' 6 s, however slowly their connections open on a busy machine.
    let refused = common::eventually(
        Duration::from_secs(5),
        "a Validate refused while 2 calls hold every slot",
        || {
            let client = app.client.clone();
            let token = session.access_token.clone();
            async move {
                let answer =
                    tokio::time::timeout(Duration::from_secs(2), validate(&client, &token))
                        .await
                        .expect("a refusal comes at once, not after a wait");
                answer.err()
            }
        },
    )
    .await;
    assert_status(&refused, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(
        common::health(app.addr, "").await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        "health answers while every call slot is held"
    );

    let (_, metrics) = common::http_get(app.http_addr, "/metrics").await;
    assert!(
        metrics.contains("authd_calls_cut_total{reason=\"overloaded\"}"),
        "the refusal is counted:\n{metrics}"
    );

    for call in held {
        assert_status(&call.await.unwrap(), Code::DeadlineExceeded, "CALL_TIMEOUT");
    }
    validate(&app.client, &session.access_token)
        .await
        .expect("a call succeeds once the slots are free");
}
