//! The cluster token check, shared by both servers' internal endpoints.

/// Constant-time comparison, so response times do not leak the token byte
/// by byte.
pub fn token_matches(expected: &str, given: &[u8]) -> bool {
    let expected = expected.as_bytes();
    expected.len() == given.len()
        && expected
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn token_comparison() {
        assert!(token_matches("secret", b"secret"));
        assert!(!token_matches("secret", b"secreT"));
        assert!(!token_matches("secret", b"secret2"));
        assert!(!token_matches("secret", b""));
    }
}
