//! TLS and mutual TLS on the gRPC port, with a CA and certificates made by the test.

use crate::common;

use authd::{
    config::Config,
    proto::{ValidateRequest, auth_service_client::AuthServiceClient},
    server::Application,
};
use common::{Backend, TestDatabase, settings};
use std::os::unix::fs::PermissionsExt as _;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: (String, String),
    /// A client whose certificate names only `intruder.example`.
    intruder: (String, String),
    /// A client named by a URI SAN, as SPIFFE workloads are.
    workload: (String, String),
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_with = |params: CertificateParams| {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let leaf = |name: &str| leaf_with(CertificateParams::new(vec![name.to_owned()]).unwrap());
        let (server_cert, server_key) = leaf("localhost");
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = ca.as_ref().pem();
        for (file, pem) in [
            ("ca.pem", &ca_pem),
            ("server.pem", &server_cert),
            ("server.key", &server_key),
        ] {
            std::fs::write(dir.path().join(file), pem).unwrap();
        }
        // A private key others may read is refused at start.
        let key = dir.path().join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut workload = CertificateParams::new(Vec::<String>::new()).unwrap();
        workload.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/support-tool".try_into().unwrap(),
        )];
        Self {
            dir,
            ca_pem,
            client: leaf("client.example"),
            intruder: leaf("intruder.example"),
            workload: leaf_with(workload),
        }
    }

    /// The settings of TLS with client certificates from this CA required.
    fn mutual_tls(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_TLS_CERT_FILE", self.path("server.pem")),
            ("AUTH_TLS_KEY_FILE", self.path("server.key")),
            ("AUTH_TLS_CLIENT_CA_FILE", self.path("ca.pem")),
        ]
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

async fn start(db: &TestDatabase, extra: &[(&str, &str)]) -> std::net::SocketAddr {
    let config = Config::from_vars(settings(db, extra)).unwrap();
    let app = Application::build(config).await.expect("server starts");
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    addr
}

/// A TLS channel trusting the test CA, presenting `identity` if given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Connects over TLS, trusting the test CA, optionally presenting a client certificate, and
/// makes one call: a handshake failure shows as an error here.
async fn call(
    addr: std::net::SocketAddr,
    pki: &Pki,
    identity: Option<&(String, String)>,
) -> Result<Code, String> {
    let channel = tls_channel(addr, pki, identity).await?;
    let answer = AuthServiceClient::new(channel)
        .validate(ValidateRequest {
            access_token: "x".into(),
        })
        .await;
    Ok(answer.err().map_or(Code::Ok, |s| s.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_encrypted_and_refuses_plaintext() {
    common::init_logs();
    let pki = Pki::new();
    let db = TestDatabase::create(Backend::Sqlite).await;
    let paths = [
        ("AUTH_TLS_CERT_FILE", pki.path("server.pem")),
        ("AUTH_TLS_KEY_FILE", pki.path("server.key")),
    ];
    let addr = start(&db, &as_settings(&paths)).await;

    // A TLS client reaches the service (an invalid token is an ordinary answer).
    assert_eq!(call(addr, &pki, None).await.unwrap(), Code::Unauthenticated);
    // A plaintext client does not.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => AuthServiceClient::new(channel)
            .validate(ValidateRequest {
                access_token: "x".into(),
            })
            .await
            .is_err_and(|s| s.code() != Code::Unauthenticated),
    };
    assert!(refused, "a plaintext call got through a TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let db = TestDatabase::create(Backend::Sqlite).await;
    let addr = start(&db, &as_settings(&pki.mutual_tls())).await;

    assert_eq!(
        call(addr, &pki, Some(&pki.client)).await.unwrap(),
        Code::Unauthenticated
    );
    let without = call(addr, &pki, None).await;
    assert!(
        !matches!(without, Ok(Code::Unauthenticated | Code::Ok)),
        "a client without a certificate was served: {without:?}"
    );
    // A certificate from another CA is refused too.
    let stranger = Pki::new();
    let foreign = call(addr, &pki, Some(&stranger.client)).await;
    assert!(
        !matches!(foreign, Ok(Code::Unauthenticated | Code::Ok)),
        "{foreign:?}"
    );
}

/// The AdminService admits a client certificate naming a listed identity, by DNS or URI SAN,
/// and refuses one from the same CA that names another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_callers_are_known_by_their_certificate_names() {
    use authd::proto::{
        GetUserRequest, admin_service_client::AdminServiceClient, get_user_request,
    };
    let pki = Pki::new();
    let db = TestDatabase::create(Backend::Sqlite).await;
    let mut paths = pki.mutual_tls();
    paths.push((
        "AUTH_ADMIN_CLIENTS",
        "client.example,spiffe://example.org/support-tool".to_owned(),
    ));
    let addr = start(&db, &as_settings(&paths)).await;
    let pki = &pki;
    let get_user = |identity| async move {
        let channel = tls_channel(addr, pki, Some(identity)).await.unwrap();
        AdminServiceClient::new(channel)
            .get_user(GetUserRequest {
                user: Some(get_user_request::User::Email("nobody@example.com".into())),
            })
            .await
    };
    for listed in [&pki.client, &pki.workload] {
        common::assert_refused(get_user(listed).await, Code::NotFound, "USER_NOT_FOUND");
    }
    common::assert_refused(
        get_user(&pki.intruder).await,
        Code::PermissionDenied,
        "ADMIN_CREDENTIALS_REFUSED",
    );
}

#[tokio::test]
async fn tls_settings_must_come_in_pairs_and_name_readable_files() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let only_cert =
        Config::from_vars(settings(&db, &[("AUTH_TLS_CERT_FILE", "/x.pem")])).unwrap_err();
    assert_eq!(only_cert.variable, "AUTH_TLS_KEY_FILE");
    let missing = [
        ("AUTH_TLS_CERT_FILE", "/nonexistent.pem"),
        ("AUTH_TLS_KEY_FILE", "/nonexistent.key"),
    ];
    let config = Config::from_vars(settings(&db, &missing)).unwrap();
    let Err(error) = Application::build(config).await else {
        panic!("started without its certificate");
    };
    assert!(
        format!("{error:#}").contains("AUTH_TLS_CERT_FILE"),
        "{error:#}"
    );
}

fn as_settings<'a>(paths: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    paths.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
