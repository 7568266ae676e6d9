//! The network's parameters by role (the embedding, each layer's weights and biases, the output layer),
//! and the one place that fixes their names, shapes and saved order.
use crate::model::config::{Cell, ModelConfig};

/// One recurrent layer's parameters: `W_xh [I, kH]` (I = D or V for the first layer, H above it),
/// `W_hh [H, kH]`, `b_h [kH]` (k = [`Cell::blocks`]) and, for a GRU, `b_hn [H]` (the bias inside the reset
/// gate's product).
#[derive(Debug, Clone)]
pub struct Layer<T> {
    /// Input weights.
    pub w_xh: T,
    /// Recurrent weights.
    pub w_hh: T,
    /// Bias of the input projection.
    pub b_h: T,
    /// A GRU's candidate bias `b_hn`; `None` for other cells.
    pub b_hn: Option<T>,
}

/// Every parameter of a network by role: the embedding `E [V, D]` when there is one, the layers, and the
/// output layer `W_hq [H, V]`, `b_q [V]`. `T` is a tensor, a gradient, a name with a shape, ...
#[derive(Debug, Clone)]
pub struct Params<T> {
    /// The embedding table, with `embed > 0`.
    pub embedding: Option<T>,
    /// The recurrent layers, bottom first.
    pub layers: Vec<Layer<T>>,
    /// Output weights.
    pub w_hq: T,
    /// Output bias.
    pub b_q: T,
}

impl<T> Params<T> {
    /// The names and shapes of `config`'s parameters: `E`, then for each layer `W_xh`, `W_hh`, `b_h` (and
    /// `b_hn`), with a `_l{l}` suffix above the first layer, then `W_hq` and `b_q`.
    pub fn specs(config: &ModelConfig) -> Params<(String, Vec<i64>)> {
        let a = &config.arch;
        let (v, h, k, d) = (config.vocab_size as i64, a.hidden as i64, a.cell.blocks() as i64, a.embed as i64);
        let layers = (0..a.layers)
            .map(|l| {
                let suffix = if l == 0 { String::new() } else { format!("_l{l}") };
                let input = match (l, d) {
                    (0, 0) => v,
                    (0, d) => d,
                    _ => h,
                };
                Layer {
                    w_xh: (format!("W_xh{suffix}"), vec![input, k * h]),
                    w_hh: (format!("W_hh{suffix}"), vec![h, k * h]),
                    b_h: (format!("b_h{suffix}"), vec![k * h]),
                    b_hn: (a.cell == Cell::Gru).then(|| (format!("b_hn{suffix}"), vec![h])),
                }
            })
            .collect();
        Params {
            embedding: (d > 0).then(|| ("E".to_string(), vec![v, d])),
            layers,
            w_hq: ("W_hq".to_string(), vec![h, v]),
            b_q: ("b_q".to_string(), vec![v]),
        }
    }

    /// The parameters in saved order (see [`Params::specs`]).
    pub fn into_vec(self) -> Vec<T> {
        let mut out: Vec<T> = self.embedding.into_iter().collect();
        for l in self.layers {
            out.extend([l.w_xh, l.w_hh, l.b_h]);
            out.extend(l.b_hn);
        }
        out.extend([self.w_hq, self.b_q]);
        out
    }

    /// The same roles with `f` applied to each parameter.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Params<U> {
        // In saved order ([`Params::from_values`] relies on it).
        let embedding = self.embedding.as_ref().map(&mut f);
        let layers = self
            .layers
            .iter()
            .map(|l| Layer { w_xh: f(&l.w_xh), w_hh: f(&l.w_hh), b_h: f(&l.b_h), b_hn: l.b_hn.as_ref().map(&mut f) })
            .collect();
        Params { embedding, layers, w_hq: f(&self.w_hq), b_q: f(&self.b_q) }
    }
}

#[cfg(test)]
impl<T> Params<T> {
    /// `values` (in saved order, as many as `like` has) put in the roles of `like`.
    pub fn from_values<U>(like: &Params<U>, values: impl IntoIterator<Item = T>) -> Params<T> {
        let mut next = values.into_iter();
        like.map(|_| next.next().expect("as many values as parameters"))
    }
}

impl ModelConfig {
    /// Names and shapes of the parameters, in the order they are saved: `E`, then for each layer `W_xh`,
    /// `W_hh`, `b_h` (and a GRU's `b_hn`), with a `_l{l}` suffix above the first layer, then `W_hq` and `b_q`.
    pub fn param_specs(&self) -> Vec<(String, Vec<i64>)> {
        Params::<()>::specs(self).into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;

    #[test]
    fn saved_order_and_roles_agree() {
        let config = ModelConfig::new(7, Arch { cell: Cell::Gru, layers: 2, embed: 3, ..Arch::rnn(5) });
        let specs = Params::<()>::specs(&config);
        let names: Vec<String> = specs.clone().into_vec().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["E", "W_xh", "W_hh", "b_h", "b_hn", "W_xh_l1", "W_hh_l1", "b_h_l1", "b_hn_l1", "W_hq", "b_q"]
        );
        assert_eq!(specs.clone().into_vec().len(), names.len());
        let indices: Vec<usize> = (0..names.len()).collect();
        let roles = Params::from_values(&specs, indices.clone());
        assert_eq!((roles.layers[1].w_hh, roles.layers[1].b_hn, roles.w_hq), (6, Some(8), 9));
        assert_eq!(roles.into_vec(), indices);
        assert_eq!(specs.layers[1].w_xh.1, vec![5, 15], "upper layers read H");
    }
}
