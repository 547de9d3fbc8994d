//! Reading `AUTH_*` variables: typed accessors whose errors name the variable at fault.

use std::{collections::HashMap, path::PathBuf, str::FromStr, time::Duration};

use super::ConfigError;

/// The `AUTH_*` variables, with typed accessors that name the variable on error.
pub(super) struct Vars(HashMap<String, String>);

impl Vars {
    /// Keeps the `AUTH_*` pairs; every other variable belongs to someone else.
    pub(super) fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            vars.into_iter()
                .filter(|(k, _)| k.starts_with("AUTH_"))
                .collect(),
        )
    }

    /// The value as given, if the variable is set.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value as a path, if the variable is set.
    pub(super) fn path(&self, name: &str) -> Option<PathBuf> {
        self.get(name).map(|v| PathBuf::from(v.trim()))
    }

    /// The non-empty items of a comma-separated list.
    pub(super) fn list<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> {
        self.raw(name, "")
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
    }

    pub(super) fn raw<'a>(&'a self, name: &'static str, default: &'a str) -> &'a str {
        self.0.get(name).map_or(default, |v| v.trim())
    }

    pub(super) fn text(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.raw(name, default);
        if value.is_empty() {
            return Err(error(name, "must not be empty"));
        }
        Ok(value.to_owned())
    }

    pub(super) fn parsed<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.raw(name, default)
            .parse()
            .map_err(|e| error(name, format!("{e}")))
    }

    pub(super) fn number<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        let value = match self.0.get(name) {
            None => default,
            Some(v) => v.trim().parse().map_err(|e| error(name, format!("{e}")))?,
        };
        if !range.contains(&value) {
            return Err(error(
                name,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(value)
    }

    pub(super) fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(_) => Err(error(name, "must be true or false")),
        }
    }

    pub(super) fn duration_allowing_zero(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(self.raw(name, default))
            .map_err(|e| error(name, format!("{e} (write durations like 15m, 7d, 500ms)")))
    }

    pub(super) fn duration(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration_allowing_zero(name, default)?;
        if value.is_zero() {
            return Err(error(name, "must be longer than zero"));
        }
        Ok(value)
    }
}

/// The process environment, after `.env` (if present) has been read into it. A missing `.env`
/// is normal; a malformed one is reported by the values it leaves unset.
pub(super) fn environment() -> std::env::Vars {
    let _ = dotenvy::dotenv();
    std::env::vars()
}

/// A problem with `variable`'s value.
pub(super) fn error(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}
