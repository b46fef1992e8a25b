//! `infer-cli`: generate text, chat, convert checkpoints to GGUF and score token sequences with
//! Llama 3 models from the command line.

mod args;
mod serve;
mod tools;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use infer_core::model::chat::ChatMessage;
use infer_core::op::Precision;
use infer_core::{GenerateOptions, Generation, Llama3, LoadOptions};

use args::{Cli, Command, ModelArgs, SamplingArgs};
use tools::{quantize, score};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Quantize(a) => quantize(a),
        Command::Score(a) => score(a),
        Command::Serve(a) => serve::serve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn load(m: &ModelArgs) -> infer_core::Result<Llama3> {
    load_with(m, if m.precise { Precision::Exact } else { Precision::Fast })
}

/// [`load`] with an explicit CPU matmul precision.
pub(crate) fn load_with(m: &ModelArgs, precision: Precision) -> infer_core::Result<Llama3> {
    let opts = LoadOptions {
        device: m.device,
        context_length: m.context_length,
        progress: !m.no_progress,
        precision,
        repack: !m.no_repack,
    };
    match m.tensor_parallel {
        1 => Llama3::load(&m.model, opts),
        n => Llama3::load_tensor_parallel(&m.model, opts, n),
    }
}

fn options(model: &Llama3, s: &SamplingArgs) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: s.max_tokens,
        sampler: s.sampler(model.generation_defaults()),
        stop: s.stop.clone(),
        ignore_eos: s.ignore_eos,
    }
}

fn stream_to_stdout(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not abort generation with a panic.
    let _ = out.write_all(s.as_bytes()).and_then(|_| out.flush());
}

fn speed_line(g: &Generation, load_ms: f64) -> String {
    format!(
        "[load {:.0} ms | prompt {} tok, prefill {:.1} tok/s | generated {} tok, decode {:.1} tok/s | {:?}]",
        load_ms,
        g.prompt_ids.len(),
        g.prefill_tokens_per_s(),
        g.ids.len(),
        g.decode_tokens_per_s(),
        g.finish_reason
    )
}

fn generate(a: args::GenerateArgs) -> infer_core::Result<()> {
    let mut model = load(&a.model)?;
    let opts = options(&model, &a.sampling);
    let prompt_ids = if a.chat {
        let mut messages = Vec::new();
        if let Some(sys) = &a.system {
            messages.push(ChatMessage::system(sys));
        }
        messages.push(ChatMessage::user(&a.prompt));
        model.chat_prompt_ids(&messages)?
    } else {
        if a.system.is_some() {
            return Err(infer_core::Error::InvalidArgument("--system needs --chat".into()));
        }
        model.tokenize(&a.prompt, true)?
    };
    let json = a.json;
    let g = model.generate_ids(&prompt_ids, &opts, &mut |s| {
        if !json {
            stream_to_stdout(s)
        }
    })?;
    if json {
        let v = serde_json::json!({
            "prompt_ids": g.prompt_ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "load_ms": model.load_ms(),
            "prefill_tokens": g.prefill_tokens,
            "prefill_ms": g.prefill_ms,
            "prefill_tokens_per_s": g.prefill_tokens_per_s(),
            "decode_tokens": g.decode_tokens,
            "decode_ms": g.decode_ms,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        });
        println!("{v}");
    } else {
        println!();
    }
    eprintln!("{}", speed_line(&g, model.load_ms()));
    Ok(())
}

fn chat(a: args::ChatArgs) -> infer_core::Result<()> {
    let mut model = load(&a.model)?;
    let opts = options(&model, &a.sampling);
    let mut messages = Vec::new();
    if let Some(sys) = &a.system {
        messages.push(ChatMessage::system(sys));
    }
    eprintln!(
        "chat with {} ({}); /reset clears the conversation, /exit or Ctrl-D quits",
        a.model.model.display(),
        model.device()
    );
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        let n = stdin.lock().read_line(&mut line).map_err(|e| infer_core::Error::io("<stdin>", e))?;
        let input = line.trim();
        match input {
            _ if n == 0 => break,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.truncate(usize::from(a.system.is_some()));
                continue;
            }
            "" => continue,
            _ => {}
        }
        messages.push(ChatMessage::user(input));
        let g = match model.chat(&messages, &opts, &mut stream_to_stdout) {
            Ok(g) => g,
            Err(e) => {
                // A turn that cannot run (e.g. the context is full) leaves the session usable.
                messages.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        println!();
        eprintln!("{}", speed_line(&g, model.load_ms()));
        messages.push(ChatMessage::assistant(&g.text));
    }
    Ok(())
}
