//! Reader for CTranslate2's `model.bin`: a small header, then named tensors,
//! then aliases. No crate reads this format, so we do, bounds-checked: a
//! malformed file is an [`Ct2Error`], never a panic.
//!
//! Layout (little endian), as written by CTranslate2's `model_spec.py` for
//! binary versions 4 to 6:
//!
//! ```text
//! u32 version
//! str spec name            (str = u16 byte length, bytes, trailing NUL included)
//! u32 spec revision
//! u32 variable count
//!   str name, u8 rank, u32 dims[rank], u8 dtype, u32 byte length, bytes
//! u32 alias count          (version >= 3)
//!   str alias, str target
//! ```

use std::collections::HashMap;

/// Element type of a variable, numbered as CTranslate2 numbers its `DType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::I8 => 1,
            Self::I16 => 2,
            Self::I32 => 3,
            Self::F16 => 4,
            Self::Bf16 => 5,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One named tensor of the file, raw little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    pub data: Vec<u8>,
}

impl Ct2Variable {
    /// The value of a scalar integer variable (flags, head counts).
    pub fn scalar_i64(&self) -> Option<i64> {
        if self.shape.iter().product::<usize>() != 1 {
            return None;
        }
        let d = &self.data;
        Some(match self.dtype {
            Ct2Dtype::I8 => *d.first()? as i8 as i64,
            Ct2Dtype::I16 => i16::from_le_bytes([*d.first()?, *d.get(1)?]) as i64,
            Ct2Dtype::I32 => i32::from_le_bytes(d.get(..4)?.try_into().ok()?) as i64,
            _ => return None,
        })
    }
}

/// A whole `model.bin`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ct2Model {
    pub version: u32,
    /// e.g. `WhisperSpec`.
    pub spec: String,
    pub revision: u32,
    pub variables: HashMap<String, Ct2Variable>,
    /// alias name → name of the variable it stands for.
    pub aliases: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ct2Error {
    #[error("file ends early at byte {0}")]
    Truncated(usize),
    #[error("unsupported binary version {0} (supported: 4 to 6)")]
    Version(u32),
    #[error("unknown dtype {dtype} for variable {name}")]
    Dtype { name: String, dtype: u8 },
    #[error(
        "variable {name}: shape {shape:?} of {dtype:?} needs {expected} bytes, file says {got}"
    )]
    Size {
        name: String,
        shape: Vec<usize>,
        dtype: Ct2Dtype,
        expected: usize,
        got: usize,
    },
    #[error("name is not UTF-8 at byte {0}")]
    Name(usize),
    #[error("{0} trailing bytes after the aliases")]
    Trailing(usize),
}

impl Ct2Model {
    /// Parses a whole file held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Self, Ct2Error> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u32()?;
        if !(4..=6).contains(&version) {
            return Err(Ct2Error::Version(version));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut variables = HashMap::with_capacity(count.min(4096));
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let dtype_id = r.u8()?;
            let dtype = Ct2Dtype::from_id(dtype_id).ok_or_else(|| Ct2Error::Dtype {
                name: name.clone(),
                dtype: dtype_id,
            })?;
            let got = r.u32()? as usize;
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .unwrap_or(usize::MAX);
            if expected != got {
                return Err(Ct2Error::Size {
                    name,
                    shape,
                    dtype,
                    expected,
                    got,
                });
            }
            let data = r.take(got)?.to_vec();
            variables.insert(name, Ct2Variable { shape, dtype, data });
        }
        let mut aliases = HashMap::new();
        let alias_count = r.u32()? as usize;
        for _ in 0..alias_count {
            let alias = r.string()?;
            let target = r.string()?;
            aliases.insert(alias, target);
        }
        if r.pos != bytes.len() {
            return Err(Ct2Error::Trailing(bytes.len() - r.pos));
        }
        Ok(Self {
            version,
            spec,
            revision,
            variables,
            aliases,
        })
    }

    /// A variable by name, following one level of alias.
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        self.variables.get(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.variables.get(target))
        })
    }

    /// Serializes in the same format (version 6); used by tests to build
    /// small synthetic files.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            let len = (s.len() + 1) as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, &self.spec);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.variables.len() as u32).to_le_bytes());
        let mut names: Vec<&String> = self.variables.keys().collect();
        names.sort();
        for name in names {
            let Some(v) = self.variables.get(name) else {
                continue;
            };
            string(&mut out, name);
            out.push(v.shape.len() as u8);
            for &d in &v.shape {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            out.push(v.dtype.id());
            out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&v.data);
        }
        out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
        for (alias, target) in &self.aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
        out
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Ct2Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(Ct2Error::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Ct2Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Ct2Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Ct2Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-prefixed string; the trailing NUL is dropped.
    fn string(&mut self) -> Result<String, Ct2Error> {
        let at = self.pos;
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| Ct2Error::Name(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ct2Model {
        let mut m = Ct2Model {
            version: 6,
            spec: "WhisperSpec".into(),
            revision: 3,
            ..Default::default()
        };
        m.variables.insert(
            "a/weight".into(),
            Ct2Variable {
                shape: vec![2, 3],
                dtype: Ct2Dtype::F32,
                data: (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            },
        );
        m.variables.insert(
            "a/num_heads".into(),
            Ct2Variable {
                shape: vec![],
                dtype: Ct2Dtype::I16,
                data: 6i16.to_le_bytes().to_vec(),
            },
        );
        m.aliases.insert("b/weight".into(), "a/weight".into());
        m
    }

    #[test]
    fn round_trips_and_follows_aliases() {
        let m = sample();
        let parsed = Ct2Model::parse(&m.to_bytes()).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.get("b/weight").unwrap().shape, vec![2, 3]);
        assert_eq!(parsed.get("a/num_heads").unwrap().scalar_i64(), Some(6));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Ct2Model::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bad_version_and_sizes() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 99;
        assert_eq!(Ct2Model::parse(&bytes), Err(Ct2Error::Version(99)));
        let mut m = sample();
        if let Some(v) = m.variables.get_mut("a/weight") {
            v.data.pop();
        }
        assert!(matches!(
            Ct2Model::parse(&m.to_bytes()),
            Err(Ct2Error::Size { .. })
        ));
    }
}
