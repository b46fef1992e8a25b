//! `Llama3::score` on the tiny Llama 3 fixture against the float64 golden reference:
//! teacher-forced top-1 and log-probs of the greedy continuations, perplexity, JSON shape, and
//! typed errors for bad input.

mod common;

use infer_core::{Error, Llama3, LoadOptions};

fn model(context: usize) -> Llama3 {
    let precision = infer_core::op::Precision::Exact; // compared with the float64 reference
    let opts = LoadOptions { context_length: Some(context), progress: false, precision, ..LoadOptions::default() };
    Llama3::load(common::tiny_dir(), opts).expect("tiny fixture loads")
}

/// Tolerance on a log-prob: the fixture's README puts f32 compute on its bf16 weights within
/// about 1e-3 of the float64 logits; a log-prob is a logit minus a log-sum-exp, so 5e-3.
const LOGPROB_TOL: f64 = 5e-3;

#[test]
fn golden_sequences_score_like_the_reference() {
    let mut m = model(1024);
    for case in &common::golden().cases {
        let ids: Vec<u32> = case.ids.iter().chain(&case.greedy_ids).copied().collect();
        let s = m.score(&ids).unwrap();
        assert_eq!((s.tokens, s.positions.len()), (ids.len(), ids.len() - 1));
        for (step, &g) in case.greedy_ids.iter().enumerate() {
            let p = &s.positions[case.ids.len() - 1 + step];
            assert_eq!((p.pos, p.next_id), (case.ids.len() - 1 + step, g));
            // The golden greedy id is the reference's top-1 at this step.
            assert_eq!(p.argmax, g, "{} step {step}: argmax", case.name);
            let want = case.top_logits[step][0] - case.logsumexp[step];
            assert!((p.logprob - want).abs() < LOGPROB_TOL, "{} step {step}: {} vs {want}", case.name, p.logprob);
        }
        let agree = s.positions.iter().filter(|p| p.argmax == p.next_id).count();
        assert_eq!(s.argmax_agreement, agree as f64 / (ids.len() - 1) as f64);
        assert!(agree >= case.greedy_ids.len(), "{}: every greedy step agrees", case.name);
        let nll = -s.positions.iter().map(|p| p.logprob).sum::<f64>() / s.positions.len() as f64;
        assert!((s.nll_mean - nll).abs() < 1e-12 && (s.perplexity - nll.exp()).abs() < 1e-9 * s.perplexity);
        assert!(s.perplexity.is_finite() && s.perplexity > 1.0 && s.positions.iter().all(|p| p.logprob <= 0.0));
        println!(
            "{}: {} tokens, perplexity {:.3}, argmax agreement {agree}/{}",
            case.name,
            s.tokens,
            s.perplexity,
            s.positions.len()
        );
        // The JSON form has the documented keys.
        let v = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["tokens", "positions", "nll_mean", "perplexity", "argmax_agreement"]);
        let p0: Vec<&str> = v["positions"][0].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(p0, ["pos", "next_id", "argmax", "logprob"]);
    }
    // Scoring again (the cache holds the last sequence) gives the same answer.
    let ids = &common::golden().cases[0].ids;
    assert_eq!(m.score(ids).unwrap(), m.score(ids).unwrap());
}

#[test]
fn bad_sequences_are_typed_errors() {
    let mut m = model(16);
    for (ids, want) in [
        (&[][..], "at least 2 tokens"),
        (&[128000][..], "at least 2 tokens"),
        (&[128000, 128256][..], "outside the vocabulary"),
        (&[128000, 9906, u32::MAX][..], "index 2"),
    ] {
        let e = m.score(ids).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{ids:?}: {e:?}");
        assert!(e.to_string().contains(want), "{ids:?}: {e}");
    }
    let e = m.score(&[9906; 17]).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { prompt_tokens: 17, context_length: 16, .. }), "{e:?}");
    assert!(m.score(&[9906; 16]).is_ok(), "exactly the context fits");
}
