//! Signed packages and delta packs (docs/FORMAT.md, "Signature record"):
//! a signed chain opens with its key and runs as the unsigned one does; an
//! unsigned package, a package or delta signed by another key, and every
//! re-sealed edit (checksums recomputed, so only the signature can catch it)
//! are refused, each with its own error.

#[allow(dead_code)]
#[path = "../../fuzz/src/mutate.rs"]
mod mutate;

use taskpath_checkpoint::{random_checkpoint, random_inputs, Checkpoint, RandomSpec, SplitMix64};
use taskpath_format::signature::{
    public_key, sign_package, verify_package, SignatureError, SignatureRecord, SIG_RECORD_LEN,
};
use taskpath_format::Package;
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::{AlignedArena, Error, ErrorCode, Model, Session};

/// Test keys: fixed seeds, for tests only (`taskpath keygen` draws from the
/// OS random source).
const SIGNER: [u8; 32] = [0x5a; 32];
const OTHER: [u8; 32] = [0xa5; 32];

struct Chain {
    full: Checkpoint,
    base: Vec<u8>,
    delta: Vec<u8>,
}

fn chain() -> Chain {
    let full = random_checkpoint(&RandomSpec::small(16, 2, 4, 2, 2), 11);
    let opts = PackOptions::default();
    let base = pack(&full.stage_prefix(0).unwrap(), &opts).unwrap();
    let b = AlignedArena::from_bytes(&base);
    let delta = pack_delta(&full, &Model::from_bytes(b.as_slice()).unwrap(), &opts).unwrap();
    Chain { full, base, delta }
}

fn a(bytes: &[u8]) -> AlignedArena {
    AlignedArena::from_bytes(bytes)
}

fn outputs(model: &Model<'_>, ck: &Checkpoint, t: usize) -> Vec<u32> {
    let info = model.task(t).unwrap();
    let mut arena = AlignedArena::new(info.arena_bytes);
    let mut s = Session::new(model, t, arena.as_mut_slice()).unwrap();
    let x = random_inputs(&ck.config, t, &mut SplitMix64::new(3));
    let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0f32; info.outputs];
    s.run(&refs, &mut out).unwrap();
    out.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_signed_chain_opens_with_its_key_and_runs_as_the_unsigned_one() {
    let c = chain();
    let key = public_key(&SIGNER);
    let (sb, sd) = (
        a(&sign_package(&c.base, &SIGNER).unwrap()),
        a(&sign_package(&c.delta, &SIGNER).unwrap()),
    );
    // The record is exactly appended: the package bytes are unchanged.
    assert_eq!(&sb.as_slice()[..c.base.len()], &c.base[..]);
    assert_eq!(sb.as_slice().len(), c.base.len() + SIG_RECORD_LEN);
    let (len, rec) = SignatureRecord::find(sb.as_slice()).unwrap();
    assert_eq!((len, rec.unwrap().public_key), (c.base.len(), key));
    let signed = Model::from_bytes_verified(sb.as_slice(), &key)
        .unwrap()
        .with_delta_verified(sd.as_slice(), &key)
        .unwrap();
    let (ub, ud) = (a(&c.base), a(&c.delta));
    let unsigned = Model::from_bytes(ub.as_slice())
        .unwrap()
        .with_delta(ud.as_slice())
        .unwrap();
    assert_eq!(signed.task_count(), 2);
    for t in 0..2 {
        assert_eq!(outputs(&signed, &c.full, t), outputs(&unsigned, &c.full, t));
    }
    // Readers that require no key see the signed package as before, and
    // the package id (what deltas name as their base) is unchanged.
    let plain = Model::from_bytes(sb.as_slice()).unwrap();
    assert_eq!(plain.base().id(), unsigned.base().id());
}

#[test]
fn a_package_signed_by_another_key_is_refused_naming_that_key() {
    let c = chain();
    let sb = a(&sign_package(&c.base, &OTHER).unwrap());
    let e = Model::from_bytes_verified(sb.as_slice(), &public_key(&SIGNER)).unwrap_err();
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&public_key(&OTHER)[..8]);
    assert_eq!(e, Error::KeyMismatch { found: fp });
    assert_eq!(e.code(), ErrorCode::KeyMismatch);
    let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
    assert!(e.to_string().contains(&hex), "{e}");
}

#[test]
fn an_unsigned_package_is_refused_by_a_key_requiring_open_only() {
    let c = chain();
    let ub = a(&c.base);
    assert!(Model::from_bytes(ub.as_slice()).is_ok());
    let e = Model::from_bytes_verified(ub.as_slice(), &public_key(&SIGNER)).unwrap_err();
    assert_eq!(e, Error::Unsigned);
    assert_eq!(e.code(), ErrorCode::Unsigned);
    // Erased flash after the package is no signature either.
    let mut erased = c.base.clone();
    erased.extend_from_slice(&[0xFF; 4096]);
    let e = Model::from_bytes_verified(a(&erased).as_slice(), &public_key(&SIGNER)).unwrap_err();
    assert_eq!(e, Error::Unsigned);
    // A signed package with its record cut off is unsigned again.
    let sb = sign_package(&c.base, &SIGNER).unwrap();
    let cut = a(&sb[..c.base.len()]);
    assert_eq!(
        Model::from_bytes_verified(cut.as_slice(), &public_key(&SIGNER)).unwrap_err(),
        Error::Unsigned
    );
}

