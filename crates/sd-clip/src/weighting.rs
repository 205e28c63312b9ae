//! Prompt weighting (opt-in): "(word:1.3)", "(word)" and "\[word\]".
//!
//! Syntax, as the widespread A1111/compel convention:
//! - `(text)` multiplies the weight of `text` by 1.1, `((text))` by 1.21;
//! - `[text]` divides it by 1.1;
//! - `(text:1.3)` sets the multiplier to 1.3 (nested parentheses multiply);
//! - `\(`, `\)`, `\[`, `\]` and `\\` are literal characters.
//!
//! Each run of text is tokenized on its own and its tokens get its weight
//! (BOS, EOS and padding get 1). Rescaling rule, as diffusers'
//! long-prompt-weighting pipeline: each token's embedding (the text
//! encoder's output) is multiplied by its weight, then the whole
//! (tokens x width) block of each prompt is scaled so that its mean equals
//! the mean before weighting. So weights shift emphasis between tokens
//! without changing the overall magnitude the UNet sees.

use crate::error::{ClipError, Result};

/// One run of prompt text with its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedText {
    /// The chunk of prompt text.
    pub text: String,
    /// Its attention weight (1.0 when unweighted).
    pub weight: f64,
}

/// Splits a prompt into weighted runs. Unbalanced brackets are an error
/// naming the position.
pub fn parse(prompt: &str) -> Result<Vec<WeightedText>> {
    let mut out: Vec<WeightedText> = Vec::new();
    // Stack of (bracket char, start index in `out`, position in prompt).
    let mut stack: Vec<(char, usize, usize)> = Vec::new();
    let mut text = String::new();
    let mut chars = prompt.char_indices().peekable();
    let flush = |text: &mut String, out: &mut Vec<WeightedText>| {
        if !text.is_empty() {
            out.push(WeightedText {
                text: std::mem::take(text),
                weight: 1.0,
            });
        }
    };
    while let Some((pos, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, next)) => text.push(next),
                None => text.push('\\'),
            },
            '(' | '[' => {
                flush(&mut text, &mut out);
                stack.push((c, out.len(), pos));
            }
            ')' | ']' => {
                let open = if c == ')' { '(' } else { '[' };
                let Some((bracket, start, _)) = stack.pop() else {
                    return Err(ClipError::Weighting(format!(
                        "'{c}' at byte {pos} closes nothing"
                    )));
                };
                if bracket != open {
                    return Err(ClipError::Weighting(format!(
                        "'{c}' at byte {pos} closes a '{bracket}'"
                    )));
                }
                // "(text:1.3)": an explicit weight after the last colon.
                let mut factor = if c == ')' { 1.1 } else { 1.0 / 1.1 };
                if c == ')' {
                    if let Some((head, tail)) = text.rsplit_once(':') {
                        if let Ok(w) = tail.trim().parse::<f64>() {
                            factor = w;
                            text = head.to_string();
                        }
                    }
                }
                flush(&mut text, &mut out);
                for run in &mut out[start..] {
                    run.weight *= factor;
                }
            }
            _ => text.push(c),
        }
    }
    if let Some((bracket, _, pos)) = stack.pop() {
        return Err(ClipError::Weighting(format!(
            "'{bracket}' at byte {pos} is never closed"
        )));
    }
    flush(&mut text, &mut out);
    Ok(out)
}

/// Applies per-token `weights` (batch, tokens) to `embeddings`
/// (batch, tokens, width) with the rescaling rule of the module docs.
pub fn apply(embeddings: &tch::Tensor, weights: &tch::Tensor) -> tch::Tensor {
    let kind = embeddings.kind();
    let e = embeddings.to_kind(tch::Kind::Float);
    let dims: &[i64] = &[-2, -1];
    let before = e.mean_dim(dims, false, tch::Kind::Float);
    let weighted = &e
        * weights
            .to_kind(tch::Kind::Float)
            .to_device(e.device())
            .unsqueeze(-1);
    let after = weighted.mean_dim(dims, false, tch::Kind::Float);
    (weighted * (before / after).unsqueeze(-1).unsqueeze(-1)).to_kind(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(prompt: &str) -> Vec<(String, f64)> {
        parse(prompt)
            .unwrap()
            .into_iter()
            .map(|r| (r.text, (r.weight * 1e6).round() / 1e6))
            .collect()
    }

    #[test]
    fn weights_follow_the_convention() {
        assert_eq!(runs("a cat"), vec![("a cat".into(), 1.0)]);
        assert_eq!(
            runs("a (cat)"),
            vec![("a ".into(), 1.0), ("cat".into(), 1.1)]
        );
        assert_eq!(runs("((cat))"), vec![("cat".into(), 1.21)]);
        assert_eq!(runs("[dog]"), vec![("dog".into(), 0.909091)]);
        assert_eq!(
            runs("(red cat:1.3) on"),
            vec![("red cat".into(), 1.3), (" on".into(), 1.0)]
        );
        assert_eq!(runs("((cat:1.5))"), vec![("cat".into(), 1.65)]);
        assert_eq!(
            runs(r"a \(literal\) \[x\]"),
            vec![("a (literal) [x]".into(), 1.0)]
        );
        assert_eq!(runs("time 12:30"), vec![("time 12:30".into(), 1.0)]);
    }

    #[test]
    fn unbalanced_brackets_name_the_position() {
        assert!(parse("a (cat").unwrap_err().to_string().contains("byte 2"));
        assert!(parse("a cat)").unwrap_err().to_string().contains("byte 5"));
        assert!(parse("(a]").is_err());
    }
}
