//! The reader's error type: every failure names the field that is wrong.

use core::fmt;

/// What is wrong with a package, and where.
///
/// `field` is a path such as `"header.version_major"` or `"tensors.blob"`;
/// `index` is the record index within its table where that applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes end before a structure does.
    Truncated {
        /// The structure that does not fit.
        field: &'static str,
        /// Bytes it needs (from the start of the file).
        need: u64,
        /// Bytes there are.
        have: u64,
    },
    /// The first 8 bytes are not the package magic.
    BadMagic,
    /// The package was written by another major version of the format.
    Version {
        /// Its major version.
        found: u16,
        /// The major version this reader implements.
        supported: u16,
    },
    /// A version or required feature this reader does not implement.
    Unsupported {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A field holds a value outside its valid set.
    Invalid {
        /// Which field.
        field: &'static str,
        /// Record index, if the field is in a table.
        index: Option<u32>,
        /// The value found.
        value: u64,
        /// Why it is wrong.
        why: &'static str,
    },
    /// An offset/length pair points outside the region it must stay in.
    OutOfBounds {
        /// Which field.
        field: &'static str,
        /// Record index, if the field is in a table.
        index: Option<u32>,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// End of the region it must fit in.
        bound: u64,
    },
    /// A stored checksum does not match the bytes.
    Checksum {
        /// What was checked (`"header"`, `"metadata"`, `"blob"`).
        field: &'static str,
        /// Blob index, for blobs.
        index: Option<u32>,
        /// Stored value.
        expected: u64,
        /// Computed value.
        actual: u64,
    },
    /// A required section is absent.
    MissingSection {
        /// Section name.
        section: &'static str,
    },
    /// The package bytes do not start on the alignment the reader needs.
    Misaligned {
        /// Required alignment in bytes.
        required: u32,
    },
}

impl FormatError {
    pub(crate) fn invalid(
        field: &'static str,
        index: Option<u32>,
        value: u64,
        why: &'static str,
    ) -> Self {
        Self::Invalid {
            field,
            index,
            value,
            why,
        }
    }

    /// The field this error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Truncated { field, .. }
            | Self::Unsupported { field, .. }
            | Self::Invalid { field, .. }
            | Self::OutOfBounds { field, .. }
            | Self::Checksum { field, .. } => field,
            Self::BadMagic => "header.magic",
            Self::Version { .. } => "header.version_major",
            Self::MissingSection { section } => section,
            Self::Misaligned { .. } => "package.base_address",
        }
    }
}

struct At(&'static str, Option<u32>);
impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(i) => {
                // "tensors.blob" with index 3 reads best as "tensors[3].blob".
                match self.0.split_once('.') {
                    Some((table, rest)) => write!(f, "{table}[{i}].{rest}"),
                    None => write!(f, "{}[{i}]", self.0),
                }
            }
            None => f.write_str(self.0),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { field, need, have } => {
                write!(
                    f,
                    "truncated package: {field} needs {need} bytes, file has {have}"
                )
            }
            Self::BadMagic => f.write_str("not a Taskpath package: bad magic in header.magic"),
            Self::Version { found, supported } => write!(
                f,
                "package format version {found}.x; this runtime reads version {supported}.x: repack it with `taskpath pack` (or `taskpath add-task` for a delta pack)"
            ),
            Self::Unsupported { field, value } => write!(f, "{field}: unsupported value {value}"),
            Self::Invalid {
                field,
                index,
                value,
                why,
            } => {
                write!(f, "{}: invalid value {value}: {why}", At(field, index))
            }
            Self::OutOfBounds {
                field,
                index,
                offset,
                len,
                bound,
            } => write!(
                f,
                "{}: range {offset}..{} is outside 0..{bound}",
                At(field, index),
                offset.saturating_add(len)
            ),
            Self::Checksum {
                field,
                index,
                expected,
                actual,
            } => write!(
                f,
                "{}: checksum mismatch (stored {expected:#018x}, computed {actual:#018x})",
                At(field, index)
            ),
            Self::MissingSection { section } => write!(f, "missing required section {section}"),
            Self::Misaligned { required } => {
                write!(f, "package bytes must start on a {required}-byte boundary")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}

/// Result with [`FormatError`].
pub type Result<T> = core::result::Result<T, FormatError>;
