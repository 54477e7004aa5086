//! Secrets on the bus are sealed to a key held only by their receiver.
//!
//! Sealed boxes (X25519 + XSalsa20-Poly1305, libsodium's `crypto_box_seal`, from the RustCrypto
//! `crypto_box` crate): anyone with the receiver's public key can seal; only the holder of the
//! secret key can open. Runner credentials going to the reconciler are sealed to the
//! reconciler's key; an access-key token coming back is sealed to an ephemeral key the
//! requesting api process made for that one request.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A key or box was not valid base64 of the right length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The box was not sealed to this key, or was tampered with.
    #[error("sealed box cannot be opened with this key")]
    Open,
    /// Sealing failed (the cipher refused the input).
    #[error("cannot seal: {0}")]
    Seal(String),
}

/// A public key to seal to (32 bytes, base64 in JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct SealingPublicKey(crypto_box::PublicKey);

impl SealingPublicKey {
    /// Parses base64.
    pub fn from_base64(s: &str) -> Result<Self, SealError> {
        let bytes: [u8; 32] =
            B64.decode(s.trim()).ok().and_then(|b| b.try_into().ok()).ok_or(SealError::Malformed("public key"))?;
        Ok(Self(crypto_box::PublicKey::from(bytes)))
    }

    /// Seals `plaintext` so that only the secret key's holder can read it.
    pub fn seal(&self, plaintext: &[u8]) -> Result<SealedBox, SealError> {
        let mut rng = crypto_box::aead::OsRng;
        self.0.seal(&mut rng, plaintext).map(SealedBox).map_err(|e| SealError::Seal(e.to_string()))
    }
}

impl fmt::Debug for SealingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingPublicKey({})", String::from(self.clone()))
    }
}

impl From<SealingPublicKey> for String {
    fn from(k: SealingPublicKey) -> String {
        B64.encode(k.0.as_bytes())
    }
}

impl TryFrom<String> for SealingPublicKey {
    type Error = SealError;
    fn try_from(s: String) -> Result<Self, SealError> {
        Self::from_base64(&s)
    }
}

/// A secret key that opens sealed boxes. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SealingSecretKey(crypto_box::SecretKey);

impl SealingSecretKey {
    /// A fresh random key (e.g. one per key-create request).
    pub fn generate() -> Self {
        Self(crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng))
    }

    /// Parses base64 of the 32-byte secret (the format of the reconciler's key file).
    pub fn from_base64(s: &str) -> Result<Self, SealError> {
        let bytes: [u8; 32] =
            B64.decode(s.trim()).ok().and_then(|b| b.try_into().ok()).ok_or(SealError::Malformed("secret key"))?;
        Ok(Self(crypto_box::SecretKey::from(bytes)))
    }

    /// A key derived from a secret several processes share (e.g. the api replicas' signing
    /// key), distinct per `context`: each of them derives the same key, nobody without the
    /// secret can.
    pub fn derive(context: &str, secret: &[u8]) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update((context.len() as u64).to_be_bytes());
        h.update(context.as_bytes());
        h.update(secret);
        let bytes: [u8; 32] = h.finalize().into();
        Self(crypto_box::SecretKey::from(bytes))
    }

    /// Base64 of the secret, for writing a key file.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> SealingPublicKey {
        SealingPublicKey(self.0.public_key())
    }

    /// Opens a box sealed to this key.
    pub fn open(&self, sealed: &SealedBox) -> Result<Vec<u8>, SealError> {
        self.0.unseal(&sealed.0).map_err(|_| SealError::Open)
    }
}

impl fmt::Debug for SealingSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingSecretKey(<redacted>)")
    }
}

/// Ciphertext of a sealed box (base64 in JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct SealedBox(Vec<u8>);

impl SealedBox {
    /// Raw ciphertext bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBox({} bytes)", self.0.len())
    }
}

impl From<SealedBox> for String {
    fn from(b: SealedBox) -> String {
        B64.encode(b.0)
    }
}

impl TryFrom<String> for SealedBox {
    type Error = SealError;
    fn try_from(s: String) -> Result<Self, SealError> {
        // 48 bytes = ephemeral public key + MAC: the smallest possible sealed box.
        let bytes = B64.decode(s.trim()).map_err(|_| SealError::Malformed("sealed box"))?;
        if bytes.len() < 48 {
            return Err(SealError::Malformed("sealed box"));
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_agree_per_secret_and_context_only() {
        let a = SealingSecretKey::derive("parked", b"secret");
        let b = SealingSecretKey::derive("parked", b"secret");
        let sealed = a.public_key().seal(b"x").unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"x");
        assert!(SealingSecretKey::derive("other", b"secret").open(&sealed).is_err());
        assert!(SealingSecretKey::derive("parked", b"secret2").open(&sealed).is_err());
    }

    #[test]
    fn seal_and_open() {
        let sk = SealingSecretKey::generate();
        let sealed = sk.public_key().seal(b"s3cret-token").unwrap();
        assert!(!sealed.as_bytes().windows(12).any(|w| w == b"s3cret-token"));
        assert_eq!(sk.open(&sealed).unwrap(), b"s3cret-token");
        let other = SealingSecretKey::generate();
        assert!(other.open(&sealed).is_err());
        let json = serde_json::to_string(&sealed).unwrap();
        let back: SealedBox = serde_json::from_str(&json).unwrap();
        assert_eq!(sk.open(&back).unwrap(), b"s3cret-token");
        let restored = SealingSecretKey::from_base64(&sk.to_base64()).unwrap();
        assert_eq!(restored.open(&sealed).unwrap(), b"s3cret-token");
        assert!(!format!("{sk:?}").contains(&sk.to_base64()));
    }

    #[test]
    fn tampered_box_is_refused() {
        let sk = SealingSecretKey::generate();
        let mut sealed = sk.public_key().seal(b"x").unwrap();
        let last = sealed.0.len() - 1;
        sealed.0[last] ^= 1;
        assert!(sk.open(&sealed).is_err());
    }
}
