//! The end user's address for login throttling: the Login's `client` field, else the
//! `x-forwarded-for` entry written by the outermost trusted proxy, else (if asked) the peer.

use std::net::{IpAddr, SocketAddr};

use tonic::metadata::MetadataMap;

use crate::{auth::AuthError, config::ClientAddressRule};

/// Longest `client.user_agent` accepted, in bytes.
const MAX_USER_AGENT_BYTES: usize = 1024;

/// The address of a Login's `client` field: `None` when empty, INVALID_ARGUMENT when it is
/// not a bare IPv4 or IPv6 address.
pub(super) fn stated_address(address: &str) -> Result<Option<IpAddr>, AuthError> {
    if address.is_empty() {
        return Ok(None);
    }
    address
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| AuthError::InvalidArgument {
            field: "client.address",
            problem: "must be an IPv4 or IPv6 address without a port",
        })
}

/// A Login's `client.user_agent`: `None` when empty, INVALID_ARGUMENT when over-long.
pub(super) fn user_agent(user_agent: String) -> Result<Option<String>, AuthError> {
    if user_agent.len() > MAX_USER_AGENT_BYTES {
        return Err(AuthError::InvalidArgument {
            field: "client.user_agent",
            problem: "must be at most 1024 bytes",
        });
    }
    Ok((!user_agent.is_empty()).then_some(user_agent))
}

/// The address when the Login stated none: from `x-forwarded-for` behind trusted proxies,
/// else the peer's if `rule` says so, else none.
pub(super) fn unstated_address(
    rule: ClientAddressRule,
    metadata: &MetadataMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    let forwarded = (rule.trusted_proxy_hops > 0)
        .then(|| {
            let values = metadata
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok());
            forwarded_for(values, rule.trusted_proxy_hops)
        })
        .flatten();
    forwarded.or_else(|| peer.filter(|_| rule.throttle_peer).map(|peer| peer.ip()))
}

/// The entry `hops` from the right of every `x-forwarded-for` value joined in order (each
/// proxy appends what it saw, so only the last `hops` entries were written by trusted ones),
/// or the leftmost if there are fewer. An entry that is not an address yields none.
fn forwarded_for<'a>(values: impl Iterator<Item = &'a str>, hops: usize) -> Option<IpAddr> {
    let entries: Vec<&str> = values
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let index = entries.len().saturating_sub(hops);
    let entry = entries.get(index)?;
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|with_port| with_port.ip()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(address: &str) -> Option<IpAddr> {
        Some(address.parse().unwrap())
    }

    #[test]
    fn the_entry_written_by_the_outermost_trusted_proxy_counts() {
        let spoofed = ["6.6.6.6, 203.0.113.7"].into_iter();
        assert_eq!(forwarded_for(spoofed, 1), ip("203.0.113.7"));
        let two_hops = ["6.6.6.6, 203.0.113.7", "10.0.0.2"].into_iter();
        assert_eq!(forwarded_for(two_hops, 2), ip("203.0.113.7"));
        let fewer = ["203.0.113.7"].into_iter();
        assert_eq!(forwarded_for(fewer, 3), ip("203.0.113.7"));
        let with_ports = ["[2001:db8::1]:443, 192.0.2.1:8080"].into_iter();
        assert_eq!(forwarded_for(with_ports, 1), ip("192.0.2.1"));
        assert_eq!(forwarded_for(["unknown"].into_iter(), 1), None);
        assert_eq!(forwarded_for(std::iter::empty(), 1), None);
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored_and_the_peer_only_counts_if_asked() {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        let peer = Some("10.0.0.1:5000".parse().unwrap());
        let rule = ClientAddressRule::default();
        assert_eq!(unstated_address(rule, &metadata, peer), None);
        let peer_rule = ClientAddressRule {
            throttle_peer: true,
            ..rule
        };
        assert_eq!(unstated_address(peer_rule, &metadata, peer), ip("10.0.0.1"));
        let proxied = ClientAddressRule {
            trusted_proxy_hops: 1,
            ..rule
        };
        assert_eq!(
            unstated_address(proxied, &metadata, peer),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_stated_address_must_be_a_bare_address() {
        assert_eq!(stated_address("").unwrap(), None);
        assert_eq!(stated_address("2001:db8::7").unwrap(), ip("2001:db8::7"));
        for bad in ["203.0.113.7:443", "example.com", "1.2.3"] {
            assert!(
                matches!(
                    stated_address(bad),
                    Err(AuthError::InvalidArgument {
                        field: "client.address",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(user_agent("x".repeat(1025)).is_err());
        assert_eq!(user_agent(String::new()).unwrap(), None);
    }
}
