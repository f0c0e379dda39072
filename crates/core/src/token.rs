//! API tokens: only their SHA-256 digests are stored in the home.
//!
//! Tokens are 160 random bits, so a plain (unsalted) SHA-256 is enough: there is nothing to
//! guess from the digest, unlike a password.

use sha2::{Digest, Sha256};

use crate::model::{Home, User};

/// The prefix of every capstan token, so secret scanners can recognise them.
pub const TOKEN_PREFIX: &str = "cap_";

/// Makes a token from 20 random bytes (the caller brings the randomness).
pub fn token_from_bytes(bytes: &[u8; 20]) -> String {
    let mut s = String::from(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The digest stored in `users.toml`.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Home {
    /// The user a bearer token belongs to.
    pub fn user_for_token(&self, token: &str) -> Option<&User> {
        let hash = hash_token(token.trim());
        self.users
            .values()
            .find(|u| u.tokens.iter().any(|t| t.sha256 == hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // printf 'abc' | sha256sum
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = token_from_bytes(&[0xab; 20]);
        assert!(t.starts_with("cap_abab") && t.len() == 44);
    }
}
