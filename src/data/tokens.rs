//! A corpus as character indices, read through one view whether it is in memory (`[i64]`) or in a prepared
//! token file (`u8`, `u16` or `u32` per character, read with positioned reads): training and evaluation
//! copy out only the windows they use, so their memory does not grow with the corpus.
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Tokens read from a file when asked for: bytes `start..start + len * width`, little-endian.
#[derive(Debug, Clone, Copy)]
pub struct FileTokens<'a> {
    /// The token file.
    pub(crate) file: &'a File,
    /// Byte offset of the first token.
    pub(crate) start: u64,
    /// Tokens.
    pub(crate) len: usize,
    /// Bytes per token: 1, 2 or 4.
    pub(crate) width: u8,
}

/// Bytes read from a token file at a time, at most (a multiple of every width).
const READ_CHUNK: usize = 1 << 20;

/// Character indices, borrowed: a cheap, copyable view.
#[derive(Debug, Clone, Copy)]
pub enum Tokens<'a> {
    /// Indices in memory.
    I64(&'a [i64]),
    /// Indices in a token file.
    File(FileTokens<'a>),
}

impl<'a> Tokens<'a> {
    /// The number of characters.
    pub fn len(&self) -> usize {
        match self {
            Tokens::I64(t) => t.len(),
            Tokens::File(f) => f.len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Characters `start..start + len`. Panics outside the view, like slicing.
    pub fn slice(&self, start: usize, len: usize) -> Tokens<'a> {
        match *self {
            Tokens::I64(t) => Tokens::I64(&t[start..start + len]),
            Tokens::File(f) => {
                assert!(start + len <= f.len, "tokens {start}..{} of {}", start + len, f.len);
                Tokens::File(FileTokens { start: f.start + (start * f.width as usize) as u64, len, ..f })
            }
        }
    }

    /// The first `n` characters and the rest.
    pub fn split_at(&self, n: usize) -> (Tokens<'a>, Tokens<'a>) {
        (self.slice(0, n), self.slice(n, self.len() - n))
    }

    /// Appends the characters to `out` as Int64 indices. A token file that cannot be read any more (it was
    /// removed or truncated after it was checked) ends the process with that error: training cannot go on.
    pub fn extend_into(&self, out: &mut Vec<i64>) {
        let f = match self {
            Tokens::I64(t) => return out.extend_from_slice(t),
            Tokens::File(f) => f,
        };
        let width = f.width as usize;
        let mut buf = vec![0u8; (f.len * width).min(READ_CHUNK)];
        let (mut at, mut remaining) = (f.start, f.len * width);
        out.reserve(f.len);
        while remaining > 0 {
            let chunk = &mut buf[..remaining.min(READ_CHUNK)];
            if let Err(e) = f.file.read_exact_at(chunk, at) {
                panic!("the token file can no longer be read ({e})");
            }
            match width {
                1 => out.extend(chunk.iter().map(|&b| b as i64)),
                2 => out.extend(chunk.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as i64)),
                _ => out.extend(chunk.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)),
            }
            at += chunk.len() as u64;
            remaining -= chunk.len();
        }
    }

    /// The characters as Int64 indices.
    pub fn to_vec(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_into(&mut out);
        out
    }
}

impl<'a> From<&'a [i64]> for Tokens<'a> {
    fn from(t: &'a [i64]) -> Self {
        Tokens::I64(t)
    }
}

impl<'a> From<&'a Vec<i64>> for Tokens<'a> {
    fn from(t: &'a Vec<i64>) -> Self {
        Tokens::I64(t)
    }
}

impl<'a, const N: usize> From<&'a [i64; N]> for Tokens<'a> {
    fn from(t: &'a [i64; N]) -> Self {
        Tokens::I64(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_width_reads_the_same_indices() {
        let wide = vec![3i64, 0, 255, 7, 1];
        let mut f = tempfile::tempfile().unwrap();
        // Three bytes of something else first, then the tokens at each width.
        f.write_all(&[9, 9, 9]).unwrap();
        let mut starts = Vec::new();
        for width in [1u8, 2, 4] {
            starts.push(f.metadata().unwrap().len());
            for &i in &wide {
                f.write_all(&(i as u32).to_le_bytes()[..width as usize]).unwrap();
            }
        }
        let views = starts
            .iter()
            .zip([1u8, 2, 4])
            .map(|(&start, width)| Tokens::File(FileTokens { file: &f, start, len: 5, width }));
        for view in std::iter::once(Tokens::from(&wide)).chain(views) {
            assert_eq!(view.len(), 5);
            assert_eq!(view.to_vec(), wide);
            assert_eq!(view.slice(1, 3).to_vec(), vec![0, 255, 7]);
            let (a, b) = view.split_at(2);
            assert_eq!((a.to_vec(), b.to_vec()), (vec![3, 0], vec![255, 7, 1]));
        }
    }
}
