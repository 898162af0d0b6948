//! Keys and key encryption: the private seal keys certgate signs with ([`SealKey`], P-256 for
//! `ES256` or SM2 for `SM2SM3`), the public keys it verifies with ([`PublicKey`]), and the
//! key-encryption key ([`Kek`]) that protects private keys at rest with AES-256-GCM.
//!
//! SM2 goes through OpenSSL 3, which does not let the `openssl` crate set the distinguishing
//! id. So certgate computes `Z_A` itself with the GM/T 0009 default id `1234567812345678`,
//! hashes `e = SM3(Z_A ‖ M)` and has OpenSSL sign or verify `e` as a prehashed digest. The
//! result interoperates with `openssl pkeyutl -digest sm3 -pkeyopt distid:1234567812345678`
//! and with other GM/T verifiers.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::error::ErrorStack;
use openssl::hash::{MessageDigest, hash};
use openssl::nid::Nid;
use openssl::pkey::{Id, KeyType, PKey, PKeyRef, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use openssl::x509::X509Ref;
use zeroize::Zeroizing;

use crate::jws::{JwsAlg, JwsSigner, JwsVerifier, SigningFailed};

/// The SM2 distinguishing id every GM/T verifier assumes when none is agreed (GM/T 0009).
const SM2_DEFAULT_ID: &[u8] = b"1234567812345678";

/// Length in bytes of a P-256 or SM2 field element, scalar or coordinate.
const FIELD_LEN: usize = 32;

/// Format version of [`Kek::encrypt`] blobs, so the format can change without guessing.
const KEK_BLOB_VERSION: u8 = 1;
/// AES-GCM nonce length.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// Everything that can go wrong with keys and key encryption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// OpenSSL failed for a reason that is not the caller's input (allocation, missing
    /// algorithm, …); carries OpenSSL's error text.
    #[error("openssl: {0}")]
    Openssl(String),
    /// The key bytes could not be decoded or do not form a usable key; never carries key
    /// material.
    #[error("bad key: {0}")]
    BadKey(String),
    /// The key is well formed but is neither P-256 nor SM2.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// The key is of a different algorithm than the one asked for.
    #[error("key does not match the requested algorithm")]
    WrongAlgorithm,
    /// Decryption failed: wrong key-encryption key, wrong associated data, or a damaged or
    /// tampered blob. Deliberately says no more, so it cannot serve as an oracle.
    #[error("decryption failed")]
    Decrypt,
    /// The caller asked for something that cannot be done (an empty seal name, a validity
    /// period that ends before it starts, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The system's random generator gave no bytes.
    #[error("the random generator failed")]
    Random,
}

impl From<ErrorStack> for CryptoError {
    fn from(e: ErrorStack) -> Self {
        CryptoError::Openssl(e.to_string())
    }
}

/// Fills an array with bytes from aws-lc's CSPRNG, the one rustls and the ES256 signatures
/// draw from. (OpenSSL 3's `RAND_bytes` looks its generator up by name on every call: 5 % of
/// an issuance's samples for its salts, serial and status index.)
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// SM3 (GM/T 0004) of `data`.
///
/// Fallible only because OpenSSL may, in a stripped-down build, lack SM3.
pub fn sm3(data: &[u8]) -> Result<[u8; 32], CryptoError> {
    let digest = hash(MessageDigest::sm3(), data)?;
    <[u8; 32]>::try_from(&*digest)
        .map_err(|_| CryptoError::Openssl("SM3 digest is not 32 bytes".to_owned()))
}