#[test]
fn a_delta_signed_by_another_key_or_unsigned_is_refused() {
    let c = chain();
    let key = public_key(&SIGNER);
    let sb = a(&sign_package(&c.base, &SIGNER).unwrap());
    let base = Model::from_bytes_verified(sb.as_slice(), &key).unwrap();
    let other = a(&sign_package(&c.delta, &OTHER).unwrap());
    assert!(matches!(
        base.with_delta_verified(other.as_slice(), &key),
        Err(Error::KeyMismatch { .. })
    ));
    // It is a well-formed delta of this base: only the key refuses it.
    assert!(base.with_delta(other.as_slice()).is_ok());
    let unsigned = a(&c.delta);
    assert_eq!(
        base.with_delta_verified(unsigned.as_slice(), &key)
            .unwrap_err(),
        Error::Unsigned
    );
}

#[test]
fn a_tampered_base_id_with_resealed_checksums_is_refused_by_the_signature() {
    let c = chain();
    let key = public_key(&SIGNER);
    let sb = a(&sign_package(&c.base, &SIGNER).unwrap());
    let base = Model::from_bytes_verified(sb.as_slice(), &key).unwrap();
    let mut d = sign_package(&c.delta, &SIGNER).unwrap();
    d[72] ^= 0x01; // header.base_id
    mutate::reseal(&mut d);
    let d = a(&d);
    // The checksums pass: the reader parses it, the chain check refuses it
    // as another base's delta, and the signature refuses it first.
    assert!(Package::parse(d.as_slice()).is_ok());
    assert!(matches!(
        base.with_delta(d.as_slice()),
        Err(Error::DeltaMismatch { .. })
    ));
    let e = base.with_delta_verified(d.as_slice(), &key).unwrap_err();
    assert_eq!(e, Error::BadSignature);
    assert_eq!(e.code(), ErrorCode::BadSignature);
    // A forged delta that claims this base's id, re-sealed: parses and
    // would chain without a key, refused with one.
    let mut b = sign_package(&c.base, &SIGNER).unwrap();
    b[72] = 0x42; // a base package claiming a base
    mutate::reseal(&mut b);
    assert_eq!(
        Model::from_bytes_verified(a(&b).as_slice(), &key).unwrap_err(),
        Error::BadSignature
    );
}

/// Every header field and every field of every table record, each edited
/// on its own with every checksum (blobs, metadata, header) re-sealed, and
/// a byte of every blob: all refused by the signature check. An edit of
/// `file_len` moves where the record must be, so that one reads as unsigned
/// or truncated; all others are `BadSignature`.
#[test]
fn every_resealed_edit_of_a_signed_package_is_refused() {
    let c = chain();
    let key = public_key(&SIGNER);
    let signed = sign_package(&c.base, &SIGNER).unwrap();
    let mut edits: Vec<usize> = mutate::fields(&c.base).iter().map(|f| f.at).collect();
    let p = a(&c.base);
    let pkg = Package::parse(p.as_slice()).unwrap();
    let data_off = pkg.header().data_off as usize;
    edits.extend(pkg.blobs().iter().map(|b| data_off + b.offset as usize));
    edits.sort_unstable();
    edits.dedup();
    let (mut refused, mut parsed) = (0, 0);
    for at in edits {
        let mut b = signed.clone();
        b[at] ^= 0x01;
        mutate::reseal_blobs(&mut b);
        mutate::reseal(&mut b);
        if b == signed {
            continue; // a checksum field, restored by the re-seal
        }
        let bytes = a(&b);
        parsed += usize::from(Package::parse(bytes.as_slice()).is_ok());
        let e = verify_package(bytes.as_slice(), &key).unwrap_err();
        if (24..32).contains(&at) {
            assert!(
                matches!(e, SignatureError::Unsigned | SignatureError::Format(_)),
                "file_len edit: {e}"
            );
        } else {
            assert_eq!(e, SignatureError::BadSignature, "edit at byte {at}");
        }
        refused += 1;
    }
    // The edits were real: hundreds, and many got past every checksum and
    // the whole reader (only the signature tells them apart).
    assert!(refused > 300, "{refused} edits");
    assert!(parsed > 50, "{parsed} edits parsed");
    // And the record itself: the signature, then the key field.
    let mut b = signed.clone();
    let n = c.base.len();
    b[n + 48] ^= 1;
    assert_eq!(verify_package(&b, &key), Err(SignatureError::BadSignature));
    let mut b = signed.clone();
    b[n + 16] ^= 1;
    assert!(matches!(
        verify_package(&b, &key),
        Err(SignatureError::KeyMismatch { .. })
    ));
}
