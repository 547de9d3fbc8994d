//! Login input parsed at the edge: the domain only ever holds valid values.

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::{IsNormalized, UnicodeNormalization as _, is_nfkc_quick};

use super::AuthError;
use crate::config::PasswordPolicy;

/// Longest email accepted, in bytes (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;
/// Longest password accepted, in bytes: argon2 takes any length, but hashing megabytes on
/// request would be a cheap denial of service. 256 characters of any script fit.
const MAX_PASSWORD_BYTES: usize = 1024;
/// The rule a new password broke; its text names the rule, never the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRule {
    /// Fewer characters than the policy's minimum.
    #[error("password: must have at least {min_chars} characters")]
    TooShort {
        /// The policy's minimum.
        min_chars: usize,
    },
    /// More bytes than any password may have.
    #[error("password: must be at most 1024 bytes")]
    TooLong,
    /// On the list of common and breached passwords.
    #[error("password: is a commonly used or breached password; choose another")]
    Blocklisted,
}

impl PasswordRule {
    /// The ErrorInfo reason clients can switch on.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooShort { .. } => "PASSWORD_TOO_SHORT",
            Self::TooLong => "PASSWORD_TOO_LONG",
            Self::Blocklisted => "PASSWORD_BLOCKLISTED",
        }
    }
}

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

/// A password as presented: 1 to 1024 bytes. `Debug` never prints it. It is hashed in its
/// NFKC form, so that one typed in another normalisation (a keyboard that composes accents,
/// say) still matches.
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
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument {
                field: "password",
                problem: "must be at most 1024 bytes",
            });
        }
        Ok(Self(raw.into()))
    }

    /// A new password, held to `policy`.
    pub fn parse_new(raw: String, policy: &PasswordPolicy) -> Result<Self, AuthError> {
        if raw.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::PasswordRejected(PasswordRule::TooLong));
        }
        let password = Self(raw.into());
        let normalised = password.normalised();
        let normalised = normalised.as_ref().unwrap_or(&password.0).expose_secret();
        if normalised.chars().count() < policy.min_chars {
            return Err(AuthError::PasswordRejected(PasswordRule::TooShort {
                min_chars: policy.min_chars,
            }));
        }
        let lower = normalised.to_lowercase();
        if passwords::analyzer::is_common_password(normalised)
            || passwords::analyzer::is_common_password(&lower)
        {
            return Err(AuthError::PasswordRejected(PasswordRule::Blocklisted));
        }
        Ok(password)
    }

    /// The NFKC form, if it differs from the password as typed.
    fn normalised(&self) -> Option<SecretString> {
        let raw = self.0.expose_secret();
        match is_nfkc_quick(raw.chars()) {
            IsNormalized::Yes => None,
            _ => {
                let normalised: String = raw.nfkc().collect();
                (normalised != *raw).then(|| normalised.into())
            }
        }
    }

    /// The bytes to hash: the NFKC form, and the form as typed if that differs (only for
    /// hashes made before passwords were normalised).
    pub(crate) fn forms(&self) -> PasswordForms {
        match self.normalised() {
            Some(normalised) => PasswordForms {
                normalised,
                as_typed: Some(self.0.clone()),
            },
            None => PasswordForms {
                normalised: self.0.clone(),
                as_typed: None,
            },
        }
    }
}

/// A password's forms to hash or verify; see [`Password::forms`].
pub(crate) struct PasswordForms {
    normalised: SecretString,
    as_typed: Option<SecretString>,
}

impl PasswordForms {
    /// The NFKC form, which every new hash is made from.
    pub(crate) fn normalised(&self) -> &[u8] {
        self.normalised.expose_secret().as_bytes()
    }

    /// The form as typed, when it differs from the NFKC form.
    pub(crate) fn as_typed(&self) -> Option<&[u8]> {
        self.as_typed.as_ref().map(|p| p.expose_secret().as_bytes())
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
    }

    fn rule(password: &str, min_chars: usize) -> Option<PasswordRule> {
        match Password::parse_new(password.into(), &PasswordPolicy { min_chars }) {
            Ok(_) => None,
            Err(AuthError::PasswordRejected(rule)) => Some(rule),
            Err(other) => panic!("{password:?}: {other:?}"),
        }
    }

    #[test]
    fn new_passwords_follow_the_policy_and_name_the_rule_they_break() {
        let too_short = Some(PasswordRule::TooShort { min_chars: 15 });
        for short in ["password", "12345678", "aaaaaaaa", "fourteen chars"] {
            assert_eq!(rule(short, 15), too_short, "{short:?}");
        }
        // Counted in characters, not bytes: two emoji are 8 bytes, 2 characters.
        assert_eq!(
            rule("🔑🔒", 8),
            Some(PasswordRule::TooShort { min_chars: 8 })
        );
        assert_eq!(rule(&"é".repeat(15), 15), None, "30 bytes, 15 characters");
        for common in ["passwordpassword", "1234567890qwerty", "PasswordPassword"] {
            assert_eq!(
                rule(common, 15),
                Some(PasswordRule::Blocklisted),
                "{common:?}"
            );
        }
        assert_eq!(rule("kX9#mQ2vL!pR7wZ", 15), None, "15 random characters");
        assert_eq!(rule(&"x".repeat(1025), 15), Some(PasswordRule::TooLong));
        let longest = format!("{}abcd", "abcdefghij".repeat(102));
        assert_eq!(rule(&longest, 15), None, "1024 bytes, nothing truncated");
    }

    #[test]
    fn the_forms_to_hash_are_nfkc_and_as_typed_only_when_they_differ() {
        let ascii = Password::parse("plain ascii passphrase".into()).unwrap();
        assert!(ascii.forms().as_typed().is_none());
        let nfc = "caf\u{e9} au lait, s'il vous pla\u{ee}t";
        let nfd = "cafe\u{301} au lait, s'il vous plai\u{302}t";
        let from_nfd = Password::parse(nfd.into()).unwrap().forms();
        let from_nfc = Password::parse(nfc.into()).unwrap().forms();
        assert_eq!(from_nfd.normalised(), from_nfc.normalised());
        assert_eq!(from_nfd.as_typed(), Some(nfd.as_bytes()));
        assert!(from_nfc.as_typed().is_none());
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