/// `Z_A` of GM/T 0003.2 for the default distinguishing id and the public point `xy`
/// (`x ‖ y`, 32 bytes each). It binds the signer's identity and the curve into every
/// signature, which is what makes a plain SM3 hash of the message insufficient.
fn sm2_za(xy: &[u8; 2 * FIELD_LEN]) -> Result<[u8; 32], CryptoError> {
    let group = EcGroup::from_curve_name(Nid::SM2)?;
    let mut ctx = BigNumContext::new()?;
    let mut p = BigNum::new()?;
    let mut a = BigNum::new()?;
    let mut b = BigNum::new()?;
    group.components_gfp(&mut p, &mut a, &mut b, &mut ctx)?;
    let mut gx = BigNum::new()?;
    let mut gy = BigNum::new()?;
    group
        .generator_opt()
        .ok_or_else(|| CryptoError::Openssl("SM2 group without generator".to_owned()))?
        .affine_coordinates(&group, &mut gx, &mut gy, &mut ctx)?;

    // ENTL is the id length in bits, fixed here, so it always fits two bytes.
    let entl = u16::try_from(SM2_DEFAULT_ID.len() * 8)
        .map_err(|_| CryptoError::Openssl("SM2 id too long".to_owned()))?;
    let mut input = Vec::with_capacity(2 + SM2_DEFAULT_ID.len() + 6 * FIELD_LEN);
    input.extend_from_slice(&entl.to_be_bytes());
    input.extend_from_slice(SM2_DEFAULT_ID);
    for n in [&a, &b, &gx, &gy] {
        input.extend_from_slice(&padded(n)?);
    }
    input.extend_from_slice(xy);
    sm3(&input)
}

/// A big number as a 32-byte big-endian field element.
fn padded(n: &openssl::bn::BigNumRef) -> Result<Vec<u8>, CryptoError> {
    // FIELD_LEN is 32, so the cast to OpenSSL's i32 cannot truncate.
    Ok(n.to_vec_padded(FIELD_LEN as i32)?)
}

/// Makes sure OpenSSL will run the right algorithm on `pkey`, since `PkeyCtx` picks ECDSA or
/// SM2 from how the key is typed, not from its curve. A P-256 key must be EC. An SM2-curve
/// key must not be EC (that would be ECDSA on the SM2 curve); the crate cannot ask for "SM2"
/// by name, but EC and SM2 are the only key managers that take the SM2 curve, so "not EC"
/// means SM2: either the legacy SM2 type or, after decoding, a provider SM2 key (`id()` -1).
fn check_typing<T>(pkey: &PKeyRef<T>, sm2: bool) -> Result<(), CryptoError> {
    let is_ec = pkey.id() == Id::EC || pkey.is_a(KeyType::EC);
    if is_ec == sm2 {
        return Err(CryptoError::BadKey(format!(
            "OpenSSL typed the key {:?} (EC: {is_ec})",
            pkey.id()
        )));
    }
    Ok(())
}

/// `e = SM3(Z_A ‖ message)`, the value SM2 actually signs.
fn sm2_e(za: &[u8; 32], message: &[u8]) -> Result<[u8; 32], CryptoError> {
    let mut input = Vec::with_capacity(za.len() + message.len());
    input.extend_from_slice(za);
    input.extend_from_slice(message);
    sm3(&input)
}

/// How a key signs, with what SM2 needs precomputed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Es256,
    /// `Z_A` depends only on the public key, so it is computed once per key.
    Sm2 {
        za: [u8; 32],
    },
}

impl Scheme {
    fn alg(self) -> JwsAlg {
        match self {
            Scheme::Es256 => JwsAlg::Es256,
            Scheme::Sm2 { .. } => JwsAlg::Sm2Sm3,
        }
    }
}

/// A public key certgate verifies with: P-256 (`ES256`) or SM2 (`SM2SM3`).
#[derive(Clone)]
pub struct PublicKey {
    scheme: Scheme,
    pkey: PKey<Public>,
    /// SubjectPublicKeyInfo DER, kept so that exporting it cannot fail.
    spki: Vec<u8>,
    /// Affine `x ‖ y`, kept for `Z_A` and the JWK.
    xy: [u8; 2 * FIELD_LEN],
    /// A P-256 key parsed once for verification (aws-lc's constant-time P-256, which the TLS
    /// stack uses too): parsing the key for each signature cost as much as checking it.
    es256: Option<aws_lc_rs::signature::ParsedPublicKey>,
}

impl PublicKey {
    /// Decodes a SubjectPublicKeyInfo (DER). The algorithm follows from the curve: P-256 gives
    /// `ES256`, SM2 gives `SM2SM3`; any other key is [`CryptoError::UnsupportedKey`].
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let pkey = PKey::public_key_from_der(der)
            .map_err(|_| CryptoError::BadKey("not a SubjectPublicKeyInfo".to_owned()))?;
        // The curve and point come from the legacy EC decoder: OpenSSL 3 decodes an SM2 SPKI
        // into a provider key whose `ec_key()` and `id()` are unavailable (`id()` is -1).
        let ec = EcKey::public_key_from_der(der)
            .map_err(|_| CryptoError::UnsupportedKey("not an elliptic-curve key".to_owned()))?;
        let curve = ec.group().curve_name();
        let sm2 = match curve {
            Some(Nid::X9_62_PRIME256V1) => false,
            Some(Nid::SM2) => true,
            other => {
                return Err(CryptoError::UnsupportedKey(format!(
                    "curve {}",
                    other.and_then(|c| c.short_name().ok()).unwrap_or("unnamed")
                )));
            }
        };
        check_typing(&pkey, sm2)?;

