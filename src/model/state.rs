//! The recurrent state, and the operations on its rows (one row per sequence of a batch).
use tch::Tensor;

/// The recurrent state: hidden `h` and, for an LSTM, memory cell `c`; each Float `[L, batch, H]` (layers
/// first, as in PyTorch).
#[derive(Debug)]
pub struct State {
    /// Hidden state.
    pub h: Tensor,
    /// LSTM memory cell; `None` for other cells.
    pub c: Option<Tensor>,
}

impl State {
    /// The state of a stack of layers from each layer's final `h` (and an LSTM's `c`), each `[batch, H]`,
    /// bottom first: `[L, batch, H]` tensors. No `c`s: no memory cell.
    pub(crate) fn of_layers(hs: &[Tensor], cs: &[Tensor]) -> State {
        State { h: Tensor::stack(hs, 0), c: (!cs.is_empty()).then(|| Tensor::stack(cs, 0)) }
    }

    /// The same values cut from the autograd graph: backpropagation stops here (truncated BPTT).
    pub fn detach(&self) -> State {
        State { h: self.h.detach(), c: self.c.as_ref().map(Tensor::detach) }
    }

    /// A handle to the same tensors.
    pub fn shallow_clone(&self) -> State {
        State { h: self.h.shallow_clone(), c: self.c.as_ref().map(Tensor::shallow_clone) }
    }

    /// `f` applied to `h` and to `c`.
    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> State {
        State { h: f(&self.h), c: self.c.as_ref().map(f) }
    }

    /// The rows `rows` (indices into the batch, any order, repeats allowed): `[L, rows.len(), H]`.
    pub(crate) fn rows(&self, rows: &[i64]) -> State {
        let index = Tensor::from_slice(rows).to_device(self.h.device());
        self.map(|t| t.index_select(1, &index))
    }

    /// Each row repeated `n` times, in order: `[L, batch * n, H]` (row `r` becomes rows `r * n .. r * n + n`).
    pub(crate) fn repeat_rows(&self, n: usize) -> State {
        self.map(|t| t.repeat_interleave_self_int(n as i64, 1, None))
    }

    /// This state's rows followed by `other`'s: `[L, batch + other's, H]`.
    pub(crate) fn concat(&self, other: &State) -> State {
        State {
            h: Tensor::cat(&[&self.h, &other.h], 1),
            c: self.c.as_ref().zip(other.c.as_ref()).map(|(a, b)| Tensor::cat(&[a, b], 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state whose entry (l, b, j) is `100 l + 10 b + j` (and the negation in `c`), so that every row can
    /// be told apart.
    fn numbered(layers: i64, batch: i64) -> State {
        let values: Vec<f32> = (0..layers)
            .flat_map(|l| (0..batch).flat_map(move |b| (0..3).map(move |j| (100 * l + 10 * b + j) as f32)))
            .collect();
        let h = Tensor::from_slice(&values).view([layers, batch, 3]);
        State { c: Some(-&h), h }
    }

    fn row(state: &State, l: i64, b: i64) -> Vec<f32> {
        Vec::<f32>::try_from(state.h.get(l).get(b)).unwrap()
    }

    #[test]
    fn rows_are_selected_repeated_and_concatenated_in_every_layer_and_the_memory_cell() {
        let s = numbered(2, 3);
        let picked = s.rows(&[2, 0, 2]);
        assert_eq!(picked.h.size(), vec![2, 3, 3]);
        // Worked by hand from the numbering: layer 1, row 2 is 120, 121, 122.
        assert_eq!(row(&picked, 1, 0), vec![120.0, 121.0, 122.0]);
        assert_eq!(row(&picked, 0, 1), vec![0.0, 1.0, 2.0]);
        assert!(picked.c.as_ref().unwrap().equal(&-&picked.h));
        let twice = s.repeat_rows(2);
        assert_eq!(twice.h.size(), vec![2, 6, 3]);
        assert_eq!((row(&twice, 1, 2), row(&twice, 1, 3)), (vec![110.0, 111.0, 112.0], vec![110.0, 111.0, 112.0]));
        let both = s.concat(&picked);
        assert_eq!(both.h.size(), vec![2, 6, 3]);
        assert_eq!(row(&both, 1, 3), vec![120.0, 121.0, 122.0]);
        assert!(both.c.as_ref().unwrap().equal(&-&both.h));
        let no_cell = State { h: s.h.shallow_clone(), c: None };
        assert!(no_cell.rows(&[1]).c.is_none() && no_cell.repeat_rows(2).c.is_none());
    }
}
