//! Package signatures: an optional record after the package's last byte
//! (docs/FORMAT.md, "Signature record").
//!
//! A signed package is the package bytes `[0, file_len)` followed by a
//! [`SIG_RECORD_LEN`]-byte record at offset `file_len`: magic, algorithm,
//! the signer's ed25519 public key and a 64-byte ed25519 signature over
//! [`signed_message`]: the domain [`SIGNING_DOMAIN`] followed by the
//! package's *identity*, the SHA-512 of its bytes `[0, file_len)`. Those
//! bytes hold every header field (`base_id` and `file_len` included), the
//! header and metadata checksums and the blob table with every blob's
//! checksum, and the blobs themselves; so a package edited in any byte and
//! re-sealed (checksums recomputed) no longer verifies, and neither does
//! one whose signature record was moved.
//!
//! Readers that do not know signatures see nothing: a package buffer may be
//! longer than `file_len` (erased flash), and the record lies there. An
//! unsigned package opens as before unless the caller requires a key.
//!
//! Parsing the record ([`SignatureRecord::find`]) is always available; the
//! cryptography (SHA-512, ed25519 verification) is the `signing` feature,
//! and signing itself is `std`.

use crate::error::{FormatError, Result};
use crate::{HEADER_LEN, MAGIC};

/// Magic of the signature record: as the package magic, with "TPS".
pub const SIG_MAGIC: [u8; 8] = *b"\x89TPS\r\n\x1a\n";
/// Bytes of a version-1 (ed25519) signature record.
pub const SIG_RECORD_LEN: usize = 112;
/// `algorithm` of an ed25519 signature record (RFC 8032, pure Ed25519).
pub const SIG_ALG_ED25519: u32 = 1;
/// The domain-separation prefix of the signed message: a signature over a
/// Taskpath package identity can never be mistaken for (or replayed as) the
/// same key's signature over anything else that does not start with it.
pub const SIGNING_DOMAIN: [u8; 32] = *b"taskpath.tpk.signature.ed25519.1";
/// Bytes of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of [`signed_message`]: the domain and the 64-byte identity.
pub const SIGNED_MESSAGE_LEN: usize = SIGNING_DOMAIN.len() + 64;

/// A package's signature record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureRecord {
    /// [`SIG_ALG_ED25519`] (the only algorithm of this version).
    pub algorithm: u32,
    /// The signer's ed25519 public key (not signed: a hint that lets a
    /// reader tell "signed by another key" from "modified after signing";
    /// verification always uses the caller's key).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The ed25519 signature over [`signed_message`] of the package.
    pub signature: [u8; 64],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The package length claimed by the header of `bytes` (`header.file_len`),
/// checked against the buffer. Only the magic and this field are read: the
/// signature is checked before the rest of the package is parsed, so the
/// parser only ever sees authenticated bytes when a key is required.
pub fn package_len(bytes: &[u8]) -> Result<usize> {
    let have = bytes.len() as u64;
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(if bytes.len() < 8 {
            FormatError::Truncated {
                field: "header",
                need: HEADER_LEN as u64,
                have,
            }
        } else {
            FormatError::BadMagic
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            field: "header",
            need: HEADER_LEN as u64,
            have,
        });
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[24..32]);
    let file_len = u64::from_le_bytes(w);
    if file_len < HEADER_LEN as u64 {
        return Err(FormatError::invalid(
            "header.file_len",
            None,
            file_len,
            "shorter than the header",
        ));
    }
    if file_len > have {
        return Err(FormatError::Truncated {
            field: "header.file_len",
            need: file_len,
            have,
        });
    }
    Ok(file_len as usize)
}

impl SignatureRecord {
    /// The record's bytes (docs/FORMAT.md, "Signature record").
    pub fn encode(&self) -> [u8; SIG_RECORD_LEN] {
        let mut b = [0u8; SIG_RECORD_LEN];
        b[..8].copy_from_slice(&SIG_MAGIC);
        b[8..12].copy_from_slice(&self.algorithm.to_le_bytes());
        b[12..16].copy_from_slice(&(SIG_RECORD_LEN as u32).to_le_bytes());
        b[16..48].copy_from_slice(&self.public_key);
        b[48..112].copy_from_slice(&self.signature);
        b
    }

