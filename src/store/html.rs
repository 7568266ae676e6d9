//! A model as one self-contained HTML page that generates text in the browser, with no server and no
//! network: the page (`export_page.html`) computes the network in JavaScript from the weights written into
//! it (little-endian float32, base64), and samples greedily or with a temperature, top-k, top-p and a seed.
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::store::format::ModelFile;
use crate::util::write_bytes_atomic;
use base64::Engine;
use std::path::Path;
use tch::{Kind, Tensor};

/// The page, with `/*PAGE_STYLE*/`, `TITLE` and `MODEL_JSON` to fill in.
const PAGE: &str = include_str!("export_page.html");

/// The style sheet rules that `charrnn serve`'s page and the exported page share, for their `/*PAGE_STYLE*/`.
pub(crate) const PAGE_STYLE: &str = include_str!("page_style.css");

/// Text made safe inside HTML elements.
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The page's model object: its settings, and every tensor's place (offset and length, in floats) in the
/// weights, which follow as base64: per layer `w_ih_<l>`, `w_hh_<l>`, `b_ih_<l>`, `b_hh_<l>` in PyTorch's
/// order and shapes (row-major), then `E` with an embedding, `W_hq` `[H, V]` and `b_q` `[V]`.
fn model_json(model: &Network, file: &ModelFile) -> Result<String> {
    let _guard = tch::no_grad_guard();
    let mut tensors = serde_json::Map::new();
    let mut values: Vec<f32> = Vec::new();
    let mut put = |name: String, t: &Tensor| {
        let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().reshape([-1])).expect("Float values");
        tensors.insert(name, serde_json::json!([values.len(), v.len()]));
        values.extend(v);
    };
    for (l, [w_ih, w_hh, b_ih, b_hh]) in model.fused_weights().iter().enumerate() {
        put(format!("w_ih_{l}"), w_ih);
        put(format!("w_hh_{l}"), w_hh);
        put(format!("b_ih_{l}"), b_ih);
        put(format!("b_hh_{l}"), b_hh);
    }
    let named = model.named();
    if let Some(e) = &named.embedding {
        put("E".into(), e);
    }
    put("W_hq".into(), &named.w_hq);
    put("b_q".into(), &named.b_q);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let arch = &file.model.arch;
    let json = serde_json::json!({
        "cell": arch.cell.to_string(),
        "layers": arch.layers,
        "hidden": arch.hidden,
        "embed": arch.embed,
        "vocab": file.vocab,
        "keep_newlines": file.corpus.options.keep_newlines,
        "description": file.describe(),
        "tensors": tensors,
        "weights": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    let text = serde_json::to_string(&json).map_err(|e| Error::config("--html", e.to_string()))?;
    // Inside <script>, no "</script>" may appear: '<' only occurs in JSON strings, where \u003c means it.
    Ok(text.replace('<', "\\u003c"))
}

/// Writes `model` (described by `file`) to `out` as one HTML page that generates text offline (see the
/// module's documentation), whole or not at all; returns its size in bytes.
pub fn export_html(model: &Network, file: &ModelFile, out: &Path) -> Result<u64> {
    let (top, head) = PAGE.split_once("/*PAGE_STYLE*/").expect("the page has a style sheet");
    let head = [top, PAGE_STYLE, head].concat();
    let (head, rest) = head.split_once("TITLE").expect("the page has a title");
    let (middle, tail) = rest.split_once("MODEL_JSON").expect("the page has the model's place");
    let page = [head, &html_text(&file.describe()), middle, &model_json(model, file)?, tail].concat();
    write_bytes_atomic(out, page.as_bytes())?;
    Ok(page.len() as u64)
}
