//! `quantize` and `score`: thin wrappers over [`infer_core::model::gguf::convert`] and
//! [`infer_core::Llama3::score`].

use std::path::Path;

use infer_core::model::gguf::{ConvertOptions, convert_hf_to_gguf};
use infer_core::{Error, Result, Score};

use crate::args::{QuantizeArgs, ScoreArgs};

/// `infer-cli quantize`: converts, reports fallbacks on stderr and a summary on stdout.
pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let opts = ConvertOptions { dtype: a.dtype, pre: a.pre, progress: !a.no_progress };
    let report = convert_hf_to_gguf(&a.model, &a.out, &opts)?;
    for t in report.fallbacks() {
        let want = t.fallback_from.map(|d| d.to_string()).unwrap_or_default();
        let row = t.shape.last().copied().unwrap_or_default();
        eprintln!("note: {} {:?}: rows of {row} are not whole {want} blocks; stored as {}", t.name, t.shape, t.dtype);
    }
    println!(
        "wrote {} ({} tensors, {:.1} MiB, matrices {}, {} fell back, pre-tokenizer {})",
        report.path.display(),
        report.tensors.len(),
        report.file_bytes as f64 / (1 << 20) as f64,
        a.dtype,
        report.fallbacks().count(),
        report.pre
    );
    Ok(())
}

/// Token ids from a JSON file: `[1, 2, 3]` or `{"ids": [1, 2, 3]}`.
fn read_ids(path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::InvalidArgument(format!("{}: {msg}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let arr = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => {
            o.get("ids").and_then(|x| x.as_array()).ok_or_else(|| bad("the object has no `ids` array".into()))?
        }
        _ => return Err(bad("expected an array of ids or an object with `ids`".into())),
    };
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(format!("ids[{i}] = {x} is not a token id (a non-negative integer)")))
        })
        .collect()
}

/// `infer-cli score`.
pub fn score(a: ScoreArgs) -> Result<()> {
    let mut model = crate::load(&a.model)?;
    let ids = match (&a.ids, &a.text) {
        (Some(path), _) => read_ids(path)?,
        (None, Some(text)) => model.tokenize(text, true)?,
        (None, None) => return Err(Error::InvalidArgument("give --ids FILE or --text TEXT".into())),
    };
    let t0 = std::time::Instant::now();
    let s = model.score(&ids)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if a.json {
        let v = serde_json::to_string(&s).map_err(|e| Error::InvalidArgument(format!("JSON output: {e}")))?;
        println!("{v}");
    } else {
        println!("{}", summary(&s));
    }
    eprintln!("[load {:.0} ms | scored {} tokens in {ms:.0} ms on {}]", model.load_ms(), s.tokens, model.device());
    Ok(())
}

fn summary(s: &Score) -> String {
    let n = s.positions.len();
    let agree = s.positions.iter().filter(|p| p.argmax == p.next_id).count();
    format!(
        "tokens {}, predictions {n}: perplexity {:.4}, mean NLL {:.4} nats/token, argmax agreement {agree}/{n} ({:.1}%)",
        s.tokens,
        s.perplexity,
        s.nll_mean,
        100.0 * s.argmax_agreement
    )
}
