//! Password rules (control 9.2.4) and hashing (control 10.1.1).
//!
//! The rules follow NIST SP 800-63B: at least 8 characters, long passphrases allowed
//! (up to 256), no composition rules, and a shipped list of common passwords refused.
//! Hashes are argon2id with at least OWASP's parameters (m = 19456 KiB, t = 2, p = 1);
//! the parameters live in the PHC string, so stronger settings apply to new hashes
//! while old ones keep verifying.

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Fewest characters a password may have.
pub const MIN_CHARS: usize = 8;
/// Most characters a password may have (bounds the hashing work per request).
pub const MAX_CHARS: usize = 256;
/// argon2id memory cost in KiB.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// argon2id passes.
pub const ARGON2_ITERATIONS: u32 = 2;
/// argon2id lanes.
pub const ARGON2_PARALLELISM: u32 = 1;

/// Why a password was refused. The message is shown to the user as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRejected {
    #[error("password must have at least {MIN_CHARS} characters")]
    TooShort,
    #[error("password must have at most {MAX_CHARS} characters")]
    TooLong,
    #[error("password is on the list of commonly used passwords; choose another")]
    Common,
    #[error("password must not be the email address")]
    SameAsEmail,
}

fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| include_str!("common-passwords.txt").lines().collect())
}

/// Checks `password` against every rule. Characters are Unicode scalar values, so a
/// Japanese passphrase counts its characters, not its bytes.
pub fn check(password: &str, email: &str) -> Result<(), PasswordRejected> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(PasswordRejected::TooShort);
    }
    if chars > MAX_CHARS {
        return Err(PasswordRejected::TooLong);
    }
    let lowered = password.to_lowercase();
    if common_passwords().contains(lowered.as_str()) {
        return Err(PasswordRejected::Common);
    }
    if !email.is_empty() && lowered == email.to_lowercase() {
        return Err(PasswordRejected::SameAsEmail);
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`.
/// CPU-heavy (tens of milliseconds): call it from a blocking task.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| argon2::password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&salt)?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `stored` (parameters read from it).
/// CPU-heavy: call it from a blocking task.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a random password, verified against when the user does not exist,
/// so that a sign-in for an unknown email costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = [0u8; 16];
        let _ = getrandom::fill(&mut random);
        hash(&hex::encode(random)).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // control 9.2.4: one test per rule
    #[test]
    fn control_9_2_4_passwords_shorter_than_eight_characters_are_refused() {
        assert_eq!(check("seven77", ""), Err(PasswordRejected::TooShort));
        assert_eq!(check("", ""), Err(PasswordRejected::TooShort));
        // characters, not bytes: eight Japanese characters are enough
        assert_eq!(check("議事録を安全に保存", ""), Ok(()));
        assert_eq!(check("議事録を安全", ""), Err(PasswordRejected::TooShort));
    }

    #[test]
    fn control_9_2_4_long_passphrases_are_allowed_up_to_256_characters() {
        let long = "correct horse battery staple ".repeat(8);
        assert!(long.chars().count() >= 64);
        assert_eq!(check(&long[..200], ""), Ok(()));
        assert_eq!(check(&"x".repeat(256), ""), Ok(()));
        assert_eq!(check(&"x".repeat(257), ""), Err(PasswordRejected::TooLong));
    }

    #[test]
    fn control_9_2_4_no_composition_rules() {
        // all lowercase letters, no digits, no symbols: fine when long and uncommon
        assert_eq!(check("minutesofthemeeting", ""), Ok(()));
        assert_eq!(check("8491023755", ""), Ok(()));
    }

    #[test]
    fn control_9_2_4_common_passwords_are_refused_in_any_case() {
        for common in ["password", "12345678", "Password1", "QWERTYUIOP"] {
            assert_eq!(check(common, ""), Err(PasswordRejected::Common), "{common}");
        }
        assert!(
            common_passwords().len() > 1000,
            "the shipped list is loaded"
        );
    }

    #[test]
    fn control_9_2_4_the_email_address_is_not_a_password() {
        assert_eq!(
            check("Ana@Example.com", "ana@example.com"),
            Err(PasswordRejected::SameAsEmail)
        );
    }

    // control 10.1.1: argon2id with at least OWASP's parameters, read from the hash
    #[test]
    fn control_10_1_1_hashes_are_argon2id_with_the_promised_parameters() {
        let stored = hash("minutesofthemeeting").expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("minutesofthemeeting", &stored));
        assert!(!verify("minutesofthemeetinG", &stored));
        assert!(!verify("minutesofthemeeting", "not a hash"));
        // two hashes of one password differ (random salt)
        assert_ne!(stored, hash("minutesofthemeeting").expect("hash"));
    }
}
