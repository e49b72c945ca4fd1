//! A reader for NumPy `.npy` files (format versions 1, 2 and 3) holding
//! little-endian float32 arrays in C order, which is what `run --input` takes.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A float32 array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    /// Dimensions, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values in C (row-major) order.
    pub data: Vec<f32>,
}

/// Header bytes [`load`] allows on top of the data: numpy writes 64 to a
/// few hundred, and a version 2 header may claim up to 4 GiB.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;

/// Reads a `.npy` file of at most `max_values` float32 values: more than
/// [`MAX_HEADER_BYTES`] plus 4 bytes per value is refused before it is
/// read, so `/dev/zero` or a huge file cannot exhaust memory.
pub fn load(path: &Path, max_values: usize) -> Result<Npy> {
    let limit = MAX_HEADER_BYTES.saturating_add((max_values as u64).saturating_mul(4));
    let bytes = crate::run::read_limited(path, limit, &|| {
        format!("an .npy input of {max_values} float32 values (4 bytes each, plus {MAX_HEADER_BYTES} of header)")
    })?;
    parse(&bytes).with_context(|| format!("reading {} as .npy", path.display()))
}

/// The value text after `'key':` in the header dict.
fn value_of<'h>(header: &'h str, key: &str) -> Result<&'h str> {
    let at = [format!("'{key}'"), format!("\"{key}\"")]
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|i| i + k.len()))
        .with_context(|| format!("header has no {key:?} entry"))?;
    let rest = header[at..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .with_context(|| format!("header entry {key:?} has no ':'"))?;
    Ok(rest.trim_start())
}

/// Parses the bytes of a `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<Npy> {
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == MAGIC,
        "not a .npy file (no \\x93NUMPY magic)"
    );
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated .npy header");
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (n as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}.{}", bytes[7]),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..end]).context(".npy header is not text")?;

    let descr = value_of(header, "descr")?;
    let quote = descr.chars().next().filter(|c| *c == '\'' || *c == '"');
    let dtype = quote
        .and_then(|q| descr[1..].split(q).next())
        .context("header 'descr' is not a string")?;
    ensure!(
        dtype == "<f4",
        "dtype {dtype:?} is not supported: expected '<f4' (little-endian float32; convert with arr.astype('<f4'))"
    );

    let fortran = value_of(header, "fortran_order")?;
    if fortran.starts_with("True") {
        bail!("the array is in Fortran (column-major) order: expected C order (save np.ascontiguousarray(arr))");
    }
    ensure!(
        fortran.starts_with("False"),
        "header 'fortran_order' is neither True nor False"
    );

    let shape_text = value_of(header, "shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("header 'shape' is not a tuple")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .with_context(|| format!("header 'shape' has a bad dimension {s:?}"))
        })
        .collect::<Result<_>>()?;

    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("shape too large")?;
    let need = count.checked_mul(4).context("shape too large")?;
    let data = &bytes[end..];
    ensure!(
        data.len() == need,
        "shape {shape:?} needs {need} bytes of float32 data, the file has {}",
        data.len()
    );
    let data = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Npy { shape, data })
}

/// Encodes a float32 array as a version 1.0 `.npy` file.
#[cfg(test)]
pub fn encode(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_matrices_vectors_and_scalars() {
        let v: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        for shape in [vec![2, 3], vec![6], vec![1, 2, 3]] {
            let n = parse(&encode(&shape, &v)).unwrap();
            assert_eq!(
                n,
                Npy {
                    shape,
                    data: v.clone()
                }
            );
        }
        let s = parse(&encode(&[], &[4.0])).unwrap();
        assert_eq!((s.shape.len(), s.data), (0, vec![4.0]));
    }

    #[test]
    fn reads_version_2_headers() {
        let mut b = encode(&[2], &[1.0, 2.0]);
        let hl = u16::from_le_bytes([b[8], b[9]]) as u32;
        b[6] = 2;
        b.splice(8..10, hl.to_le_bytes());
        assert_eq!(parse(&b).unwrap().data, vec![1.0, 2.0]);
    }

    fn with_header(h: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn refuses_other_dtypes_orders_and_lengths() {
        let e = |b: &[u8]| format!("{:#}", parse(b).unwrap_err());
        let f8 = with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 8],
        );
        assert!(e(&f8).contains("\"<f8\" is not supported"), "{}", e(&f8));
        let be = with_header(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 4],
        );
        assert!(e(&be).contains("\">f4\""));
        let fo = with_header(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n",
            &[0; 16],
        );
        assert!(e(&fo).contains("Fortran"));
        let short = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n",
            &[0; 12],
        );
        assert!(e(&short).contains("needs 16 bytes"), "{}", e(&short));
        assert!(e(b"hello world").contains("not a .npy"));
        let noshape = with_header("{'descr': '<f4', 'fortran_order': False}\n", &[]);
        assert!(e(&noshape).contains("\"shape\""));
        let mut trunc = encode(&[1], &[1.0]);
        trunc.truncate(20);
        assert!(e(&trunc).contains("truncated"));
    }
}
