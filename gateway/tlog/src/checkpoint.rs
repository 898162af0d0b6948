//! Checkpoints of the access log in the C2SP `tlog-checkpoint` format, signed as C2SP signed
//! notes with an Ed25519 key.
//!
//! A checkpoint body is three lines — origin, tree size (decimal), base64 of the root hash —
//! each ending in a newline. The signed note appends a blank line and one signature line
//! `— <key name> <base64(key id ‖ signature)>` where the key id is the first four bytes of
//! `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)` (0x01 marks Ed25519).

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// Why a checkpoint or a log key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The key file does not hold the base64 of a 32-byte Ed25519 seed.
    #[error("the log key must be the base64 of a 32-byte Ed25519 seed")]
    BadKey,
    /// The key name is empty or has spaces, `+` or newlines.
    #[error("the log key name must be non-empty without spaces, '+' or newlines")]
    BadKeyName,
    /// The note is not a well-formed signed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// No signature by this key, or the signature does not verify.
    #[error("the checkpoint is not signed by log key {0}")]
    BadSignature(String),
}

/// A checkpoint: the tree size and root at some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// The RFC 9162 root hash of those leaves.
    pub root: [u8; 32],
}

impl Checkpoint {
    /// The checkpoint body (the signed text).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

/// The Ed25519 key that signs checkpoints.
pub struct LogKey {
    name: String,
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogKey({}, <redacted>)", self.name)
    }
}

impl LogKey {
    /// A key from the base64 of its 32-byte seed, named `name` in signatures.
    pub fn from_seed_base64(name: &str, seed: &str) -> Result<LogKey, CheckpointError> {
        check_name(name)?;
        let seed = B64
            .decode(seed.trim())
            .map_err(|_| CheckpointError::BadKey)?;
        if seed.len() != 32 {
            return Err(CheckpointError::BadKey);
        }
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| CheckpointError::BadKey)?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| CheckpointError::BadKey)?;
        Ok(LogKey {
            name: name.to_owned(),
            pair,
            seed,
        })
    }

    /// A 32-byte key for another purpose, derived from this key's seed with HMAC-SHA256 under
    /// `label`, so that one secret file serves the log without reusing the signing key.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.seed);
        let tag = aws_lc_rs::hmac::sign(&key, label);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The base64 of a fresh random seed, for a new key file.
    pub fn generate_seed_base64() -> Result<String, CheckpointError> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| CheckpointError::BadKey)?;
        Ok(B64.encode(seed))
    }

    /// The verifier key in the C2SP note format: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub fn verifier_key(&self) -> String {
        let public = self.pair.public_key().as_ref();
        let mut typed = vec![0x01];
        typed.extend_from_slice(public);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, public)),
            B64.encode(typed)
        )
    }

    /// Signs a checkpoint as a signed note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.pair.sign(body.as_bytes());
        let mut blob = key_id(&self.name, self.pair.public_key().as_ref()).to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(CheckpointError::BadKeyName);
    }
    Ok(())
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n\x01");
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Verifies a signed checkpoint note against a verifier key (`<name>+<hex id>+<base64>`) and
/// returns the checkpoint.
pub fn verify_note(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
    let mut parts = verifier_key.trim().splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(CheckpointError::Malformed(
            "verifier key is not name+id+key",
        ));
    };
    let typed = B64
        .decode(key_b64)
        .map_err(|_| CheckpointError::Malformed("verifier key is not base64"))?;
    let Some((&0x01, public)) = typed.split_first() else {
        return Err(CheckpointError::Malformed(
            "verifier key is not an Ed25519 key",
        ));
    };
    if hex::encode(key_id(name, public)) != id_hex {
        return Err(CheckpointError::Malformed(
            "verifier key id does not match its key",
        ));
    }
    let (body, signatures) = note.split_once("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before the signatures",
    ))?;
    let body = format!("{body}\n");
    let prefix = format!("\u{2014} {name} ");
    let mut verified = false;
    for line in signatures.lines() {
        let Some(sig_b64) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(blob) = B64.decode(sig_b64) else {
            continue;
        };
        if blob.len() != 4 + 64 || blob[..4] != key_id(name, public) {
            continue;
        }
        if UnparsedPublicKey::new(&ED25519, public)
            .verify(body.as_bytes(), &blob[4..])
            .is_ok()
        {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(CheckpointError::BadSignature(name.to_owned()));
    }
    parse_body(&body)
}

fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
    let mut lines = body.split('\n');
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or(CheckpointError::Malformed("no origin"))?;
    let size = lines
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(CheckpointError::Malformed("tree size is not a number"))?;
    let root: [u8; 32] = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or(CheckpointError::Malformed(
            "root is not the base64 of 32 bytes",
        ))?;
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LogKey {
        LogKey::from_seed_base64("certgate.test/log", &B64.encode([7u8; 32])).unwrap()
    }

    /// A checkpoint of the test log.
    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "certgate.test/log".into(),
            size: 42,
            root: [9u8; 32],
        }
    }

    #[test]
    fn signed_checkpoints_verify_and_round_trip() {
        let k = key();
        let cp = checkpoint();
        let note = k.sign(&cp);
        assert!(note.starts_with("certgate.test/log\n42\nCQkJ"), "{note}");
        assert!(note.contains("\n\n\u{2014} certgate.test/log "));
        assert_eq!(verify_note(&note, &k.verifier_key()).unwrap(), cp);
    }

    #[test]
    fn tampered_notes_and_other_keys_are_refused() {
        let k = key();
        let cp = checkpoint();
        let note = k.sign(&cp);
        let other = LogKey::from_seed_base64("certgate.test/log", &B64.encode([8u8; 32])).unwrap();
        assert!(verify_note(&note, &other.verifier_key()).is_err());
        for bad in [
            note.replace("\n42\n", "\n43\n"),
            note.replace("\n\n", "\n"),
            note.replacen('C', "D", 1),
            String::new(),
        ] {
            assert!(verify_note(&bad, &k.verifier_key()).is_err(), "{bad}");
        }
        assert_eq!(
            LogKey::from_seed_base64("bad name", &B64.encode([7u8; 32])).unwrap_err(),
            CheckpointError::BadKeyName
        );
        assert_eq!(
            LogKey::from_seed_base64("n", "c2hvcnQ=").unwrap_err(),
            CheckpointError::BadKey
        );
        assert!(!format!("{k:?}").contains("Bwc"));
    }
}
