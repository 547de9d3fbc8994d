//! The settings as a whole: defaults, and errors that name their variable.

use std::time::Duration;

use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = config(&[]).unwrap();
    assert_eq!(c.transport.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.database.url, DEFAULT_DATABASE_URL);
    assert_eq!(c.sessions.access_token_ttl, Duration::from_secs(15 * 60));
    assert_eq!(
        c.sessions.refresh_token_ttl,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(c.sessions.jwt_leeway, Duration::ZERO);
    assert_eq!(c.login.argon2, Argon2Settings::default());
    assert!(c.sessions.keys.signing.is_none());
    assert_eq!(c.sessions.cleanup.batch_size, 250);
    assert_eq!(c.sessions.validate_cache_size, 50_000);
    assert_eq!(c.feed.heartbeat, Duration::from_secs(5));
    assert_eq!(c.feed.max_subscribers, 256);
    assert_eq!(c.feed.max_subscribers_per_address, 16);
    assert_eq!(c.feed.buffer, 4096);
    assert_eq!(c.feed.send_timeout, Duration::from_secs(10));
}

#[test]
fn human_durations_are_read() {
    let c = config(&[
        ("AUTH_ACCESS_TOKEN_TTL", "90s"),
        ("AUTH_REFRESH_TOKEN_TTL", "2d 3h"),
    ])
    .unwrap();
    assert_eq!(c.sessions.access_token_ttl, Duration::from_secs(90));
    assert_eq!(
        c.sessions.refresh_token_ttl,
        Duration::from_secs(2 * 86400 + 3 * 3600)
    );
}

