//! A model as an ONNX file (opset 17), built from ONNX's standard operators, so that onnxruntime and the
//! other ONNX runtimes run it without charrnn or libtorch.
//!
//! The graph: `chars` Int64 `[batch, steps]` and the state `h0` Float `[layers, batch, H]` (and `c0` for an
//! LSTM) in; `logits` Float `[batch, steps, V]` (the next character's, before softmax) and the state after
//! the last step, `h` (and `c`), out. Inside: the characters transposed to step-major order, embedded
//! (`Gather`) or one-hot encoded (`OneHot`), one ONNX `RNN`, `GRU` or `LSTM` operator per layer, and the
//! output layer (`MatMul`, `Add`). ONNX's recurrent operators compute charrnn's cells exactly, so no step is
//! written out: charrnn's GRU is PyTorch's (the reset gate multiplies `h W_hn + b_hn`), which is ONNX's GRU
//! with `linear_before_reset = 1`; only the order of the gates' blocks differs (ONNX: z r h for the GRU,
//! i o f c for the LSTM; charrnn, as cuDNN: r z n and i f g o), and the export reorders them.
//!
//! The model's metadata says how to encode and decode text: `charrnn.vocab` (every character once, in
//! index order), `charrnn.keep_newlines` (`false`: a line break is read as a space), and `charrnn.model`
//! (the whole `model.json`).
use crate::error::{Error, Result};
use crate::model::config::Cell;
use crate::model::network::Network;
use crate::store::format::ModelFile;
use crate::store::onnx_proto::*;
use crate::util::write_bytes_atomic;
use prost::Message;
use std::path::Path;
use tch::{Kind, Tensor};

/// The ONNX IR version and operator set the file declares (supported by onnxruntime since 1.12).
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;

/// A graph under construction: nodes in order, the weights and the constants.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    initializers: Vec<TensorData>,
}

impl Builder {
    /// A Float weight named `name`, `[shape]`, from `t`'s values.
    fn weight(&mut self, name: &str, t: &Tensor) -> String {
        let values = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().reshape([-1])).expect("Float values");
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorData { dims: t.size(), data_type: FLOAT, name: name.into(), raw_data });
        name.into()
    }

    /// An Int64 constant named `name`, `[values.len()]`.
    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = vec![values.len() as i64];
        self.initializers.push(TensorData { dims, data_type: INT64, name: name.into(), raw_data });
        name.into()
    }

    /// Appends `op` from `inputs` to `outputs` (an empty input name skips an optional input).
    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attributes: Vec<Attribute>) {
        self.nodes.push(Node {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute: attributes,
        });
    }
}

