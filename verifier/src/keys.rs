//! authd's public keys, from its JWKS over HTTP: fetched at start, again when a token names a
//! key not seen yet (a rotation), at most once per refetch interval, and periodically, so
//! that retired keys go.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use tokio::{sync::Mutex, time::Instant};

/// A JWKS larger than this is refused: authd's holds a few keys of ~150 bytes each.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Verification keys by `kid`.
pub(crate) type Keys = HashMap<String, DecodingKey>;

/// Why the JWKS could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("GET {url}: {problem}")]
    Http { url: String, problem: String },
    #[error("the JWKS at {url} is not a JSON Web Key Set: {problem}")]
    Malformed { url: String, problem: String },
}

/// The keys, and how to fetch them again.
#[derive(Debug)]
pub(crate) struct KeyRing {
    url: http::Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    refetch_interval: Duration,
    keys: RwLock<Arc<Keys>>,
    /// When the last fetch began: refetches for unknown keys wait out the interval after it.
    last_fetch: Mutex<Option<Instant>>,
}

impl KeyRing {
    pub(crate) fn new(url: http::Uri, timeout: Duration, refetch_interval: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            refetch_interval,
            keys: RwLock::default(),
            last_fetch: Mutex::new(None),
        }
    }

    /// The keys as last fetched.
    pub(crate) fn current(&self) -> Arc<Keys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fetches the keys now, whenever the last fetch was.
    pub(crate) async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// Fetches the keys for a token signed by an unknown one, unless a fetch began within
    /// the refetch interval (so forged `kid`s cannot make the verifier hammer authd). Callers
    /// arriving together wait for one fetch, then look at what it brought.
    pub(crate) async fn refetch_for_unknown_key(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "could not refetch authd's keys");
        }
    }

    async fn fetch(&self) -> Result<usize, FetchError> {
        let http = |problem: String| FetchError::Http {
            url: self.url.to_string(),
            problem,
        };
        let body = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .get(self.url.clone())
                .await
                .map_err(|e| http(e.to_string()))?;
            if !response.status().is_success() {
                return Err(http(format!("answered {}", response.status())));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| http(e.to_string()))
        })
        .await
        .map_err(|_| http(format!("no answer within {:?}", self.timeout)))??;
        let keys = parse(&body).map_err(|problem| FetchError::Malformed {
            url: self.url.to_string(),
            problem,
        })?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(count)
    }
}

/// The Ed25519 keys of a JWKS, by `kid`; keys of other types, or without a `kid`, are skipped.
fn parse(body: &[u8]) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(set
        .keys
        .iter()
        .filter(|jwk| {
            matches!(&jwk.algorithm, AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519)
        })
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            Some((kid, DecodingKey::from_jwk(jwk).ok()?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ed25519_keys_with_an_id_are_kept() {
        let jwks = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"RSA","n":"sXch","e":"AQAB","kid":"r"}
        ]}"#;
        let keys = parse(jwks).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["a"]);
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }
}
