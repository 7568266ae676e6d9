//! A corpus as character indices, read through one view whether it is in memory (`[i64]`) or memory-mapped
//! from a prepared token file (`u8`, `u16` or `u32` per character): training and evaluation copy out only
//! the windows they use, so their memory does not grow with the corpus.

/// Character indices, borrowed: a cheap, copyable view.
#[derive(Debug, Clone, Copy)]
pub enum Tokens<'a> {
    /// Indices in memory.
    I64(&'a [i64]),
    /// One byte per character (vocabularies up to 256).
    U8(&'a [u8]),
    /// Two bytes per character (up to 65,536).
    U16(&'a [u16]),
    /// Four bytes per character.
    U32(&'a [u32]),
}

impl<'a> Tokens<'a> {
    /// The number of characters.
    pub fn len(&self) -> usize {
        match self {
            Tokens::I64(t) => t.len(),
            Tokens::U8(t) => t.len(),
            Tokens::U16(t) => t.len(),
            Tokens::U32(t) => t.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Characters `start..start + len`. Panics outside the view, like slicing.
    pub fn slice(&self, start: usize, len: usize) -> Tokens<'a> {
        let r = start..start + len;
        match *self {
            Tokens::I64(t) => Tokens::I64(&t[r]),
            Tokens::U8(t) => Tokens::U8(&t[r]),
            Tokens::U16(t) => Tokens::U16(&t[r]),
            Tokens::U32(t) => Tokens::U32(&t[r]),
        }
    }

    /// The first `n` characters and the rest.
    pub fn split_at(&self, n: usize) -> (Tokens<'a>, Tokens<'a>) {
        (self.slice(0, n), self.slice(n, self.len() - n))
    }

    /// Appends the characters to `out` as Int64 indices.
    pub fn extend_into(&self, out: &mut Vec<i64>) {
        match self {
            Tokens::I64(t) => out.extend_from_slice(t),
            Tokens::U8(t) => out.extend(t.iter().map(|&i| i as i64)),
            Tokens::U16(t) => out.extend(t.iter().map(|&i| i as i64)),
            Tokens::U32(t) => out.extend(t.iter().map(|&i| i as i64)),
        }
    }

    /// The largest index, if there is any.
    pub fn max(&self) -> Option<i64> {
        match self {
            Tokens::I64(t) => t.iter().copied().max(),
            Tokens::U8(t) => t.iter().max().map(|&i| i as i64),
            Tokens::U16(t) => t.iter().max().map(|&i| i as i64),
            Tokens::U32(t) => t.iter().max().map(|&i| i as i64),
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

    #[test]
    fn every_width_reads_the_same_indices() {
        let (wide, small, mid, big) =
            (vec![3i64, 0, 255, 7, 1], [3u8, 0, 255, 7, 1], [3u16, 0, 255, 7, 1], [3u32, 0, 255, 7, 1]);
        for view in [Tokens::from(&wide), Tokens::U8(&small), Tokens::U16(&mid), Tokens::U32(&big)] {
            assert_eq!(view.len(), 5);
            assert_eq!(view.to_vec(), wide);
            assert_eq!(view.slice(1, 3).to_vec(), vec![0, 255, 7]);
            let (a, b) = view.split_at(2);
            assert_eq!((a.to_vec(), b.to_vec()), (vec![3, 0], vec![255, 7, 1]));
        }
    }
}
