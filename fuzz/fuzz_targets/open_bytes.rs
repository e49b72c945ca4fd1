//! (a) `Model::from_bytes` + `verify` on arbitrary bytes, as given and with
//! the header and metadata checksums re-sealed (so mutations reach the table
//! validation instead of stopping at a checksum); an accepted package then
//! has every task opened and run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskpath_format::{tensor_data, tensor_raw, Package};
use taskpath_fuzz::exercise::{aligned, exercise};
use taskpath_fuzz::mutate;
use taskpath_runtime::Model;

fn check(bytes: &[u8]) {
    let a = aligned(bytes);
    // The package layer alone (delta packs too): every accessor over every record.
    if let Ok(p) = Package::parse(a.as_slice()) {
        for t in p.tensors().iter() {
            let _ = p.tensor_f32(&t);
            if let Some(b) = t.blob.checked_sub(p.model().blob_base) {
                if let Some(blob) = p.blob_bytes(b as usize) {
                    let _ = tensor_raw(&t, blob);
                    let _ = tensor_data(&t, blob);
                }
            }
            let _ = p.str(t.name_off, t.name_len);
        }
        let _ = p.verify_all();
        let _ = Package::view(a.as_slice(), p.layout()).map(|v| v.tasks().len());
    }
    match Model::from_bytes(a.as_slice()) {
        Ok(m) => {
            let _ = m.verify();
            exercise(&m, true);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 128 {
        let mut v = data.to_vec();
        mutate::reseal(&mut v);
        if v != data {
            check(&v);
        }
    }
});