    /// The signature record of the package in `bytes`, if it has one:
    /// `Ok(None)` when the bytes after `file_len` do not start with
    /// [`SIG_MAGIC`] (an unsigned package, or erased flash after it).
    /// Returns the package length too. A record that starts with the magic
    /// but is cut short, names another algorithm or another length is an
    /// error naming that field.
    pub fn find(bytes: &[u8]) -> Result<(usize, Option<Self>)> {
        let file_len = package_len(bytes)?;
        let rest = &bytes[file_len..];
        if rest.len() < SIG_MAGIC.len() || rest[..8] != SIG_MAGIC {
            return Ok((file_len, None));
        }
        if rest.len() < SIG_RECORD_LEN {
            return Err(FormatError::Truncated {
                field: "signature",
                need: file_len as u64 + SIG_RECORD_LEN as u64,
                have: bytes.len() as u64,
            });
        }
        let algorithm = u32_at(rest, 8);
        if algorithm != SIG_ALG_ED25519 {
            return Err(FormatError::Unsupported {
                field: "signature.algorithm",
                value: u64::from(algorithm),
            });
        }
        let len = u32_at(rest, 12);
        if len as usize != SIG_RECORD_LEN {
            return Err(FormatError::invalid(
                "signature.record_len",
                None,
                u64::from(len),
                "an ed25519 signature record is 112 bytes",
            ));
        }
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(&rest[16..48]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&rest[48..112]);
        Ok((
            file_len,
            Some(Self {
                algorithm,
                public_key,
                signature,
            }),
        ))
    }
}

/// Why a package's signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The package has no signature record, and a key was required.
    Unsigned,
    /// The package is signed, by another key than the one required.
    KeyMismatch {
        /// The public key its record names.
        found: [u8; PUBLIC_KEY_LEN],
    },
    /// The record names the required key, but the signature does not verify
    /// over the package: its bytes changed after signing (even with every
    /// checksum re-sealed), or the signature is forged.
    BadSignature,
    /// The required key is not a valid ed25519 public key.
    InvalidKey,
    /// The header or the signature record is malformed.
    Format(FormatError),
}

impl From<FormatError> for SignatureError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

impl core::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unsigned => f.write_str("the package is not signed, and a signature is required"),
            Self::KeyMismatch { found } => write!(
                f,
                "the package is signed by another key (fingerprint {}) than the one required",
                Fingerprint(found)
            ),
            Self::BadSignature => f.write_str(
                "the package's signature does not verify: it was modified after signing, or the signature is forged",
            ),
            Self::InvalidKey => f.write_str("the required public key is not a valid ed25519 key"),
            Self::Format(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SignatureError {}

/// The first 8 bytes of a public key in hex: how errors and tools name a key.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint<'k>(pub &'k [u8; PUBLIC_KEY_LEN]);

impl core::fmt::Display for Fingerprint<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The message a package signature signs: [`SIGNING_DOMAIN`] then the
/// package identity (the SHA-512 of the package bytes `[0, file_len)`,
/// [`package_identity`]).
pub fn signed_message(identity: &[u8; 64]) -> [u8; SIGNED_MESSAGE_LEN] {
    let mut m = [0u8; SIGNED_MESSAGE_LEN];
    m[..SIGNING_DOMAIN.len()].copy_from_slice(&SIGNING_DOMAIN);
    m[SIGNING_DOMAIN.len()..].copy_from_slice(identity);
    m
}

/// The package identity: SHA-512 of `package`, which must be exactly the
/// package bytes `[0, file_len)` (every header field, every checksum, every
/// table and blob).
#[cfg(feature = "signing")]
pub fn package_identity(package: &[u8]) -> [u8; 64] {
    use sha2::Digest;
    sha2::Sha512::digest(package).into()
}

/// Checks that the package in `bytes` carries a valid ed25519 signature by
/// `key`, before anything else of it is parsed: the record must exist
/// ([`SignatureError::Unsigned`]), name `key`
/// ([`SignatureError::KeyMismatch`]) and verify, strictly (RFC 8032 with
/// canonical `S` and no small-order keys), over [`signed_message`]
/// ([`SignatureError::BadSignature`]). Reads the header's `file_len` and
/// hashes `[0, file_len)` once; allocates nothing.
#[cfg(feature = "signing")]
pub fn verify_package(
    bytes: &[u8],
    key: &[u8; PUBLIC_KEY_LEN],
) -> core::result::Result<(), SignatureError> {
    let vk =
        ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| SignatureError::InvalidKey)?;
    let (file_len, record) = SignatureRecord::find(bytes)?;
    let record = record.ok_or(SignatureError::Unsigned)?;
    if record.public_key != *key {
        return Err(SignatureError::KeyMismatch {
            found: record.public_key,
        });
    }
    let message = signed_message(&package_identity(&bytes[..file_len]));
    let sig = ed25519_dalek::Signature::from_bytes(&record.signature);
    vk.verify_strict(&message, &sig)
        .map_err(|_| SignatureError::BadSignature)
}

