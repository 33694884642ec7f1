//! The model card `sener train` writes into every model folder: `README.md` with the Hugging Face
//! Hub front matter (`library_name`, `license`, `base_model`, `datasets`, `metrics`,
//! `pipeline_tag`, `model-index` with the held-out scores), then what the model extracts, how it
//! cuts raw text, how it was trained and how to use it.

use std::fmt::Write;

use super::trainer::TrainConfig;
use crate::metric::MetricResult;
use crate::model::SenerConfig;

/// What the card reports about the run.
pub struct CardInfo<'a> {
    pub train: &'a TrainConfig,
    pub model: &'a SenerConfig,
    /// The held-out (dev) metric of the saved model and what it was measured on.
    pub dev: Option<(&'a MetricResult, String)>,
    pub steps: usize,
    pub epoch: Option<usize>,
    pub train_documents: usize,
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The Markdown model card.
pub fn model_card(c: &CardInfo) -> String {
    let cfg = c.train;
    let m = c.model;
    let name = cfg.output.file_name().and_then(|s| s.to_str()).unwrap_or("sener-model");
    let base = m
        .base
        .finetuned_from
        .as_deref()
        .unwrap_or(&m.base)
        .hub
        .as_deref()
        .map(|h| h.split('@').next().unwrap_or(h).to_string())
        .unwrap_or_else(|| cfg.base.file_name().and_then(|s| s.to_str()).unwrap_or("unknown").to_string());
    let dataset = cfg.train.file_stem().and_then(|s| s.to_str()).unwrap_or("custom").to_string();
    let mut s = String::new();
    s.push_str("---\n");
    s.push_str("library_name: sener\n");
    let _ = writeln!(s, "license: {}", cfg.license.as_deref().unwrap_or("other"));
    let _ = writeln!(s, "base_model: {}", yaml_str(&base));
    let _ = writeln!(s, "datasets:\n  - {}", yaml_str(&dataset));
    s.push_str("metrics:\n  - f1\n  - precision\n  - recall\n");
    s.push_str("pipeline_tag: token-classification\n");
    s.push_str("tags:\n  - named-entity-recognition\n  - long-document\n  - sener\n");
    if let Some((r, what)) = &c.dev {
        let _ = writeln!(s, "model-index:\n  - name: {}\n    results:\n      - task:\n          type: token-classification\n          name: Named-entity recognition", yaml_str(name));
        let _ = writeln!(s, "        dataset:\n          name: {}\n          type: {}\n          split: {}", yaml_str(&dataset), yaml_str(&dataset), yaml_str(what));
        s.push_str("        metrics:\n");
        for (ty, v) in [("f1", r.micro.f1), ("precision", r.micro.precision), ("recall", r.micro.recall)] {
            let _ = writeln!(s, "          - type: {ty}\n            value: {:.4}\n            name: micro {ty}", v * 100.0);
        }
    }
    s.push_str("---\n\n");
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "A [SeNER](https://arxiv.org/abs/2502.07286) long-document entity extractor trained with `sener train` (sener {}): \
         the encoder `{base}` with arrow attention (window {}), {}, and the span side (w′ = {} words, so entities of up to {} words; \
         {} BiSPA blocks). It extracts {} types: {}.\n",
        env!("CARGO_PKG_VERSION"),
        m.arrow.window,
        match (&m.lora, m.base.finetuned_from.is_some()) {
            (_, true) => "fully fine-tuned (the model carries its encoder in `encoder/`)".to_string(),
            (Some(l), _) => {
                let on = if l.targets.iter().map(String::as_str).eq(["query", "value"]) {
                    "Q and V".to_string()
                } else if l.targets.len() == crate::encoder::lora::TARGETS.len() {
                    "every linear layer of the encoder".to_string()
                } else {
                    l.targets.join(", ")
                };
                format!("LoRA r {} / α {} on {on}", l.r, l.alpha)
            }
            (None, _) => "a frozen encoder".to_string(),
        },
        m.span.window,
        m.span.window + 1,
        m.span.cnn_depth,
        m.labels.len(),
        m.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        s,
        "Raw text is cut into words with the `{}` splitter, the convention of the training data's own words, and segments hold at most {} subword tokens.{}\n",
        m.splitter,
        m.max_len,
        match &m.thresholds {
            Some(t) => format!(
                " Decision thresholds, calibrated per type on held-out documents: {}.",
                m.labels.iter().zip(t).map(|(l, t)| format!("{l} {t}")).collect::<Vec<_>>().join(", ")
            ),
            None => " Decision threshold 0.5.".to_string(),
        }
    );
    s.push_str("## Use\n\n```bash\n");
    let _ = writeln!(s, "sener extract --model ORG/{name} document.txt          # or a local folder");
    let _ = writeln!(s, "sener serve --model ORG/{name} --addr 127.0.0.1:8080");
    s.push_str("```\n\n");
    s.push_str("## Training\n\n");
    let _ = writeln!(
        s,
        "Recipe `{}`: {} training documents from `{}`; the kept model after {} optimiser steps of {} segments{}, learning rates {} (encoder side) and {} (new layers), seed {}. The effective configuration is `train.json` beside this card when the folder was published with it.\n",
        cfg.recipe.as_str(),
        c.train_documents,
        cfg.train.display(),
        c.steps,
        cfg.batch_size,
        c.epoch.map(|e| format!(" (held-out epoch {}, counting from 1)", e + 1)).unwrap_or_default(),
        cfg.lr_encoder,
        cfg.lr_new,
        cfg.seed
    );
    if let Some(from) = &cfg.init_from {
        let _ = writeln!(
            s,
            "The run started from the trained model `{}` (`--init-from`: its adapter and span layers, and its type head when the types are the same), so these steps come on top of that model's own training.\n",
            from.display()
        );
    }
    if let Some((r, what)) = &c.dev {
        let pct = |x: f64| format!("{:.2}", 100.0 * x);
        let _ = writeln!(s, "## Evaluation ({what}, official metric: exact span and type)\n");
        s.push_str("| type | P | R | F1 | gold | predicted | correct |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(s, "| **micro** | {} | {} | {} | {} | {} | {} |", pct(r.micro.precision), pct(r.micro.recall), pct(r.micro.f1), r.micro.gold, r.micro.pred, r.micro.tp);
        for (t, p) in &r.per_type {
            let _ = writeln!(s, "| {t} | {} | {} | {} | {} | {} | {} |", pct(p.precision), pct(p.recall), pct(p.f1), p.gold, p.pred, p.tp);
        }
        s.push('\n');
    }
    s.push_str("## Upload\n\n```bash\nhuggingface-cli upload ORG/");
    let _ = write!(s, "{name} {} .\n```\n", cfg.output.display());
    s
}
