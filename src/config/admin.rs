//! Who may call the AdminService: TLS client identities and a file of bearer-token hashes.
//! Neither set: the service is off.

use std::path::PathBuf;

use super::{
    ConfigError,
    vars::{Vars, error},
};

/// The AdminService's callers.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// `AUTH_ADMIN_CLIENTS`: comma-separated identities (a DNS name, or a URI such as a SPIFFE
    /// ID) of which a client certificate's subject alternative names must hold one. Needs
    /// `AUTH_TLS_CLIENT_CA_FILE`: only certificates of that CA are presented at all.
    pub clients: Vec<String>,
    /// `AUTH_ADMIN_TOKEN_FILE`: one SHA-256 (lower-case hex) of an admin bearer token per line;
    /// blank lines and `#` comments are ignored. Re-read when it changes, so tokens are added
    /// and retired without a restart.
    pub token_file: Option<PathBuf>,
}

impl AdminSettings {
    /// Whether the AdminService is served.
    pub fn enabled(&self) -> bool {
        !self.clients.is_empty() || self.token_file.is_some()
    }

    pub(super) fn parse(vars: &Vars, client_ca: bool) -> Result<Self, ConfigError> {
        let clients: Vec<String> = vars.list("AUTH_ADMIN_CLIENTS").map(str::to_owned).collect();
        if !clients.is_empty() && !client_ca {
            return Err(error(
                "AUTH_ADMIN_CLIENTS",
                "needs AUTH_TLS_CLIENT_CA_FILE: client certificates are only asked for with it",
            ));
        }
        if let Some(bad) = clients.iter().find(|c| c.chars().any(char::is_whitespace)) {
            return Err(error(
                "AUTH_ADMIN_CLIENTS",
                format!("{bad:?} is not a DNS name or URI"),
            ));
        }
        Ok(Self {
            clients,
            token_file: vars.path("AUTH_ADMIN_TOKEN_FILE"),
        })
    }
}
