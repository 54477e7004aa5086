//! Bus authenticity: only the api may issue commands.
//!
//! The api signs every command with an Ed25519 key only it holds; the signature covers the
//! event id, type, NATS subject, project, time and a SHA-256 of the data bytes exactly as sent
//! (they hold the principal and the request), never of a re-encoding of them. It travels as the
//! `ambientsig` CloudEvent extension (`ce-ambientsig` header). The reconciler verifies it against
//! the api's public keys (several, so keys can be rotated) and refuses anything else. NATS
//! permissions (deploy/) are the first fence; this is the second, and it also catches a
//! tampered stored message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The CloudEvent extension carrying the signature.
pub const SIGNATURE_EXTENSION: &str = "ambientsig";

/// Signing keys could not be read, or a signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key file is not a PEM Ed25519 key.
    #[error("not an Ed25519 PEM key: {0}")]
    Key(String),
    /// No signature on the command.
    #[error("command is not signed")]
    Missing,
    /// The signature is malformed or does not match any trusted key.
    #[error("command signature does not verify")]
    Invalid,
}

/// The fields a signature covers, in a fixed, unambiguous encoding.
pub struct SignedFields<'a> {
    /// Event id.
    pub id: &'a str,
    /// Event type.
    pub ty: &'a str,
    /// NATS subject the command was published on.
    pub subject: &'a str,
    /// Project.
    pub project: &'a str,
    /// Event time, RFC 3339.
    pub time: &'a str,
    /// The data bytes.
    pub data: &'a [u8],
}

impl SignedFields<'_> {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(b"ambient-command-v1\0");
        for part in [self.id, self.ty, self.subject, self.project, self.time] {
            // Length-prefix each field so that no two field lists encode alike.
            m.extend_from_slice(&(part.len() as u64).to_be_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m.extend_from_slice(&Sha256::digest(self.data));
        m
    }
}

/// The api's signing key.
pub struct CommandSigner(SigningKey);

impl CommandSigner {
    /// A fresh random key (tests, dev).
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from 32 secret bytes (deterministic; documentation examples and tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        SigningKey::from_pkcs8_pem(pem).map(Self).map_err(|e| SignatureError::Key(e.to_string()))
    }

    /// The key as PKCS#8 PEM (to write a key file).
    pub fn to_pem(&self) -> Result<String, SignatureError> {
        self.0.to_pkcs8_pem(Default::default()).map(|p| p.to_string()).map_err(|e| SignatureError::Key(e.to_string()))
    }

    /// The public key as SPKI PEM, for the verifiers.
    pub fn public_pem(&self) -> Result<String, SignatureError> {
        self.0.verifying_key().to_public_key_pem(Default::default()).map_err(|e| SignatureError::Key(e.to_string()))
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CommandVerifier {
        CommandVerifier(vec![self.0.verifying_key()])
    }

    /// Signs the fields; the result goes into the `ambientsig` extension.
    pub fn sign(&self, fields: &SignedFields<'_>) -> String {
        B64.encode(self.0.sign(&fields.message()).to_bytes())
    }
}

impl std::fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandSigner(<redacted>)")
    }
}

/// The set of api public keys a consumer trusts.
#[derive(Clone, Debug)]
pub struct CommandVerifier(Vec<VerifyingKey>);

impl CommandVerifier {
    /// Reads one or more SPKI PEM public keys (concatenated PEM blocks).
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let mut keys = Vec::new();
        let mut block = String::new();
        for line in pem.lines() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END") {
                keys.push(VerifyingKey::from_public_key_pem(&block).map_err(|e| SignatureError::Key(e.to_string()))?);
                block.clear();
            }
        }
        if keys.is_empty() {
            return Err(SignatureError::Key("no public key found".into()));
        }
        Ok(Self(keys))
    }

    /// Checks a signature (base64) over the fields against every trusted key.
    pub fn verify(&self, fields: &SignedFields<'_>, signature: Option<&str>) -> Result<(), SignatureError> {
        let sig = signature.ok_or(SignatureError::Missing)?;
        let bytes: [u8; 64] = B64.decode(sig).ok().and_then(|b| b.try_into().ok()).ok_or(SignatureError::Invalid)?;
        let sig = Signature::from_bytes(&bytes);
        let msg = fields.message();
        if self.0.iter().any(|k| k.verify(&msg, &sig).is_ok()) { Ok(()) } else { Err(SignatureError::Invalid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(data: &[u8]) -> SignedFields<'_> {
        SignedFields { id: "1", ty: "t", subject: "s", project: "p", time: "now", data }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let signer = CommandSigner::generate();
        let sig = signer.sign(&fields(b"{}"));
        let v = signer.verifier();
        v.verify(&fields(b"{}"), Some(&sig)).unwrap();
        assert!(v.verify(&fields(b"{ }"), Some(&sig)).is_err());
        assert!(matches!(v.verify(&fields(b"{}"), None), Err(SignatureError::Missing)));
        let other = CommandSigner::generate().verifier();
        assert!(other.verify(&fields(b"{}"), Some(&sig)).is_err());
    }

    #[test]
    fn pem_round_trip_and_rotation() {
        let a = CommandSigner::generate();
        let b = CommandSigner::generate();
        let a2 = CommandSigner::from_pem(&a.to_pem().unwrap()).unwrap();
        let both = format!("{}{}", a.public_pem().unwrap(), b.public_pem().unwrap());
        let v = CommandVerifier::from_pem(&both).unwrap();
        v.verify(&fields(b"x"), Some(&a2.sign(&fields(b"x")))).unwrap();
        v.verify(&fields(b"x"), Some(&b.sign(&fields(b"x")))).unwrap();
    }
}
