//! gRPC-Web for browsers: which pages may call with credentials, and the cookie that carries
//! the refresh token.

use super::{
    ConfigError,
    vars::{Vars, error},
};

/// What browsers are offered.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// `AUTH_CORS_ORIGINS`: comma-separated origins (`https://app.example.com`) whose pages
    /// may call authd through gRPC-Web with credentials. Never a wildcard: the refresh cookie
    /// must not be offered to every site. Empty: same-origin only.
    pub cors_origins: Vec<String>,
    /// The HttpOnly cookie that carries the refresh token to browsers.
    pub refresh_cookie: CookieSettings,
}

/// How the refresh-token cookie is named and scoped. `HttpOnly`, `Secure` and `Path=/` are
/// not settings: a refresh token must never be readable by JavaScript or sent in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// `AUTH_REFRESH_COOKIE_NAME`: `__Host-authd_refresh` by default; the `__Host-` prefix
    /// makes browsers refuse it unless it is Secure, host-only and `Path=/`.
    pub name: String,
    /// `AUTH_REFRESH_COOKIE_SAMESITE`: `Strict` (the default), `Lax` or `None`.
    pub same_site: SameSite,
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with requests from the same site.
    Strict,
    /// Also sent on top-level navigations from other sites.
    Lax,
    /// Sent with cross-site requests too (needs `AUTH_CORS_ORIGINS` for the calling pages).
    None,
}

impl SameSite {
    /// The attribute's spelling in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

impl BrowserSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            cors_origins: vars
                .list("AUTH_CORS_ORIGINS")
                .map(cors_origin)
                .collect::<Result<_, _>>()?,
            refresh_cookie: CookieSettings {
                name: cookie_name(vars.raw("AUTH_REFRESH_COOKIE_NAME", "__Host-authd_refresh"))?,
                same_site: match vars
                    .raw("AUTH_REFRESH_COOKIE_SAMESITE", "Strict")
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "strict" => SameSite::Strict,
                    "lax" => SameSite::Lax,
                    "none" => SameSite::None,
                    _ => {
                        return Err(error(
                            "AUTH_REFRESH_COOKIE_SAMESITE",
                            "must be Strict, Lax or None",
                        ));
                    }
                },
            },
        })
    }
}

/// An exact origin, `scheme://host[:port]`, as browsers send it in `Origin`.
fn cors_origin(origin: &str) -> Result<String, ConfigError> {
    const VARIABLE: &str = "AUTH_CORS_ORIGINS";
    if origin.contains('*') {
        return Err(error(
            VARIABLE,
            "a wildcard would offer the refresh cookie to any site; list each origin",
        ));
    }
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            error(
                VARIABLE,
                format!("{origin:?} must start with https:// or http://"),
            )
        })?;
    let well_formed = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !well_formed {
        return Err(error(
            VARIABLE,
            format!("{origin:?} must be scheme://host[:port], with no path"),
        ));
    }
    Ok(origin.to_owned())
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(name: &str) -> Result<String, ConfigError> {
    let is_token_char = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(error(
            "AUTH_REFRESH_COOKIE_NAME",
            "must be a cookie name: letters, digits and !#$%&'*+-.^_`|~",
        ));
    }
    Ok(name.to_owned())
}