        let mut ctx = BigNumContext::new()?;
        let mut x = BigNum::new()?;
        let mut y = BigNum::new()?;
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
        let mut xy = [0u8; 2 * FIELD_LEN];
        xy[..FIELD_LEN].copy_from_slice(&padded(&x)?);
        xy[FIELD_LEN..].copy_from_slice(&padded(&y)?);

        let scheme = if sm2 {
            Scheme::Sm2 { za: sm2_za(&xy)? }
        } else {
            Scheme::Es256
        };
        // Re-encoded rather than copied, so that equal keys have equal bytes.
        let spki = pkey.public_key_to_der()?;
        let es256 = match scheme {
            Scheme::Es256 => Some(
                aws_lc_rs::signature::ParsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                    &spki,
                )
                .map_err(|e| CryptoError::BadKey(format!("P-256 key refused: {e}")))?,
            ),
            Scheme::Sm2 { .. } => None,
        };
        Ok(PublicKey {
            scheme,
            pkey,
            spki,
            xy,
            es256,
        })
    }

    /// The subject public key of a certificate.
    pub fn from_certificate(cert: &X509Ref) -> Result<Self, CryptoError> {
        let pkey = cert
            .public_key()
            .map_err(|_| CryptoError::BadKey("certificate has no usable public key".to_owned()))?;
        // Round-trip through DER so the key is typed exactly as `from_spki_der` types it.
        Self::from_spki_der(&pkey.public_key_to_der()?)
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The OpenSSL key, e.g. to put into a certificate.
    pub fn pkey(&self) -> &PKeyRef<Public> {
        &self.pkey
    }

    /// The key as a JWK (RFC 7517): `{"kty":"EC","crv":…,"x":…,"y":…}` with base64url
    /// coordinates. `crv` is `"P-256"` for `ES256` keys and `"SM2"` for `SM2SM3` keys;
    /// `"SM2"` is not registered with IANA but is what Chinese JOSE profiles use, so
    /// verifiers that only know RFC 7518 curves will skip such a key rather than misread it.
    pub fn jwk(&self) -> serde_json::Value {
        let crv = match self.scheme {
            Scheme::Es256 => "P-256",
            Scheme::Sm2 { .. } => "SM2",
        };
        serde_json::json!({
            "kty": "EC",
            "crv": crv,
            "x": URL_SAFE_NO_PAD.encode(&self.xy[..FIELD_LEN]),
            "y": URL_SAFE_NO_PAD.encode(&self.xy[FIELD_LEN..]),
        })
    }

    fn verify_inner(&self, input: &[u8], signature: &[u8]) -> Result<bool, CryptoError> {
        // Only raw r‖s is accepted, so a DER signature (or any other length) is invalid.
        if signature.len() != 2 * FIELD_LEN {
            return Ok(false);
        }
        // ECDSA accepts both (r, s) and (r, n−s); only the low one is taken, so a signature
        // cannot be altered into another that also verifies (SM2 has no such twin).
        if matches!(self.scheme, Scheme::Es256) && !is_low_s(&signature[FIELD_LEN..]) {
            return Ok(false);
        }
        match self.scheme {
            // Raw r ‖ s, each in [1, n−1], over SHA-256 of the input.
            Scheme::Es256 => Ok(self
                .es256
                .as_ref()
                .is_some_and(|key| key.verify_sig(input, signature).is_ok())),
            Scheme::Sm2 { za } => {
                let r = BigNum::from_slice(&signature[..FIELD_LEN])?;
                let s = BigNum::from_slice(&signature[FIELD_LEN..])?;
                let sig = EcdsaSig::from_private_components(r, s)?;
                let e = sm2_e(&za, input)?;
                let mut ctx = PkeyCtx::new(&self.pkey)?;
                ctx.verify_init()?;
                Ok(ctx.verify(&e, &sig.to_der()?)?)
            }
        }
    }
}