fn int(name: &str, i: i64) -> Attribute {
    Attribute { name: name.into(), i, ints: Vec::new(), r#type: ATTRIBUTE_INT }
}

fn ints(name: &str, ints: &[i64]) -> Attribute {
    Attribute { name: name.into(), i: 0, ints: ints.to_vec(), r#type: ATTRIBUTE_INTS }
}

/// A graph input or output: `name`, of element type `elem`, with `dims` (a number, or a name for a size the
/// caller chooses).
fn value(name: &str, elem: i32, dims: &[Size], doc: &str) -> ValueInfo {
    let dim = dims.iter().map(|d| Dimension { value: Some(d.clone()) }).collect();
    let tensor_type = TensorType { elem_type: elem, shape: Some(Shape { dim }) };
    ValueInfo { name: name.into(), r#type: Some(Type { tensor_type: Some(tensor_type) }), doc_string: doc.into() }
}

/// `t`'s blocks of `rows` rows along dimension 0 in ONNX's gate order (see the module's documentation).
fn onnx_gates(cell: Cell, t: &Tensor, rows: i64) -> Tensor {
    let order: &[i64] = match cell {
        Cell::Rnn => &[0],
        Cell::Gru => &[1, 0, 2],
        Cell::Lstm => &[0, 3, 1, 2],
    };
    Tensor::cat(&order.iter().map(|&b| t.narrow(0, b * rows, rows)).collect::<Vec<_>>(), 0)
}

/// The ONNX model of `model`, which `file` describes.
fn build(model: &Network, file: &ModelFile) -> Result<Model> {
    let config = model.config();
    let arch = config.arch;
    let (v, h, layers) = (config.vocab_size as i64, arch.hidden as i64, arch.layers as i64);
    let lstm = arch.cell == Cell::Lstm;
    let mut g = Builder::default();
    let _guard = tch::no_grad_guard();
    // The characters, step-major, and the first layer's input: embedded or one-hot.
    g.node("Transpose", &["chars"], &["chars_by_step"], vec![ints("perm", &[1, 0])]);
    match &model.named().embedding {
        Some(e) => {
            let e = g.weight("embedding", e);
            g.node("Gather", &[&e, "chars_by_step"], &["x0"], vec![int("axis", 0)]);
        }
        None => {
            let depth = g.ints("vocab_size", &[v]);
            let on_off = g.weight("one_hot_values", &Tensor::from_slice(&[0f32, 1.0]));
            g.node("OneHot", &["chars_by_step", &depth, &on_off], &["x0"], vec![int("axis", -1)]);
        }
    }
    let axis0 = g.ints("axis0", &[0]);
    let axis1 = g.ints("axis1", &[1]);
    let op = match arch.cell {
        Cell::Rnn => "RNN",
        Cell::Gru => "GRU",
        Cell::Lstm => "LSTM",
    };
    let (mut ends_h, mut ends_c) = (Vec::new(), Vec::new());
    for (l, [w_ih, w_hh, b_ih, b_hh]) in model.fused_weights().iter().enumerate() {
        let w = g.weight(&format!("w_{l}"), &onnx_gates(arch.cell, w_ih, h).unsqueeze(0));
        let r = g.weight(&format!("r_{l}"), &onnx_gates(arch.cell, w_hh, h).unsqueeze(0));
        let bias = Tensor::cat(&[onnx_gates(arch.cell, b_ih, h), onnx_gates(arch.cell, b_hh, h)], 0);
        let b = g.weight(&format!("b_{l}"), &bias.unsqueeze(0));
        // This layer's initial state: rows l..l + 1 of h0 (and c0).
        let (from, to) = (g.ints(&format!("layer{l}"), &[l as i64]), g.ints(&format!("layer{l}_end"), &[l as i64 + 1]));
        let (h0, c0) = (format!("h0_{l}"), format!("c0_{l}"));
        g.node("Slice", &["h0", &from, &to, &axis0], &[&h0], vec![]);
        if lstm {
            g.node("Slice", &["c0", &from, &to, &axis0], &[&c0], vec![]);
        }
        let (x, y, y_h, y_c) = (format!("x{l}"), format!("y{l}"), format!("h_{l}"), format!("c_{l}"));
        let mut attributes = vec![int("hidden_size", h)];
        if arch.cell == Cell::Gru {
            attributes.push(int("linear_before_reset", 1));
        }
        if lstm {
            g.node(op, &[&x, &w, &r, &b, "", &h0, &c0], &[&y, &y_h, &y_c], attributes);
        } else {
            g.node(op, &[&x, &w, &r, &b, "", &h0], &[&y, &y_h], attributes);
        }
        // Y is [steps, directions = 1, batch, H]: the next layer's input without the direction.
        g.node("Squeeze", &[&y, &axis1], &[&format!("x{}", l + 1)], vec![]);
        ends_h.push(y_h);
        ends_c.push(y_c);
    }
    let top = format!("x{layers}");
    g.node("Transpose", &[&top], &["top_by_row"], vec![ints("perm", &[1, 0, 2])]);
    let w_hq = g.weight("w_hq", &model.named().w_hq);
    let b_q = g.weight("b_q", &model.named().b_q);
    g.node("MatMul", &["top_by_row", &w_hq], &["scores"], vec![]);
    g.node("Add", &["scores", &b_q], &["logits"], vec![]);
    let ends_h: Vec<&str> = ends_h.iter().map(String::as_str).collect();
    g.node("Concat", &ends_h, &["h"], vec![int("axis", 0)]);
    if lstm {
        let ends_c: Vec<&str> = ends_c.iter().map(String::as_str).collect();
        g.node("Concat", &ends_c, &["c"], vec![int("axis", 0)]);
    }
    // Inputs and outputs.
    let (batch, steps) = (Size::Param("batch".into()), Size::Param("steps".into()));
    let state = [Size::Value(layers), batch.clone(), Size::Value(h)];
    let mut input = vec![
        value("chars", INT64, &[batch.clone(), steps.clone()], "character indices in charrnn.vocab's order"),
        value("h0", FLOAT, &state, "the hidden state before the first step (zeros to start)"),
    ];
    let mut output = vec![
        value(
            "logits",
            FLOAT,
            &[batch, steps, Size::Value(v)],
            "scores of the next character (softmax gives its probabilities)",
        ),
        value("h", FLOAT, &state, "the hidden state after the last step"),
    ];
    if lstm {
        input.push(value("c0", FLOAT, &state, "the LSTM's cell state before the first step (zeros to start)"));
        output.push(value("c", FLOAT, &state, "the LSTM's cell state after the last step"));
    }
    let graph = Graph { node: g.nodes, name: "charrnn".into(), initializer: g.initializers, input, output };
    let json = serde_json::to_string_pretty(file).map_err(|e| Error::config("--model", e.to_string()))?;
    let metadata = [
        ("charrnn.vocab", file.vocab.clone()),
        ("charrnn.keep_newlines", file.corpus.options.keep_newlines.to_string()),
        ("charrnn.model", json),
    ];
    Ok(Model {
        ir_version: IR_VERSION,
        producer_name: "charrnn".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: file.describe(),
        graph: Some(graph),
        opset_import: vec![OperatorSet { domain: String::new(), version: OPSET }],
        metadata_props: metadata.into_iter().map(|(key, value)| StringPair { key: key.into(), value }).collect(),
    })
}

/// Writes `model` (described by `file`) to `out` as an ONNX model (see the module's documentation), whole or
/// not at all; returns the file's size in bytes.
pub fn export_onnx(model: &Network, file: &ModelFile, out: &Path) -> Result<u64> {
    let bytes = build(model, file)?.encode_to_vec();
    write_bytes_atomic(out, &bytes)?;
    Ok(bytes.len() as u64)
}
