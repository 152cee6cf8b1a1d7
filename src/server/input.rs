//! One input's pre-processing and tokenization, bounded by the input limit: a long text
//! is cut by characters before it is tokenized, so its cost follows the limit, not the
//! text (see [`LoadedModel::encode`]).

use super::config::InputOverflow;
use super::error::{ApiError, ErrorKind};
use super::pool::LoadedModel;
use crate::tokenizer::InputError;

/// Characters of input read per allowed token on the first try (see
/// [`LoadedModel::encode`]): English runs at about 4-5 characters per WordPiece or BPE
/// token, so one try almost always suffices.
const CHARS_PER_TOKEN: usize = 8;
/// Most characters read per allowed token: an input longer than this is cut by characters
/// (and, with `input_overflow = "reject"`, refused) without reading the rest.
pub const MAX_CHARS_PER_TOKEN: usize = 64;

/// The first `chars` characters of `text`, or `None` when it is no longer.
fn char_prefix(text: &str, chars: usize) -> Option<&str> {
    text.char_indices().nth(chars).map(|(at, _)| &text[..at])
}

/// `head` up to the start of its last whitespace run: what precedes a word boundary of the
/// full text, so every word in it is tokenized as in the full text. `None` without one.
fn before_last_whitespace(head: &str) -> Option<&str> {
    let at = head.rfind(char::is_whitespace)?;
    let words = head[..at].trim_end();
    (!words.is_empty()).then_some(words)
}

impl LoadedModel {
    /// Pre-processes and tokenizes one input (blocking; CPU work), reading no more of a
    /// long text than the input limit needs.
    ///
    /// The text is cut by characters before tokenizing: the first try keeps
    /// `max_input_tokens` × [`CHARS_PER_TOKEN`] characters, up to the last word boundary.
    /// When that part alone tokenizes to more than `max_input_tokens`, the full text would
    /// be truncated (or rejected) at the same tokens: its words are tokenized alike, and the
    /// suffix and everything after the cut lie beyond the limit. Otherwise the part is
    /// doubled and tried again, up to [`MAX_CHARS_PER_TOKEN`] characters per token, where
    /// the text is cut there by characters (truncate) or refused (reject). A text within
    /// the first part is tokenized whole, exactly as before. So a 1 MB text costs the
    /// tokenization of a few thousand characters, not of a megabyte.
    pub fn encode(
        &self,
        index: usize,
        text: &str,
        overflow: InputOverflow,
    ) -> Result<Vec<u32>, ApiError> {
        let pre = &self.config.preprocess;
        let max = self.max_input_tokens;
        // Linear and cheap: applied to the whole text, so no rule is split by the cut.
        let body = pre.replaced(text);
        let cap = max.saturating_mul(MAX_CHARS_PER_TOKEN);
        let mut budget = max.saturating_mul(CHARS_PER_TOKEN).min(cap);
        loop {
            let Some(head) = char_prefix(&body, budget) else {
                let whole = format!("{}{body}{}", pre.prefix, pre.suffix);
                return self.encode_whole(index, &whole, overflow);
            };
            if budget >= cap {
                return self.encode_cut(index, head, None, overflow);
            }
            if let Some(words) = before_last_whitespace(head) {
                let n = self.count_tokens(index, &format!("{}{words}", pre.prefix))?;
                if n > max {
                    return self.encode_cut(index, words, Some(n), overflow);
                }
            }
            budget = budget.saturating_mul(2).min(cap);
        }
    }

    /// A text within the first try: tokenized whole.
    fn encode_whole(
        &self,
        index: usize,
        text: &str,
        overflow: InputOverflow,
    ) -> Result<Vec<u32>, ApiError> {
        if overflow == InputOverflow::Reject {
            let n = self.count_tokens(index, text)?;
            if n > self.max_input_tokens {
                return Err(self.too_long(index, format!("has {n} tokens")));
            }
        }
        self.engine
            .encode(text, Some(self.max_input_tokens))
            .map_err(|e| input_error(index, e))
    }

    /// A text cut before tokenizing at `kept` (`counted` tokens with the prefix, more than
    /// the limit; `None`: cut at the character cap).
    fn encode_cut(
        &self,
        index: usize,
        kept: &str,
        counted: Option<usize>,
        overflow: InputOverflow,
    ) -> Result<Vec<u32>, ApiError> {
        if overflow == InputOverflow::Reject {
            let what = match counted {
                Some(n) => format!(
                    "has more than {} tokens ({n} in its first {} characters)",
                    self.max_input_tokens,
                    kept.chars().count()
                ),
                None => format!("is longer than {} characters", kept.chars().count()),
            };
            return Err(self.too_long(index, what));
        }
        // No suffix: it lies beyond the limit, as in the truncated full text.
        let text = format!("{}{kept}", self.config.preprocess.prefix);
        self.engine
            .encode(&text, Some(self.max_input_tokens))
            .map_err(|e| input_error(index, e))
    }

    fn count_tokens(&self, index: usize, text: &str) -> Result<usize, ApiError> {
        self.engine
            .tokenizers()
            .count_tokens(text)
            .map_err(|e| input_error(index, e))
    }

    fn too_long(&self, index: usize, what: String) -> ApiError {
        ApiError::new(
            ErrorKind::InputTooLong,
            format!(
                "inputs[{index}] {what}; model `{}` takes at most {} tokens",
                self.name(),
                self.max_input_tokens
            ),
        )
    }
}

fn input_error(index: usize, e: InputError) -> ApiError {
    match e {
        InputError::Empty => ApiError::new(
            ErrorKind::EmptyInput,
            format!("inputs[{index}] encodes to no tokens"),
        ),
        InputError::Tokenizer(msg) => {
            ApiError::validation(format!("inputs[{index}] cannot be tokenized: {msg}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_whole_words() {
        assert_eq!(char_prefix("héllo", 5), None);
        assert_eq!(char_prefix("héllo wörld", 7), Some("héllo w"));
        assert_eq!(before_last_whitespace("héllo  wö"), Some("héllo"));
        assert_eq!(before_last_whitespace("a b\tc d"), Some("a b\tc"));
        assert_eq!(before_last_whitespace("   word"), None);
        assert_eq!(before_last_whitespace("nowhitespace"), None);
    }
}