impl JwsVerifier for PublicKey {
    fn alg(&self) -> JwsAlg {
        self.scheme.alg()
    }

    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        // Any failure, including OpenSSL rejecting an out-of-range r or s, means "not valid".
        self.verify_inner(signing_input, signature).unwrap_or(false)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fingerprint = openssl::sha::sha256(&self.spki);
        f.debug_struct("PublicKey")
            .field("alg", &self.scheme.alg())
            .field("spki_sha256", &hex::encode(fingerprint))
            .finish()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for PublicKey {}

/// A private signing key: P-256 for `ES256` or SM2 for `SM2SM3`. Its `Debug` shows the
/// algorithm and public key only.
#[derive(Clone)]
pub struct SealKey {
    pkey: PKey<Private>,
    public: PublicKey,
    /// A P-256 key as aws-lc signs with it, made once: signing through the OpenSSL key
    /// converted it to a legacy `EC_KEY` on every signature, which cost as much again as the
    /// signature itself.
    es256: Option<aws_lc_rs::signature::EcdsaKeyPair>,
}

impl SealKey {
    /// Generates a fresh key for `alg`.
    pub fn generate(alg: JwsAlg) -> Result<Self, CryptoError> {
        let curve = match alg {
            JwsAlg::Es256 => Nid::X9_62_PRIME256V1,
            JwsAlg::Sm2Sm3 => Nid::SM2,
        };
        let group = EcGroup::from_curve_name(curve)?;
        let pkey = PKey::from_ec_key(EcKey::generate(&group)?)?;
        // How `from_ec_key` types an SM2-curve key depends on the OpenSSL build (EC, which
        // would sign ECDSA, or legacy SM2); decoding PKCS#8 always yields the provider SM2
        // key, so generated keys are the same kind of object as keys loaded from storage.
        let pkcs8 = Zeroizing::new(pkey.private_key_to_pkcs8()?);
        Self::from_pkcs8_der(alg, &pkcs8)
    }

    /// Decodes an unencrypted PKCS#8 `PrivateKeyInfo` (DER) and checks that it is a key for
    /// `alg`: [`CryptoError::WrongAlgorithm`] if it is the other of the two,
    /// [`CryptoError::UnsupportedKey`] if it is neither.
    pub fn from_pkcs8_der(alg: JwsAlg, der: &[u8]) -> Result<Self, CryptoError> {
        let pkey = PKey::private_key_from_pkcs8(der)
            .map_err(|_| CryptoError::BadKey("not a PKCS#8 private key".to_owned()))?;
        let public = PublicKey::from_spki_der(&pkey.public_key_to_der()?)?;
        if public.scheme.alg() != alg {
            return Err(CryptoError::WrongAlgorithm);
        }
        // The public half was checked; the private key is a separate OpenSSL object and is
        // what actually signs.
        check_typing(&pkey, alg == JwsAlg::Sm2Sm3)?;
        let es256 = match alg {
            JwsAlg::Es256 => Some(
                aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                )
                .map_err(|e| CryptoError::BadKey(format!("P-256 key refused: {e}")))?,
            ),
            JwsAlg::Sm2Sm3 => None,
        };
        Ok(SealKey {
            pkey,
            public,
            es256,
        })
    }

    /// The key as unencrypted PKCS#8 DER, zeroized on drop; encrypt it with a [`Kek`] before
    /// it leaves memory.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(Zeroizing::new(self.pkey.private_key_to_pkcs8()?))
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public.spki.clone()
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The OpenSSL key, for signing certificates.
    pub fn pkey(&self) -> &PKey<Private> {
        &self.pkey
    }

