//! A load generator for a running authd: `cargo run --release --example load -- --help`.
//!
//! Workers share a few connections and keep a fixed number of calls in flight. Each worker
//! logs in once and keeps its own session: Refresh follows its own rotation chain, Validate
//! uses its current access token. At the end it prints, per call, the throughput, the latency
//! percentiles and the error counts by status code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use authd::proto::{
    LoginRequest, RefreshRequest, ValidateRequest, auth_service_client::AuthServiceClient,
};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Validate only.
    Validate,
    /// Login only (argon2 bound).
    Login,
    /// Refresh only, each worker along its own rotation chain.
    Refresh,
    /// gRPC health Check: the transport floor.
    Health,
    /// 80% Validate, 15% Refresh, 5% Login.
    Mixed,
    /// No load: log in `--sessions` times and write the access tokens to `--tokens-file`,
    /// one per line, for Validate runs over many distinct sessions.
    Sessions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    Tonic,
    Raw,
}

#[derive(Debug, Parser)]
// A later --in-flight or --connections wins, so scripts can override their defaults.
#[command(args_override_self = true)]
struct Args {
    /// authd's address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    #[arg(long, value_enum, default_value = "mixed")]
    mode: Mode,
    /// How long to run, e.g. 30s or 10m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// HTTP/2 connections shared by the workers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight at once (one worker each).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// The user every worker logs in as; with `--accounts N` above 1, worker `w` logs in as
    /// `local+(w mod N)@domain` instead (authd serialises the logins of one account, so a
    /// login benchmark needs many).
    #[arg(long, default_value = "load@example.com")]
    email: String,
    /// How many accounts the workers spread over (see `--email`).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    #[arg(long, default_value = "correct horse battery staple")]
    password: String,
    /// Validate rotates through the access tokens in this file (see `--mode sessions`);
    /// without it each worker validates its own session's token.
    #[arg(long)]
    tokens_file: Option<std::path::PathBuf>,
    /// How many sessions `--mode sessions` opens.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// `tonic`: the generated client, messages encoded and decoded per call. `raw` (health
    /// and validate only): HTTP/2 straight from `h2`, each request's bytes encoded once
    /// before the run and the answer checked by its `grpc-status` alone, so that on a host
    /// of two cores the load generator spends less per call than the server and the server,
    /// not the load generator, sets the pace.
    #[arg(long, value_enum, default_value = "tonic")]
    client: Client,
    /// Print one line of progress (calls so far) this often; 0 turns it off.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    progress: Duration,
}

/// Latencies and outcomes of one kind of call.
#[derive(Debug)]
struct Stats {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            errors: BTreeMap::new(),
        }
    }
}

type Report = Arc<Mutex<BTreeMap<&'static str, Stats>>>;

fn record(
    report: &Report,
    call: &'static str,
    started: Instant,
    outcome: Result<(), tonic::Status>,
) {
    let micros = u64::try_from(started.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut report = report.lock().unwrap();
    let stats = report.entry(call).or_insert_with(Stats::new);
    match outcome {
        Ok(()) => stats.latency_us.saturating_record(micros),
        Err(status) => {
            *stats
                .errors
                .entry(format!("{:?}", status.code()))
                .or_default() += 1
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut channels = Vec::new();
    // The raw client makes its own connections.
    let tonic_connections = match (args.client, args.mode) {
        (Client::Raw, Mode::Health | Mode::Validate) => 0,
        _ => args.connections.max(1),
    };
    for _ in 0..tonic_connections {
        let channel = Channel::from_shared(args.target.clone())
            .expect("a valid target URL")
            .connect()
            .await
            .expect("authd answers");
        channels.push(channel);
    }
    if args.mode == Mode::Sessions {
        open_sessions(&args, &channels).await;
        return;
    }
    let tokens: Arc<Vec<String>> = Arc::new(match &args.tokens_file {
        Some(path) => std::fs::read_to_string(path)
            .expect("the tokens file is readable")
            .lines()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    });
    let report: Report = Arc::default();
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let args = Arc::new(args);

    let mut workers = Vec::new();
    if args.client == Client::Raw {
        let calls = raw::Calls::new(&args, &tokens);
        let mut connections = Vec::new();
        for _ in 0..args.connections.max(1) {
            connections.push(raw::connect(&args.target).await);
        }
        for worker in 0..args.in_flight {
            let connection = connections[worker % connections.len()].clone();
            let (calls, report) = (calls.clone(), Arc::clone(&report));
            workers.push(tokio::spawn(raw::run_worker(
                worker,
                args.in_flight,
                connection,
                calls,
                report,
                deadline,
            )));
        }
    } else {
        for worker in 0..args.in_flight {
            let channel = channels[worker % channels.len()].clone();
            let (args, report) = (Arc::clone(&args), Arc::clone(&report));
            let tokens = Arc::clone(&tokens);
            workers.push(tokio::spawn(run_worker(
                worker, channel, args, tokens, report, deadline,
            )));
        }
    }
    if !args.progress.is_zero() {
        let report = Arc::clone(&report);
        let every = args.progress;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let done: u64 = report
                    .lock()
                    .unwrap()
                    .values()
                    .map(|s| s.latency_us.len())
                    .sum();
                println!(
                    "progress {:>6.0}s {done} calls",
                    started.elapsed().as_secs_f64()
                );
            }
        });
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    print_report(&report.lock().unwrap(), started.elapsed(), &args);
}

/// Logs in `--sessions` times, `--in-flight` at once, and writes the access tokens out.
async fn open_sessions(args: &Args, channels: &[Channel]) {
    let path = args
        .tokens_file
        .as_ref()
        .expect("--tokens-file is required");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..args.in_flight {
        let mut auth = AuthServiceClient::new(channels[worker % channels.len()].clone());
        let (next, total) = (Arc::clone(&next), args.sessions);
        let login = login_request(args, worker);
        workers.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let session = auth.login(login.clone()).await.expect("login");
                tokens.push(session.into_inner().access_token);
            }
            tokens
        }));
    }
    let mut lines = String::new();
    for worker in workers {
        for token in worker.await.expect("worker") {
            lines.push_str(&token);
            lines.push('\n');
        }
    }
    std::fs::write(path, lines).expect("the tokens file is writable");
    println!(
        "wrote {} access tokens to {}",
        args.sessions,
        path.display()
    );
}