/// Whether `key` is a valid ed25519 public key (a point on the curve),
/// which [`verify_package`] needs.
#[cfg(feature = "signing")]
pub fn is_valid_public_key(key: &[u8; PUBLIC_KEY_LEN]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(key).is_ok()
}

/// The ed25519 public key of a 32-byte secret key (RFC 8032 seed).
#[cfg(feature = "std")]
pub fn public_key(secret: &[u8; 32]) -> [u8; PUBLIC_KEY_LEN] {
    ed25519_dalek::SigningKey::from_bytes(secret)
        .verifying_key()
        .to_bytes()
}

/// Signs the package in `bytes` with `secret` (a 32-byte ed25519 seed):
/// returns the package bytes `[0, file_len)` followed by its signature
/// record. A signature record already there is replaced (re-signing), and
/// anything else after `file_len` is dropped. The package itself is not
/// parsed here: sign what the packer produced.
#[cfg(feature = "std")]
pub fn sign_package(bytes: &[u8], secret: &[u8; 32]) -> Result<std::vec::Vec<u8>> {
    use ed25519_dalek::Signer;
    let file_len = package_len(bytes)?;
    let key = ed25519_dalek::SigningKey::from_bytes(secret);
    let message = signed_message(&package_identity(&bytes[..file_len]));
    let record = SignatureRecord {
        algorithm: SIG_ALG_ED25519,
        public_key: key.verifying_key().to_bytes(),
        signature: key.sign(&message).to_bytes(),
    };
    let mut out = std::vec::Vec::with_capacity(file_len + SIG_RECORD_LEN);
    out.extend_from_slice(&bytes[..file_len]);
    out.extend_from_slice(&record.encode());
    Ok(out)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let v: std::vec::Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// RFC 8032 section 7.1, tests 1-3 (also checked against OpenSSL's
    /// Ed25519 through Python's `cryptography` when they were copied): the
    /// primitive this module wraps signs and verifies as the standard says.
    #[test]
    fn ed25519_matches_rfc8032_test_vectors() {
        use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
        let vectors = [
            ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
             "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
             "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
            ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
             "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
             "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
            ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
             "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
             "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
        ];
        for (sk, pk, msg, sig) in vectors {
            let sk: [u8; 32] = hex(sk);
            let msg: std::vec::Vec<u8> = (0..msg.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&msg[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(public_key(&sk), hex::<32>(pk));
            let s = SigningKey::from_bytes(&sk).sign(&msg);
            assert_eq!(s.to_bytes(), hex::<64>(sig));
            let vk = VerifyingKey::from_bytes(&hex(pk)).unwrap();
            assert!(vk.verify_strict(&msg, &s).is_ok());
            let mut bad = s.to_bytes();
            bad[0] ^= 1;
            let bad = ed25519_dalek::Signature::from_bytes(&bad);
            assert!(vk.verify_strict(&msg, &bad).is_err());
        }
    }

    /// FIPS 180-2's SHA-512 example ("abc"): the identity hash is SHA-512.
    #[test]
    fn identity_is_sha512() {
        let want: [u8; 64] = hex(
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        );
        assert_eq!(package_identity(b"abc"), want);
        let m = signed_message(&want);
        assert_eq!(&m[..32], b"taskpath.tpk.signature.ed25519.1");
        assert_eq!(&m[32..], &want);
    }

    /// A fake "package": the magic and a header whose `file_len` is 128.
    fn fake(extra: &[u8]) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; 128];
        b[..8].copy_from_slice(&MAGIC);
        b[24..32].copy_from_slice(&128u64.to_le_bytes());
        b.extend_from_slice(extra);
        b
    }

    #[test]
    fn records_are_found_only_after_file_len_and_checked() {
        let sk = [7u8; 32];
        let pk = public_key(&sk);
        // Unsigned, and erased flash after the package, are both unsigned.
        assert_eq!(SignatureRecord::find(&fake(&[])).unwrap(), (128, None));
        assert_eq!(
            SignatureRecord::find(&fake(&[0xFF; 200])).unwrap(),
            (128, None)
        );
        assert_eq!(
            verify_package(&fake(&[]), &pk),
            Err(SignatureError::Unsigned)
        );
        let signed = sign_package(&fake(&[0xFF; 9]), &sk).unwrap();
        assert_eq!(signed.len(), 128 + SIG_RECORD_LEN);
        let (len, rec) = SignatureRecord::find(&signed).unwrap();
        assert_eq!((len, rec.unwrap().public_key), (128, pk));
        assert_eq!(verify_package(&signed, &pk), Ok(()));
        // Re-signing replaces the record.
        assert_eq!(sign_package(&signed, &sk).unwrap(), signed);
        // Another key's package: refused naming the key found.
        let other = public_key(&[8u8; 32]);
        assert_eq!(
            verify_package(&signed, &other),
            Err(SignatureError::KeyMismatch { found: pk })
        );
        // Any byte of the package changed: the signature fails.
        for at in [0usize, 30, 64, 72, 127] {
            let mut b = signed.clone();
            b[at] ^= 0x10;
            let r = verify_package(&b, &pk);
            assert!(r.is_err(), "byte {at}");
            if at >= 32 {
                assert_eq!(r, Err(SignatureError::BadSignature), "byte {at}");
            }
        }
        // A signature byte changed.
        let mut b = signed.clone();
        b[128 + 60] ^= 1;
        assert_eq!(verify_package(&b, &pk), Err(SignatureError::BadSignature));
        // Malformed records name their field.
        let mut b = signed.clone();
        b[128 + 8] = 2;
        assert_eq!(
            SignatureRecord::find(&b).unwrap_err().field(),
            "signature.algorithm"
        );
        let mut b = signed.clone();
        b[128 + 12] = 111;
        assert_eq!(
            SignatureRecord::find(&b).unwrap_err().field(),
            "signature.record_len"
        );
        assert_eq!(
            SignatureRecord::find(&signed[..128 + 50])
                .unwrap_err()
                .field(),
            "signature"
        );
        // A file_len beyond the buffer, or inside the header.
        let mut b = signed.clone();
        b[24..32].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(package_len(&b).unwrap_err().field(), "header.file_len");
        b[24..32].copy_from_slice(&12u64.to_le_bytes());
        assert_eq!(package_len(&b).unwrap_err().field(), "header.file_len");
        assert_eq!(
            package_len(b"not a package at all"),
            Err(FormatError::BadMagic)
        );
        // A key that is no curve point is the caller's error.
        let mut bad_key = [0u8; 32];
        bad_key[31] = 0x80;
        bad_key[0] = 2;
        assert_eq!(
            verify_package(&signed, &bad_key),
            Err(SignatureError::InvalidKey)
        );
    }
}