    fn sign_inner(&self, input: &[u8]) -> Result<[u8; 64], CryptoError> {
        let mut out = [0u8; 64];
        match self.public.scheme {
            // Raw r ‖ s, each 32 bytes, over SHA-256 of the input; s made the low twin.
            Scheme::Es256 => {
                let key = self.es256.as_ref().ok_or(CryptoError::WrongAlgorithm)?;
                let signed = key
                    .sign(&aws_lc_rs::rand::SystemRandom::new(), input)
                    .map_err(|_| CryptoError::BadKey("P-256 signing failed".to_owned()))?;
                if signed.as_ref().len() != out.len() {
                    return Err(CryptoError::BadKey("P-256 signature not r ‖ s".to_owned()));
                }
                out.copy_from_slice(signed.as_ref());
                to_low_s(&mut out[FIELD_LEN..]);
            }
            Scheme::Sm2 { za } => {
                let e = sm2_e(&za, input)?;
                let mut ctx = PkeyCtx::new(&self.pkey)?;
                ctx.sign_init()?;
                let mut der = Vec::new();
                ctx.sign_to_vec(&e, &mut der)?;
                let sig = EcdsaSig::from_der(&der)?;
                out[..FIELD_LEN].copy_from_slice(&padded(sig.r())?);
                out[FIELD_LEN..].copy_from_slice(&padded(sig.s())?);
            }
        }
        Ok(out)
    }
}

/// Half the order of P-256, big-endian: a signature's `s` above it is the high twin.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// True when the 32-byte big-endian `s` is at most half the order of P-256.
pub fn is_low_s(s: &[u8]) -> bool {
    s.len() == FIELD_LEN && s <= &P256_HALF_ORDER[..]
}

/// The order n of P-256, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Replaces the 32-byte big-endian `s` (in [1, n−1]) by `n − s` when it is the high one.
fn to_low_s(s: &mut [u8]) {
    if is_low_s(s) {
        return;
    }
    let mut borrow = 0u8;
    for (digit, n) in s.iter_mut().zip(P256_ORDER).rev() {
        let (d, b1) = n.overflowing_sub(*digit);
        let (d, b2) = d.overflowing_sub(borrow);
        *digit = d;
        borrow = u8::from(b1 || b2);
    }
}

impl JwsSigner for SealKey {
    fn alg(&self) -> JwsAlg {
        self.public.scheme.alg()
    }