/// The Login of `worker`: its account of `--accounts`.
fn login_request(args: &Args, worker: usize) -> LoginRequest {
    let email = match (args.accounts, args.email.split_once('@')) {
        (0 | 1, _) | (_, None) => args.email.clone(),
        (accounts, Some((local, domain))) => format!("{local}+{}@{domain}", worker % accounts),
    };
    LoginRequest {
        email,
        password: args.password.clone(),
        client: None,
    }
}

async fn run_worker(
    worker: usize,
    channel: Channel,
    args: Arc<Args>,
    tokens: Arc<Vec<String>>,
    report: Report,
    deadline: Instant,
) {
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let login = login_request(&args, worker);
    let needs_session = match args.mode {
        Mode::Health | Mode::Login | Mode::Sessions => false,
        Mode::Validate => tokens.is_empty(),
        Mode::Refresh | Mode::Mixed => true,
    };
    let mut session = if needs_session {
        Some(
            auth.login(login.clone())
                .await
                .expect("initial login")
                .into_inner(),
        )
    } else {
        None
    };
    let mut turn: usize = worker;
    while Instant::now() < deadline {
        turn = turn.wrapping_add(1);
        let call = match args.mode {
            Mode::Mixed => match turn % 20 {
                0 => Mode::Login,
                1..=3 => Mode::Refresh,
                _ => Mode::Validate,
            },
            mode => mode,
        };
        let started = Instant::now();
        match call {
            Mode::Validate => {
                // Workers start at different offsets and stride by the worker count, so every
                // token is used in turn and no two calls in flight share one.
                let token = if tokens.is_empty() {
                    session
                        .as_ref()
                        .map(|s| s.access_token.clone())
                        .unwrap_or_default()
                } else {
                    let round = turn.wrapping_sub(worker);
                    tokens[(round.wrapping_mul(args.in_flight) + worker) % tokens.len()].clone()
                };
                let result = auth
                    .validate(ValidateRequest {
                        access_token: token,
                    })
                    .await;
                record(&report, "Validate", started, result.map(drop));
            }
            Mode::Refresh => {
                let token = session
                    .as_ref()
                    .map(|s| s.refresh_token.clone())
                    .unwrap_or_default();
                match auth
                    .refresh(RefreshRequest {
                        refresh_token: token,
                        client: None,
                    })
                    .await
                {
                    Ok(next) => {
                        record(&report, "Refresh", started, Ok(()));
                        let next = next.into_inner();
                        if let Some(s) = session.as_mut() {
                            s.access_token = next.access_token;
                            s.refresh_token = next.refresh_token;
                        }
                    }
                    Err(status) => {
                        record(&report, "Refresh", started, Err(status));
                        // Start a new chain so one failure does not poison the rest of the run.
                        if let Ok(fresh) = auth.login(login.clone()).await {
                            session = Some(fresh.into_inner());
                        }
                    }
                }
            }
            Mode::Login => {
                let result = auth.login(login.clone()).await;
                record(&report, "Login", started, result.map(drop));
            }
            Mode::Health | Mode::Mixed | Mode::Sessions => {
                let result = health.check(HealthCheckRequest::default()).await;
                record(&report, "Health", started, result.map(drop));
            }
        }
    }
}

fn print_report(report: &BTreeMap<&'static str, Stats>, elapsed: Duration, args: &Args) {
    println!(
        "mode={:?} duration={:.1}s connections={} in_flight={}",
        args.mode,
        elapsed.as_secs_f64(),
        args.connections,
        args.in_flight
    );
    println!(
        "{:<9} {:>10} {:>10} {:>9} {:>9} {:>9}  errors",
        "call", "ok", "per_sec", "p50_ms", "p99_ms", "p999_ms"
    );
    for (call, stats) in report {
        let h = &stats.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{call:<9} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>9.2}  {:?}",
            h.len(),
            h.len() as f64 / elapsed.as_secs_f64(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            stats.errors
        );
    }
    let calls: u64 = report.values().map(|s| s.latency_us.len()).sum();
    if let Some(cpu) = own_cpu().filter(|_| calls > 0) {
        // A load generator that spends a core of its own measures itself, not the server.
        println!(
            "load generator CPU per call: {:.2} µs",
            cpu.as_secs_f64() * 1e6 / calls as f64
        );
    }
}

