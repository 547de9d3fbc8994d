//! Login input parsed at the edge: the domain only ever holds valid values.

use secrecy::{ExposeSecret, SecretString};

use super::AuthError;

/// Longest email accepted, in bytes (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;
/// Longest password accepted, in bytes: argon2 takes any length, but hashing megabytes on
/// request would be a cheap denial of service.
const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password a new user may get.
const MIN_NEW_PASSWORD_BYTES: usize = 8;

/// An email address, normalised (trimmed, lower-case) so lookups ignore case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims and lower-cases; refuses empty, over-long and obviously malformed addresses.
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let invalid = |problem| AuthError::InvalidArgument {
            field: "email",
            problem,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("must not be empty"));
        }
        // Measured after lower-casing, which can lengthen some characters: the stored form
        // must fit the column.
        let normalised = trimmed.to_lowercase();
        if trimmed.len() > MAX_EMAIL_BYTES || normalised.len() > MAX_EMAIL_BYTES {
            return Err(invalid("must be at most 254 bytes"));
        }
        let well_formed = matches!(trimmed.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'))
            && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(invalid("must look like name@domain"));
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as presented at login: 1 to 1024 bytes. `Debug` never prints it.
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    /// Refuses empty and over-long passwords.
    pub fn parse(raw: String) -> Result<Self, AuthError> {
        if raw.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "password",
                problem: "must not be empty",
            });
        }
        Self::bounded(raw)
    }

    /// A new user's password: 8 to 1024 bytes.
    pub fn parse_new(raw: String) -> Result<Self, AuthError> {
        if raw.len() < MIN_NEW_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument {
                field: "password",
                problem: "must be at least 8 bytes",
            });
        }
        Self::bounded(raw)
    }

    fn bounded(raw: String) -> Result<Self, AuthError> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument {
                field: "password",
                problem: "must be at most 1024 bytes",
            });
        }
        Ok(Self(raw.into()))
    }

    /// The password's bytes, for hashing only.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Alice@Example.COM\t").unwrap().as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn empty_long_and_malformed_emails_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@x.io",
            &long,
        ] {
            assert!(
                matches!(
                    Email::parse(bad),
                    Err(AuthError::InvalidArgument { field: "email", .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn an_email_of_exactly_254_bytes_is_accepted() {
        let email = format!("{}@example.com", "a".repeat(254 - "@example.com".len()));
        assert_eq!(email.len(), 254);
        assert!(Email::parse(&email).is_ok());
    }

    #[test]
    fn password_bounds_are_enforced() {
        assert!(Password::parse(String::new()).is_err());
        assert!(Password::parse("x".into()).is_ok());
        assert!(Password::parse("x".repeat(1024)).is_ok());
        assert!(Password::parse("x".repeat(1025)).is_err());
        assert!(Password::parse_new("x".repeat(7)).is_err());
        assert!(Password::parse_new("x".repeat(8)).is_ok());
        assert!(Password::parse_new("x".repeat(1025)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_a_normalised_email_or_an_invalid_argument(raw in ".*") {
            match Email::parse(&raw) {
                Ok(email) => {
                    proptest::prop_assert!(email.as_str().len() <= MAX_EMAIL_BYTES);
                    proptest::prop_assert_eq!(email.as_str(), raw.trim().to_lowercase());
                    proptest::prop_assert_eq!(email.as_str().matches('@').count(), 1);
                }
                Err(e) => {
                    let invalid_email = matches!(e, AuthError::InvalidArgument { field: "email", .. });
                    proptest::prop_assert!(invalid_email, "unexpected error {:?}", e);
                }
            }
        }

        #[test]
        fn a_password_is_accepted_exactly_when_its_length_is_in_bounds(raw in proptest::collection::vec(proptest::char::any(), 0..1100)) {
            let raw: String = raw.into_iter().collect();
            let in_bounds = (1..=MAX_PASSWORD_BYTES).contains(&raw.len());
            match Password::parse(raw) {
                Ok(_) => proptest::prop_assert!(in_bounds),
                Err(e) => {
                    proptest::prop_assert!(!in_bounds);
                    let invalid_password = matches!(e, AuthError::InvalidArgument { field: "password", .. });
                    proptest::prop_assert!(invalid_password, "unexpected error {:?}", e);
                }
            }
        }
    }

    #[test]
    fn debug_does_not_print_the_password() {
        let password = Password::parse("hunter2-secret".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