#[test]
fn a_bad_duration_names_its_variable() {
    let e = config(&[("AUTH_ACCESS_TOKEN_TTL", "soon")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_ACCESS_TOKEN_TTL");
    assert!(e.to_string().starts_with("AUTH_ACCESS_TOKEN_TTL: "), "{e}");
}

#[test]
fn a_sub_second_token_lifetime_is_refused() {
    let e = config(&[("AUTH_REFRESH_TOKEN_TTL", "500ms")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_REFRESH_TOKEN_TTL");
}

#[test]
fn numbers_out_of_range_are_refused() {
    let e = config(&[("AUTH_DB_MAX_CONNECTIONS", "0")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_DB_MAX_CONNECTIONS");
    let e = config(&[("AUTH_ARGON2_MEMORY_KIB", "lots")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_ARGON2_MEMORY_KIB");
    for feed in ["AUTH_FEED_BUFFER", "AUTH_FEED_MAX_SUBSCRIBERS"] {
        let e = config(&[(feed, "0")]).unwrap_err();
        assert_eq!(e.variable, feed);
    }
    let e = config(&[("AUTH_FEED_HEARTBEAT", "0s")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_FEED_HEARTBEAT");
}

#[test]
fn keepalive_settings_are_whole_seconds_within_the_kernels_bounds() {
    let c = config(&[]).unwrap();
    let limits = c.transport.grpc_connection;
    assert_eq!(limits.keepalive_interval, Duration::from_secs(30));
    assert_eq!(limits.keepalive_timeout, Duration::from_secs(10));
    let c = config(&[
        ("AUTH_GRPC_KEEPALIVE_INTERVAL", "1500ms"),
        ("AUTH_GRPC_KEEPALIVE_TIMEOUT", "9h 6m 7s"),
    ])
    .unwrap();
    let limits = c.transport.grpc_connection;
    assert_eq!(limits.keepalive_interval, Duration::from_secs(2));
    assert_eq!(limits.keepalive_timeout, Duration::from_secs(32_767));
    for (name, value) in [
        ("AUTH_GRPC_KEEPALIVE_INTERVAL", "0s"),
        ("AUTH_GRPC_KEEPALIVE_INTERVAL", "32768s"),
        ("AUTH_GRPC_KEEPALIVE_TIMEOUT", "1d"),
    ] {
        let e = config(&[(name, value)]).unwrap_err();
        assert_eq!(e.variable, name, "{value}");
    }
}

#[test]
fn unknown_database_schemes_are_refused() {
    let e = config(&[("AUTH_DATABASE_URL", "mysql://x")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_DATABASE_URL");
}

#[test]
fn the_cleanup_schedule_is_validated() {
    assert_eq!(
        config(&[]).unwrap().sessions.cleanup.schedule,
        "0 0 0 * * *"
    );
    let five = config(&[("AUTH_CLEANUP_SCHEDULE", "30 3 * * *")]).unwrap();
    assert_eq!(five.sessions.cleanup.schedule, "0 30 3 * * *");
    for bad in ["every night", "61 * * * *", "* * * *"] {
        let e = config(&[("AUTH_CLEANUP_SCHEDULE", bad)]).unwrap_err();
        assert_eq!(e.variable, "AUTH_CLEANUP_SCHEDULE", "{bad}");
    }
}

#[test]
fn absurd_token_lifetimes_are_refused() {
    let e = config(&[("AUTH_REFRESH_TOKEN_TTL", "20000d")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_REFRESH_TOKEN_TTL");
}

#[test]
fn the_longest_access_token_lifetime_defaults_to_the_ttl_and_never_falls_below_it() {
    let c = config(&[("AUTH_ACCESS_TOKEN_TTL", "5m")]).unwrap();
    assert_eq!(
        c.sessions.access_token_max_lifetime,
        Duration::from_secs(300)
    );
    let c = config(&[("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "1h")]).unwrap();
    assert_eq!(
        c.sessions.access_token_max_lifetime,
        Duration::from_secs(3600)
    );
    let e = config(&[
        ("AUTH_ACCESS_TOKEN_TTL", "15m"),
        ("AUTH_ACCESS_TOKEN_MAX_LIFETIME", "5m"),
    ])
    .unwrap_err();
    assert_eq!(e.variable, "AUTH_ACCESS_TOKEN_MAX_LIFETIME");
}

#[test]
fn the_password_minimum_is_never_below_eight_characters() {
    assert_eq!(config(&[]).unwrap().login.password_policy.min_chars, 15);
    let e = config(&[("AUTH_PASSWORD_MIN_CHARS", "7")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_PASSWORD_MIN_CHARS");
}

#[test]
fn the_former_forwarded_for_switch_means_one_trusted_proxy() {
    let c = config(&[]).unwrap();
    assert_eq!(c.transport.client_address, ClientAddressRule::default());
    let c = config(&[("AUTH_TRUST_FORWARDED_FOR", "true")]).unwrap();
    assert_eq!(c.transport.client_address.trusted_proxy_hops, 1);
    let c = config(&[
        ("AUTH_TRUST_FORWARDED_FOR", "true"),
        ("AUTH_TRUSTED_PROXY_HOPS", "2"),
    ])
    .unwrap();
    assert_eq!(c.transport.client_address.trusted_proxy_hops, 2);
}

#[test]
fn a_bad_listen_address_is_refused() {
    let e = config(&[("AUTH_LISTEN", "localhost")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_LISTEN");
}

#[test]
fn cors_origins_are_exact_origins_never_wildcards() {
    let c = config(&[(
        "AUTH_CORS_ORIGINS",
        "https://app.example.com, http://localhost:3000",
    )])
    .unwrap();
    assert_eq!(
        c.transport.browser.cors_origins,
        ["https://app.example.com", "http://localhost:3000"]
    );
    for bad in [
        "*",
        "https://*.example.com",
        "app.example.com",
        "https://a.com/path",
    ] {
        let e = config(&[("AUTH_CORS_ORIGINS", bad)]).unwrap_err();
        assert_eq!(e.variable, "AUTH_CORS_ORIGINS", "{bad} was accepted");
    }
}

#[test]
fn the_refresh_cookie_is_configurable_within_the_rules() {
    let c = config(&[]).unwrap();
    assert_eq!(
        c.transport.browser.refresh_cookie.name,
        "__Host-authd_refresh"
    );
    assert_eq!(
        c.transport.browser.refresh_cookie.same_site,
        SameSite::Strict
    );
    let c = config(&[
        ("AUTH_REFRESH_COOKIE_NAME", "rt"),
        ("AUTH_REFRESH_COOKIE_SAMESITE", "lax"),
    ])
    .unwrap();
    assert_eq!(c.transport.browser.refresh_cookie.name, "rt");
    assert_eq!(c.transport.browser.refresh_cookie.same_site, SameSite::Lax);
    for (variable, bad) in [
        ("AUTH_REFRESH_COOKIE_NAME", "a=b"),
        ("AUTH_REFRESH_COOKIE_NAME", "a b"),
        ("AUTH_REFRESH_COOKIE_SAMESITE", "sometimes"),
    ] {
        assert_eq!(config(&[(variable, bad)]).unwrap_err().variable, variable);
    }
}

#[test]
fn the_admin_service_is_off_unless_configured_and_client_identities_need_a_client_ca() {
    assert!(!config(&[]).unwrap().admin.enabled());
    let c = config(&[("AUTH_ADMIN_TOKEN_FILE", "/run/secrets/admin-tokens")]).unwrap();
    assert!(c.admin.enabled());
    let e = config(&[("AUTH_ADMIN_CLIENTS", "ops.internal")]).unwrap_err();
    assert_eq!(e.variable, "AUTH_ADMIN_CLIENTS");
    let c = config(&[
        ("AUTH_TLS_CERT_FILE", "/c.pem"),
        ("AUTH_TLS_KEY_FILE", "/k.pem"),
        ("AUTH_TLS_CLIENT_CA_FILE", "/ca.pem"),
        (
            "AUTH_ADMIN_CLIENTS",
            "ops.internal, spiffe://example.org/support",
        ),
    ])
    .unwrap();
    assert_eq!(
        c.admin.clients,
        ["ops.internal", "spiffe://example.org/support"]
    );
}