/// User plus system CPU this process has used so far (Linux `/proc`; `None` elsewhere).
fn own_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields counted here start after its ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let (user, system): (u64, u64) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    // /proc counts in USER_HZ ticks, 100 a second on every Linux architecture Rust targets
    // here (the kernel's ABI, whatever its internal HZ).
    Some(Duration::from_millis((user + system) * 10))
}

/// The raw HTTP/2 client of `--client raw`.
mod raw {
    use std::{sync::Arc, time::Instant};

    use bytes::{BufMut as _, Bytes, BytesMut};
    use prost::Message as _;
    use tokio::net::TcpStream;

    use super::{Args, Mode, Report, ValidateRequest, record};

    /// Every call's request, encoded once: the path and the gRPC-framed messages.
    #[derive(Clone)]
    pub(crate) struct Calls {
        call: &'static str,
        uri: http::Uri,
        bodies: Arc<Vec<Bytes>>,
    }

    impl Calls {
        pub(crate) fn new(args: &Args, tokens: &[String]) -> Self {
            let (call, path, bodies) = match args.mode {
                Mode::Health => ("Health", "/grpc.health.v1.Health/Check", vec![frame(&[])]),
                Mode::Validate if !tokens.is_empty() => (
                    "Validate",
                    "/auth.v1.AuthService/Validate",
                    tokens
                        .iter()
                        .map(|token| {
                            let request = ValidateRequest {
                                access_token: token.clone(),
                            };
                            frame(&request.encode_to_vec())
                        })
                        .collect(),
                ),
                _ => panic!("--client raw drives --mode health, or validate with --tokens-file"),
            };
            let uri = format!("{}{path}", args.target.trim_end_matches('/'))
                .parse()
                .expect("a valid target URL");
            Self {
                call,
                uri,
                bodies: Arc::new(bodies),
            }
        }
    }

    /// A gRPC message frame: uncompressed, its length, the message.
    fn frame(message: &[u8]) -> Bytes {
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.put_u8(0);
        framed.put_u32(u32::try_from(message.len()).expect("a small message"));
        framed.put_slice(message);
        framed.freeze()
    }

    pub(crate) async fn connect(target: &str) -> h2::client::SendRequest<Bytes> {
        let uri: http::Uri = target.parse().expect("a valid target URL");
        let address = format!(
            "{}:{}",
            uri.host().expect("a host"),
            uri.port_u16().unwrap_or(80)
        );
        let tcp = TcpStream::connect(address).await.expect("authd answers");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection ended: {e}");
            }
        });
        send
    }

    /// One call in flight at a time, through every body in turn as the tonic client does.
    pub(crate) async fn run_worker(
        worker: usize,
        in_flight: usize,
        mut connection: h2::client::SendRequest<Bytes>,
        calls: Calls,
        report: Report,
        deadline: Instant,
    ) {
        let mut turn = worker;
        while Instant::now() < deadline {
            let started = Instant::now();
            let body = calls.bodies[turn % calls.bodies.len()].clone();
            turn = turn.wrapping_add(in_flight);
            let outcome = call(&mut connection, &calls.uri, body).await;
            record(&report, calls.call, started, outcome);
        }
    }

    async fn call(
        connection: &mut h2::client::SendRequest<Bytes>,
        uri: &http::Uri,
        body: Bytes,
    ) -> Result<(), tonic::Status> {
        let failed = |e: h2::Error| tonic::Status::unavailable(e.to_string());
        let request = http::Request::post(uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request");
        std::future::poll_fn(|cx| connection.poll_ready(cx))
            .await
            .map_err(failed)?;
        let (response, mut stream) = connection.send_request(request, false).map_err(failed)?;
        stream.send_data(body, true).map_err(failed)?;
        let response = response.await.map_err(failed)?;
        // A failed call may answer in its headers alone (trailers-only).
        if let Some(status) = response.headers().get("grpc-status") {
            return grpc_status(status);
        }
        let mut body = response.into_body();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(failed)?;
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(failed)?;
        match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
            Some(status) if received > 0 => grpc_status(status),
            Some(status) => {
                grpc_status(status).and(Err(tonic::Status::internal("an answer without a message")))
            }
            None => Err(tonic::Status::internal("no grpc-status")),
        }
    }

    fn grpc_status(value: &http::HeaderValue) -> Result<(), tonic::Status> {
        let code = value
            .to_str()
            .ok()
            .and_then(|code| code.parse::<i32>().ok())
            .unwrap_or(2);
        match tonic::Code::from(code) {
            tonic::Code::Ok => Ok(()),
            code => Err(tonic::Status::new(code, "")),
        }
    }
}
