//! One-time access-key tokens that outlive their request.
//!
//! A key's token comes back from the reconciler sealed to a fresh reply key of the request that
//! created it. So that the token is never lost when the answer is not waited for (a 202, a
//! timeout, a crashed api replica, a retry landing on another replica), the reply key is parked
//! in the bucket [`BUCKET`] before the command is published, sealed to a key every api replica
//! derives from the signing key they share (so the bucket alone opens nothing). Whoever takes it
//! first (the waiting request, a retry of the same creation, or `GET /api/commands/{id}` by the
//! submitter) gets the token; taking deletes the entry with compare-and-set, so the token is
//! shown exactly once. Entries expire after [`TTL`].

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use events::results::{CommandResult, Outcome};
use events::sealing::{SealedBox, SealingSecretKey};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::hex;
use crate::errors::Cause;

/// Bucket of parked reply keys: `k.<command id>` → sealed reply key, `a.<alias>` → command id.
pub const BUCKET: &str = events::streams::api_buckets::PARKED_KEYS;
/// How long a token waits for its submitter.
pub const TTL: Duration = Duration::from_secs(30 * 60);
/// Derivation context of the parking key.
const CONTEXT: &str = "ambient-api parked reply keys v1";

/// A reply key and what finds it again.
pub struct Reply {
    /// The key the token comes back sealed to.
    pub key: SealingSecretKey,
    /// Names the creation independently of its command id: a retry of the same request (same
    /// user, project and key name) finds the parked token through it.
    pub alias: String,
}

impl Reply {
    /// A fresh reply key for `user`'s `request` (all of it: a retry asking for another role is
    /// another request) in `project`.
    pub fn new(user: &str, project: &str, request: &str) -> Self {
        let alias = hex(&Sha256::digest(format!("{user}\0{project}\0{request}").as_bytes()));
        Reply { key: SealingSecretKey::generate(), alias }
    }
}

/// The parked reply keys.
pub struct ParkedKeys {
    kv: kv::Store,
    sealer: SealingSecretKey,
}

fn id_key(id: Uuid) -> String {
    format!("k.{id}")
}

fn alias_key(alias: &str) -> String {
    format!("a.{alias}")
}

impl ParkedKeys {
    /// Opens the bucket (`replicas` copies); `shared_secret` is what every api replica holds
    /// (its signing key), so any replica can unseal a token another one parked.
    pub async fn open(js: &jetstream::Context, shared_secret: &[u8], replicas: usize) -> anyhow::Result<Self> {
        let kv = crate::buckets::ensure_bucket(js, BUCKET, TTL, replicas).await?;
        Ok(Self { kv, sealer: SealingSecretKey::derive(CONTEXT, shared_secret) })
    }

    /// Parks `reply` for command `id`.
    pub async fn park(&self, id: Uuid, reply: &Reply) -> Result<(), Cause> {
        let sealed = self.sealer.public_key().seal(reply.key.to_base64().as_bytes())?;
        self.kv.put(id_key(id), String::from(sealed).into_bytes().into()).await?;
        self.kv.put(alias_key(&reply.alias), id.to_string().into_bytes().into()).await?;
        Ok(())
    }

    /// The command whose token is parked under `alias`, if one is.
    pub async fn by_alias(&self, alias: &str) -> Result<Option<Uuid>, Cause> {
        let Some(v) = self.kv.get(alias_key(alias)).await? else { return Ok(None) };
        let Some(id) = std::str::from_utf8(&v).ok().and_then(|s| Uuid::parse_str(s).ok()) else { return Ok(None) };
        // The alias outlives a taken token: only a parked key counts.
        Ok(self.kv.get(id_key(id)).await?.map(|_| id))
    }

    /// The reply key parked for command `id` (left parked), to publish that command again.
    pub async fn reply_key(&self, id: Uuid) -> Option<SealingSecretKey> {
        let entry = self.kv.entry(id_key(id)).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let sealed = SealedBox::try_from(String::from_utf8(entry.value.to_vec()).ok()?).ok()?;
        SealingSecretKey::from_base64(std::str::from_utf8(&self.sealer.open(&sealed).ok()?).ok()?).ok()
    }

    /// Takes the token of command `id` out of its `result`: at most once across every caller
    /// and replica (`None` for everyone after the first, and when nothing was parked).
    pub async fn take(&self, id: Uuid, result: &CommandResult) -> Option<String> {
        let Outcome::Succeeded { sealed_token: Some(token), .. } = &result.outcome else { return None };
        let entry = self.kv.entry(id_key(id)).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        // Opened before it is taken: a replica that cannot open it (another signing key during a
        // rotation) leaves it for one that can.
        let sealed = SealedBox::try_from(String::from_utf8(entry.value.to_vec()).ok()?).ok()?;
        let reply = SealingSecretKey::from_base64(std::str::from_utf8(&self.sealer.open(&sealed).ok()?).ok()?).ok()?;
        let token = String::from_utf8(reply.open(token).ok()?).ok()?;
        // Whoever deletes this revision is the one who shows the token.
        self.kv.delete_expect_revision(id_key(id), Some(entry.revision)).await.ok()?;
        Some(token)
    }

    /// Drops what is parked for `id` (its creation failed: there is no token to show).
    pub async fn forget(&self, id: Uuid) {
        let _ = self.kv.delete(id_key(id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_name_user_project_and_key() {
        let a = Reply::new("alice", "p1", "ci").alias;
        assert_eq!(a, Reply::new("alice", "p1", "ci").alias);
        assert_ne!(a, Reply::new("bob", "p1", "ci").alias);
        assert_ne!(a, Reply::new("alice", "p2", "ci").alias);
        assert_ne!(a, Reply::new("alice", "p1", "cd").alias);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "a valid bucket key");
    }
}