    fn sign(&self, signing_input: &[u8]) -> Result<[u8; 64], SigningFailed> {
        self.sign_inner(signing_input)
            .map_err(|e| SigningFailed(e.to_string()))
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A 32-byte key-encryption key: wraps private keys at rest with AES-256-GCM. Zeroized on
/// drop; `Debug` prints `Kek(<redacted>)`.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
}

impl Kek {
    /// Decodes standard (padded) base64 of exactly 32 bytes. The error never echoes the
    /// input, which is a secret.
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| CryptoError::BadKey("KEK is not valid base64".to_owned()))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(CryptoError::BadKey("KEK must be 32 bytes".to_owned()));
        }
        key.copy_from_slice(&bytes);
        Ok(Kek { key })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Kek {
            key: Zeroizing::new(random_bytes::<32>()?),
        })
    }

    /// Standard base64 of the key, zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.key))
    }

    /// Encrypts `plaintext` bound to `aad` (say, the key id, so a wrapped key cannot be
    /// swapped for another one). Output: `1 ‖ nonce (12) ‖ ciphertext ‖ tag (16)`; the random
    /// nonce makes reuse under one KEK negligible for the few keys certgate wraps.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut tag = [0u8; TAG_LEN];
        let ciphertext = encrypt_aead(
            Cipher::aes_256_gcm(),
            &*self.key,
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len() + TAG_LEN);
        out.push(KEK_BLOB_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts a blob from [`Kek::encrypt`]. Every failure is [`CryptoError::Decrypt`].
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let Some((&version, rest)) = blob.split_first() else {
            return Err(CryptoError::Decrypt);
        };
        if version != KEK_BLOB_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &*self.key,
            Some(nonce),
            aad,
            ciphertext,
            tag,
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// For tests: runs `openssl pkeyutl -verify -digest sm3` with the GM/T 0009 default id on a
/// DER SM2 signature of `msg` by `key` — an implementation other than certgate's. Returns
/// whether it verified, and what openssl printed.
#[cfg(test)]
pub(crate) fn openssl_sm2_verify(key: &SealKey, der_sig: &[u8], msg: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("msg"), msg).unwrap();
    std::fs::write(dir.path().join("sig.der"), der_sig).unwrap();
    std::fs::write(
        dir.path().join("pub.pem"),
        key.pkey().public_key_to_pem().unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-rawin",
            "-in",
            "msg",
            "-sigfile",
            "sig.der",
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use jsonwebtoken::{Algorithm, DecodingKey};

    use super::*;

    const INPUT: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiLljJfkuqzmn5Dmn5DlsYAifQ";

    fn openssl_cli_available() -> bool {
        Command::new("openssl").arg("version").output().is_ok()
    }

    #[test]
    fn sm3_known_answer() {
        assert_eq!(
            hex::encode(sm3(b"abc").unwrap()),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn es256_sign_verify_with_our_key() {
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        assert_eq!(JwsSigner::alg(&key), JwsAlg::Es256);
        let sig = key.sign(INPUT).unwrap();
        let public = PublicKey::from_spki_der(&key.public_key_der()).unwrap();
        assert_eq!(JwsVerifier::alg(&public), JwsAlg::Es256);
        assert!(public.verify(INPUT, &sig));
        assert!(!public.verify(b"other input", &sig));
    }

    #[test]
    fn to_low_s_is_n_minus_s_by_openssl_arithmetic_for_high_s_only() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let mut n = BigNum::new().unwrap();
        group
            .order(&mut n, &mut BigNumContext::new().unwrap())
            .unwrap();
        assert_eq!(n.to_vec(), P256_ORDER);
        let half = BigNum::from_slice(&P256_HALF_ORDER).unwrap();
        let mut edges = Vec::new();
        for k in [1u32, 2] {
            let (mut below, mut above) = (BigNum::new().unwrap(), BigNum::new().unwrap());
            above
                .checked_add(&half, &BigNum::from_u32(k - 1).unwrap())
                .unwrap();
            below
                .checked_sub(&n, &BigNum::from_u32(k).unwrap())
                .unwrap();
            edges.extend([above, below, BigNum::from_u32(k).unwrap()]);
        }
        for s in edges.into_iter().chain((0..500).map(|_| {
            let mut s = BigNum::new().unwrap();
            n.rand_range(&mut s).unwrap();
            s
        })) {
            let mut bytes = s.to_vec_padded(32).unwrap();
            to_low_s(&mut bytes);
            let mut expected = BigNum::new().unwrap();
            if s > half {
                expected.checked_sub(&n, &s).unwrap();
            } else {
                expected = s.to_owned().unwrap();
            }
            assert_eq!(bytes, expected.to_vec_padded(32).unwrap(), "s = {s}");
            assert!(is_low_s(&bytes));
        }
    }

    #[test]
    fn es256_signature_checks_out_with_plain_openssl_ecdsa() {
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        let sig = key.sign(INPUT).unwrap();
        // Second implementation: plain ECDSA over the SHA-256 digest, no code of ours.
        let r = BigNum::from_slice(&sig[..32]).unwrap();
        let s = BigNum::from_slice(&sig[32..]).unwrap();
        let ecdsa = EcdsaSig::from_private_components(r, s).unwrap();
        let ec = PKey::public_key_from_der(&key.public_key_der())
            .unwrap()
            .ec_key()
            .unwrap();
        let digest = hash(MessageDigest::sha256(), INPUT).unwrap();
        assert!(ecdsa.verify(&digest, &ec).unwrap());
    }

    #[test]
    fn es256_signature_checks_out_with_jsonwebtoken() {
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        let sig = URL_SAFE_NO_PAD.encode(key.sign(INPUT).unwrap());
        let pem = key.pkey().public_key_to_pem().unwrap();
        let decoding = DecodingKey::from_ec_pem(&pem).unwrap();
        assert!(jsonwebtoken::crypto::verify(&sig, INPUT, &decoding, Algorithm::ES256).unwrap());
        assert!(
            !jsonwebtoken::crypto::verify(&sig, b"tampered", &decoding, Algorithm::ES256).unwrap()
        );

        // The JWK coordinates are the same key.
        let jwk = key.public_key().jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        let from_jwk =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        assert!(jsonwebtoken::crypto::verify(&sig, INPUT, &from_jwk, Algorithm::ES256).unwrap());
    }

    #[test]
    fn sm2_sign_verify_with_our_key() {
        let key = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
        assert!(!key.pkey().is_a(KeyType::EC));
        assert_eq!(JwsSigner::alg(&key), JwsAlg::Sm2Sm3);
        let sig = key.sign(INPUT).unwrap();
        let public = PublicKey::from_spki_der(&key.public_key_der()).unwrap();
        assert_eq!(JwsVerifier::alg(&public), JwsAlg::Sm2Sm3);
        assert!(public.verify(INPUT, &sig));
        assert!(!public.verify(b"other input", &sig));
        assert_eq!(public.jwk()["crv"], "SM2");
    }

    /// Runs `openssl pkeyutl -verify` with the standard id on a raw `r‖s` SM2 signature.
    fn sm2_cli_verify(key: &SealKey, sig: &[u8; 64], msg: &[u8]) -> (bool, String) {
        let r = BigNum::from_slice(&sig[..32]).unwrap();
        let s = BigNum::from_slice(&sig[32..]).unwrap();
        let der = EcdsaSig::from_private_components(r, s)
            .unwrap()
            .to_der()
            .unwrap();
        super::openssl_sm2_verify(key, &der, msg)
    }

    #[test]
    fn sm2_signature_checks_out_with_openssl_cli_and_standard_id() {
        if !openssl_cli_available() {
            eprintln!("openssl CLI not installed; skipping");
            return;
        }
        let key = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
        let sig = key.sign(INPUT).unwrap();
        let (ok, stdout) = sm2_cli_verify(&key, &sig, INPUT);
        assert!(ok, "openssl pkeyutl rejected the signature: {stdout}");
        assert!(
            stdout.contains("Signature Verified Successfully"),
            "{stdout}"
        );

        let mut flipped = INPUT.to_vec();
        flipped[3] ^= 1;
        let (ok, stdout) = sm2_cli_verify(&key, &sig, &flipped);
        assert!(
            !ok,
            "openssl accepted a signature over another message: {stdout}"
        );
    }

    #[test]
    fn malformed_or_foreign_signatures_are_rejected() {
        for alg in [JwsAlg::Es256, JwsAlg::Sm2Sm3] {
            let key = SealKey::generate(alg).unwrap();
            let public = key.public_key();
            let sig = key.sign(INPUT).unwrap();
            assert!(public.verify(INPUT, &sig));

            for i in [0, 31, 32, 63] {
                let mut bad = sig;
                bad[i] ^= 0x01;
                assert!(!public.verify(INPUT, &bad), "{alg:?} flipped byte {i}");
            }

            let r = BigNum::from_slice(&sig[..32]).unwrap();
            let s = BigNum::from_slice(&sig[32..]).unwrap();
            let der = EcdsaSig::from_private_components(r, s)
                .unwrap()
                .to_der()
                .unwrap();
            assert!(!public.verify(INPUT, &der), "{alg:?} DER accepted");
            assert!(!public.verify(INPUT, &sig[..63]));
            assert!(!public.verify(INPUT, &[0u8; 64]));
            assert!(!public.verify(INPUT, &[0xffu8; 64]));
        }
    }

    #[test]
    fn the_high_s_twin_of_an_es256_signature_is_refused() {
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        let sig = key.sign(INPUT).unwrap();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let mut n = BigNum::new().unwrap();
        group
            .order(&mut n, &mut BigNumContext::new().unwrap())
            .unwrap();
        let s = BigNum::from_slice(&sig[32..]).unwrap();
        let mut high = BigNum::new().unwrap();
        high.checked_sub(&n, &s).unwrap();
        let mut twin = sig;
        twin[32..].copy_from_slice(&high.to_vec_padded(32).unwrap());
        // The twin is a valid ECDSA signature (plain OpenSSL takes it) …
        let ec = EcKey::public_key_from_der(key.public_key().spki_der()).unwrap();
        let der = EcdsaSig::from_private_components(
            BigNum::from_slice(&twin[..32]).unwrap(),
            BigNum::from_slice(&twin[32..]).unwrap(),
        )
        .unwrap();
        assert!(der.verify(&openssl::sha::sha256(INPUT), &ec).unwrap());
        // … and refused here, so a licence's signature cannot be altered into another.
        assert!(key.public_key().verify(INPUT, &sig));
        assert!(!key.public_key().verify(INPUT, &twin));
    }

    #[test]
    fn a_signature_does_not_verify_under_the_other_algorithm() {
        let es = SealKey::generate(JwsAlg::Es256).unwrap();
        let sm = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
        assert!(!sm.public_key().verify(INPUT, &es.sign(INPUT).unwrap()));
        assert!(!es.public_key().verify(INPUT, &sm.sign(INPUT).unwrap()));
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_algorithm() {
        for alg in [JwsAlg::Es256, JwsAlg::Sm2Sm3] {
            let key = SealKey::generate(alg).unwrap();
            let der = key.to_pkcs8_der().unwrap();
            let back = SealKey::from_pkcs8_der(alg, &der).unwrap();
            assert_eq!(back.public_key(), key.public_key());
            assert_eq!(JwsSigner::alg(&back), alg);
            assert_eq!(back.pkey().is_a(KeyType::EC), alg == JwsAlg::Es256);
            assert!(key.public_key().verify(INPUT, &back.sign(INPUT).unwrap()));
        }
        let sm = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
        assert_eq!(
            SealKey::from_pkcs8_der(JwsAlg::Es256, &sm.to_pkcs8_der().unwrap()).unwrap_err(),
            CryptoError::WrongAlgorithm
        );
        assert!(matches!(
            SealKey::from_pkcs8_der(JwsAlg::Es256, b"not a key"),
            Err(CryptoError::BadKey(_))
        ));
    }

    #[test]
    fn other_curves_are_unsupported() {
        let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
        let pkey = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        assert!(matches!(
            PublicKey::from_spki_der(&pkey.public_key_to_der().unwrap()),
            Err(CryptoError::UnsupportedKey(_))
        ));
        assert!(matches!(
            SealKey::from_pkcs8_der(JwsAlg::Es256, &pkey.private_key_to_pkcs8().unwrap()),
            Err(CryptoError::UnsupportedKey(_))
        ));
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        assert!(matches!(
            PublicKey::from_spki_der(&rsa.public_key_to_der().unwrap()),
            Err(CryptoError::UnsupportedKey(_))
        ));
    }

    #[test]
    fn debug_does_not_show_private_key_material() {
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        let scalar = key.pkey().ec_key().unwrap().private_key().to_vec();
        let debug = format!("{key:?}");
        assert!(debug.contains("Es256"));
        assert!(!debug.to_lowercase().contains(&hex::encode(&scalar)));
        let kek = Kek::generate().unwrap();
        assert_eq!(format!("{kek:?}"), "Kek(<redacted>)");
    }

    #[test]
    fn kek_round_trip_and_failures() {
        let kek = Kek::generate().unwrap();
        let again = Kek::from_base64(&kek.to_base64()).unwrap();
        let blob = kek.encrypt(b"secret key bytes", b"key-1").unwrap();
        assert_eq!(blob[0], 1);
        assert_eq!(blob.len(), 1 + 12 + 16 + 16);
        assert_eq!(
            &*again.decrypt(&blob, b"key-1").unwrap(),
            b"secret key bytes"
        );
        // Fresh nonce each time.
        assert_ne!(blob, kek.encrypt(b"secret key bytes", b"key-1").unwrap());

        let other = Kek::generate().unwrap();
        assert_eq!(
            other.decrypt(&blob, b"key-1").unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            kek.decrypt(&blob, b"key-2").unwrap_err(),
            CryptoError::Decrypt
        );
        for i in [0, 1, 13, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                kek.decrypt(&bad, b"key-1").unwrap_err(),
                CryptoError::Decrypt,
                "byte {i}"
            );
        }
        for len in [0, 1, 12, 28, blob.len() - 1] {
            assert_eq!(
                kek.decrypt(&blob[..len], b"key-1").unwrap_err(),
                CryptoError::Decrypt,
                "len {len}"
            );
        }
        assert_eq!(CryptoError::Decrypt.to_string(), "decryption failed");

        let empty = kek.encrypt(b"", b"").unwrap();
        assert!(kek.decrypt(&empty, b"").unwrap().is_empty());
    }

    #[test]
    fn kek_base64_must_be_32_bytes() {
        assert!(Kek::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
        for bad in [
            STANDARD.encode([7u8; 31]),
            STANDARD.encode([7u8; 33]),
            "!!".to_owned(),
        ] {
            let err = Kek::from_base64(&bad).unwrap_err();
            assert!(matches!(err, CryptoError::BadKey(_)));
            assert!(!err.to_string().contains(&bad));
        }
    }

    #[test]
    fn random_bytes_differ() {
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
    }
}
