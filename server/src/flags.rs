//! Value parsers for the flags of both binaries. A value the server cannot
//! run with (no in-sync counter required, a zero interval, no room for one
//! connection) is refused at start-up with the flag's name, never raised
//! quietly to something that works: an operator who typed 0 meant
//! something, and should learn it does not exist.

use std::time::Duration;

/// A count that must be at least 1 (`--min-insync`, `--max-connections`, ...).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a whole number: {e}"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// Like [`at_least_one`], for the `u32` flags (`--dead-after`, ...).
pub fn at_least_one_u32(s: &str) -> Result<u32, String> {
    let n = at_least_one(s)?;
    u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX))
}

/// A duration with units (`500ms`, `2s`, `1m`) that must be longer than 0.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than 0 (write it with a unit: 500ms, 2s, 1m)".into());
    }
    Ok(d)
}

/// The base URL of a tally process (`--advertise`, `--peers`,
/// `--coordinator`): `http://` or `https://`, a host, maybe a port, and
/// nothing after it. Returned without a trailing slash, so two spellings of
/// one URL compare equal.
pub fn base_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err("an empty URL".into());
    }
    let uri: axum::http::Uri = trimmed
        .parse()
        .map_err(|e| format!("{trimmed:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{trimmed:?} is not an http:// or https:// URL (write it as http://host:port)"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{trimmed:?} names no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "{trimmed:?} has a path: give the base URL only (http://host:port)"
        ));
    }
    Ok(trimmed.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_with_a_host_and_no_path() {
        for (given, want) in [
            ("http://c1:8080", "http://c1:8080"),
            ("http://c1:8080/", "http://c1:8080"),
            (" https://tally.example ", "https://tally.example"),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ] {
            assert_eq!(base_url(given).as_deref(), Ok(want), "{given}");
        }
        for (given, said) in [
            ("", "empty"),
            ("c1:8080", "http://"),
            ("ftp://c1", "http://"),
            ("http://", "not a URL"),
            ("http://c1:8080/api", "has a path"),
            ("http://c1:8080/?x=1", "has a path"),
            ("http://c 1:8080", "not a URL"),
        ] {
            let err = base_url(given).expect_err(given);
            assert!(err.contains(said), "{given}: {err}");
        }
    }

    #[test]
    fn zero_and_garbage_are_refused_and_the_rest_pass() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("-1").is_err());
        assert!(at_least_one("two").is_err());
        assert_eq!(at_least_one_u32("5"), Ok(5));
        assert!(at_least_one_u32("0").is_err());
        assert!(at_least_one_u32("99999999999").is_err());
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("10").is_err());
    }
}
