//! Bringing a constrained reply to its end before the token budget runs out.
//!
//! The grammar guarantees a reply's shape only if generation reaches the
//! end; a model that rambles inside a value would hit `max_tokens` mid-way
//! and leave a reply that does not parse. So, as the budget nears what the
//! rest of the structure needs, the decoder writes the rest itself:
//!
//! - inside free text, the field's separator and, for every later field, its
//!   shortest valid value and separator (the text so far is kept);
//! - inside a typed (JSON) value, what closes it (a quote, brackets), or —
//!   when no such text completes it — the value is taken back to its start
//!   (the grammar engine rolls back) and replaced by its shortest value;
//! - for a bare JSON reply (`response_format`), the same for the one value;
//! - inside a tool call, what closes its JSON object and the call's closing
//!   text — or, when nothing does, the call is taken back and the shortest
//!   answer (or, when a call is required, the shortest call) written instead.
//!
//! Every closing text is checked against the grammar before it is taken, so
//! the closed reply is one the grammar accepts; the reply then ends with
//! [`FinishReason::Length`](crate::backend::FinishReason::Length). Rollback
//! never has to undo the model's KV cache: generation stops there.
//!
//! Whether the shortest values fit is checked when each value starts: a value
//! the budget could not close is not begun — it is written shortest at once.

use crate::prompt::{ClosingPlan, ConstraintMatcher, ToolClosing};

/// Tokens of slack kept beyond what the closing text needs.
const SLACK: usize = 1;

/// The part of the reply generation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before the first field's value (its opening is being written).
    Start,
    /// Inside field `index`'s value, which starts at byte `value_start`.
    Field { index: usize, value_start: usize },
    /// Inside a tool call, whose JSON object starts at byte `value_start`.
    ToolCall { value_start: usize },
}

/// The closing state of one reply.
#[derive(Debug)]
pub(super) struct Closer {
    plan: ClosingPlan,
    tool: Option<ToolClosing>,
    /// Reply bytes after each token: `boundaries[k]` after `k` tokens.
    boundaries: Vec<usize>,
    /// The last field whose start was checked for room.
    checked: Option<usize>,
    /// Tokens of each field's separator and everything after it.
    tail_tokens: Vec<Option<usize>>,
}

impl Closer {
    pub(super) fn new(plan: ClosingPlan, tool: Option<ToolClosing>) -> Self {
        let fields = match &plan {
            ClosingPlan::Fields(fields) => fields.len(),
            ClosingPlan::Json { .. } | ClosingPlan::Free => 1,
        };
        Closer {
            plan,
            tool,
            boundaries: vec![0],
            checked: None,
            tail_tokens: vec![None; fields],
        }
    }

    /// Records the reply's length after a token.
    pub(super) fn record(&mut self, reply_bytes: usize) {
        self.boundaries.push(reply_bytes);
    }

    /// Closes the reply when the budget left is what closing needs. On
    /// closing, `reply` and the matcher hold the whole reply and the token
    /// count is returned; `None` to go on.
    pub(super) fn close_if_due(
        &mut self,
        matcher: &mut ConstraintMatcher,
        reply: &mut Vec<u8>,
        generated: usize,
        max_tokens: usize,
    ) -> Option<usize> {
        let left = max_tokens.saturating_sub(generated);
        let part = self.part(reply);
        // A value starts: is there room to close it from its start?
        if let Part::Field { index, value_start } = part
            && self.checked != Some(index)
        {
            self.checked = Some(index);
            let start_tokens = self.tokens_at(value_start);
            let shortest = matcher.tokenize(&self.shortest_from(index)).len();
            if start_tokens + shortest + SLACK >= max_tokens {
                return self.roll_back_and_close(matcher, reply, part, generated, max_tokens);
            }
        }
        if matches!(part, Part::ToolCall { .. }) {
            return self.close_call_if_due(matcher, reply, part, generated, max_tokens);
        }
        if matches!(self.plan, ClosingPlan::Free) {
            return None;
        }
        // Far from the end: nothing to do (checked cheaply, per field).
        let index = match part {
            Part::Field { index, .. } => index,
            Part::Start | Part::ToolCall { .. } => 0,
        };
        let tail = self.tail_tokens(matcher, index);
        if left > tail + 2 * SLACK + 8 {
            return None;
        }
        let candidates: Vec<Vec<u32>> = self
            .continuations(reply, part)
            .iter()
            .map(|text| matcher.tokenize(text))
            .collect();
        let continuation = candidates
            .into_iter()
            .filter(|tokens| matcher.validates(tokens))
            .min_by_key(Vec::len);
        match continuation {
            // What closes the value from here no longer fits (the model
            // wrote a long token, or reached a closable point too late):
            // the value is taken back to its start, whose shortest form fits.
            Some(tokens) if tokens.len() > left => {
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            Some(tokens) if tokens.len() + SLACK >= left => {
                if matcher.accept_all(&tokens) {
                    reply.extend(tokens.iter().flat_map(|&t| matcher.token_bytes(t)));
                    return Some(generated + tokens.len());
                }
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            Some(_) => None,
            // Mid-value with no text that closes it: at the budget's last
            // token, take the value back and write its shortest form.
            None if left <= SLACK => {
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            None => None,
        }
    }

    /// Inside a tool call: near the budget's end, what closes its object
    /// and the call; when nothing does, the call taken back for the
    /// shortest answer (or call).
    fn close_call_if_due(
        &mut self,
        matcher: &mut ConstraintMatcher,
        reply: &mut Vec<u8>,
        part: Part,
        generated: usize,
        max_tokens: usize,
    ) -> Option<usize> {
        let left = max_tokens.saturating_sub(generated);
        let tool = self.tool.as_ref()?;
        let closing_tokens = matcher.tokenize(&tool.closing).len();
        if left > closing_tokens + 2 * SLACK + 8 {
            return None;
        }
        let Part::ToolCall { value_start } = part else {
            return None;
        };
        let value = String::from_utf8_lossy(&reply[value_start.min(reply.len())..]);
        let continuation = json_completion(&value)
            .map(|close| matcher.tokenize(&format!("{close}{}", tool.closing)))
            .filter(|tokens| matcher.validates(tokens));
        match continuation {
            Some(tokens) if tokens.len() + SLACK >= left && tokens.len() <= left => {
                if matcher.accept_all(&tokens) {
                    reply.extend(tokens.iter().flat_map(|&t| matcher.token_bytes(t)));
                    return Some(generated + tokens.len());
                }
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            Some(tokens) if tokens.len() > left => {
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            Some(_) => None,
            None if left <= SLACK => {
                self.roll_back_and_close(matcher, reply, part, generated, max_tokens)
            }
            None => None,
        }
    }

    /// The shortest whole reply: the fields' shortest answer, or, when only
    /// a call may stand, the shortest call; `None` for a bare JSON value or
    /// free text, whose shortest form the grammar alone knows.
    fn shortest_whole(&self) -> Option<String> {
        let answer_allowed = self.tool.as_ref().is_none_or(|t| t.answer_allowed);
        match (&self.plan, answer_allowed) {
            (ClosingPlan::Fields(_), true) => Some(self.continuations(&[], Part::Start).concat()),
            (_, false) => self.tool.as_ref().and_then(|t| t.minimal.clone()),
            (ClosingPlan::Json { .. } | ClosingPlan::Free, true) => None,
        }
    }

    /// Tokens of the shortest whole reply (`None` when only the grammar
    /// knows it).
    pub(super) fn shortest_reply_tokens(&self, matcher: &ConstraintMatcher) -> Option<usize> {
        self.shortest_whole()
            .map(|text| matcher.tokenize(&text).len())
    }

    /// How much of `reply` may be streamed: not a typed value still being
    /// written, which closing might take back.
    pub(super) fn stream_limit(&self, reply: &[u8]) -> usize {
        match (self.part(reply), &self.plan) {
            (Part::Field { index, value_start }, ClosingPlan::Fields(fields))
                if fields.get(index).is_some_and(|f| !f.is_text) =>
            {
                value_start
            }
            (Part::Field { value_start, .. }, ClosingPlan::Json { .. }) => value_start,
            // A call is shown whole or not at all.
            (Part::ToolCall { .. }, _) => 0,
            _ => reply.len(),
        }
    }

    /// Where generation is: in a tool call, or the last field whose
    /// opening the reply holds.
    fn part(&self, reply: &[u8]) -> Part {
        if let Some(tool) = &self.tool {
            let opening = tool.opening.as_bytes();
            let in_call = if opening.is_empty() {
                // A bare JSON call: no answer of a DSPy reply starts with `{`.
                !matches!(self.plan, ClosingPlan::Json { .. }) && reply.first() == Some(&b'{')
            } else {
                reply.starts_with(opening)
            };
            if in_call {
                return Part::ToolCall {
                    value_start: opening.len(),
                };
            }
        }
        match &self.plan {
            ClosingPlan::Json { .. } | ClosingPlan::Free => Part::Field {
                index: 0,
                value_start: 0,
            },
            ClosingPlan::Fields(fields) => fields
                .iter()
                .enumerate()
                .rev()
                .find_map(|(index, field)| {
                    find_last(reply, field.opening.as_bytes()).map(|at| Part::Field {
                        index,
                        value_start: at + field.opening.len(),
                    })
                })
                .unwrap_or(Part::Start),
        }
    }

    /// Tokens generated before byte `at` (the last token boundary at or before it).
    fn tokens_at(&self, at: usize) -> usize {
        self.boundaries.iter().rposition(|&b| b <= at).unwrap_or(0)
    }

    /// Field `index`'s shortest value, then the rest of the reply.
    fn shortest_from(&self, index: usize) -> String {
        match &self.plan {
            ClosingPlan::Fields(fields) => {
                let minimal = fields.get(index).map_or("", |f| f.minimal.as_str());
                format!("{minimal}{}", self.plan.rest_after(index))
            }
            ClosingPlan::Json { minimal } => minimal.clone().unwrap_or_default(),
            ClosingPlan::Free => String::new(),
        }
    }

    /// Tokens of field `index`'s separator and all that follows (cached).
    fn tail_tokens(&mut self, matcher: &ConstraintMatcher, index: usize) -> usize {
        if let Some(Some(n)) = self.tail_tokens.get(index) {
            return *n;
        }
        let n = matcher.tokenize(&self.shortest_from(index)).len();
        if let Some(slot) = self.tail_tokens.get_mut(index) {
            *slot = Some(n);
        }
        n
    }

    /// Texts that would end the reply from here without taking anything back.
    fn continuations(&self, reply: &[u8], part: Part) -> Vec<String> {
        match (&self.plan, part) {
            (ClosingPlan::Fields(fields), Part::Start) => {
                let Some(first) = fields.first() else {
                    return Vec::new();
                };
                let opening = remainder(reply, &first.opening);
                vec![format!("{opening}{}", self.shortest_from(0))]
            }
            (ClosingPlan::Fields(fields), Part::Field { index, value_start }) => {
                let Some(field) = fields.get(index) else {
                    return Vec::new();
                };
                let value = String::from_utf8_lossy(&reply[value_start.min(reply.len())..]);
                let after = self.plan.rest_after(index);
                let tail = &after[field.separator.len()..];
                let mut texts = Vec::new();
                if field.is_text && value.trim().is_empty() {
                    texts.push(format!("{}{after}", field.minimal));
                } else {
                    texts.push(format!("{}{tail}", remainder(reply, &field.separator)));
                }
                if !field.is_text
                    && let Some(close) = json_completion(&value)
                {
                    texts.push(format!("{close}{after}"));
                }
                texts
            }
            (ClosingPlan::Json { .. }, _) => {
                let value = String::from_utf8_lossy(reply);
                json_completion(&value).into_iter().collect()
            }
            (ClosingPlan::Free, _) | (_, Part::ToolCall { .. }) => Vec::new(),
        }
    }

    /// Takes the current value back to its start and writes its shortest
    /// form and the rest; `None` (nothing changed) when that does not fit
    /// `max_tokens`, or the grammar refuses it.
    fn roll_back_and_close(
        &self,
        matcher: &mut ConstraintMatcher,
        reply: &mut Vec<u8>,
        part: Part,
        generated: usize,
        max_tokens: usize,
    ) -> Option<usize> {
        let (value_start, text) = match part {
            Part::Field { index, value_start } => (value_start, self.shortest_from(index)),
            Part::Start | Part::ToolCall { .. } => (0, self.shortest_whole()?),
        };
        let keep = self.tokens_at(value_start);
        let boundary = self.boundaries.get(keep).copied().unwrap_or(0);
        // Bytes between the token boundary and the value's start (the end of
        // its opening, written in the same token as the value) are written again.
        let reopened = String::from_utf8_lossy(&reply[boundary..value_start.min(reply.len())]);
        let tokens = matcher.tokenize(&format!("{reopened}{text}"));
        if keep + tokens.len() > max_tokens || !matcher.rollback(generated - keep) {
            return None;
        }
        if !matcher.accept_all(&tokens) {
            // The grammar refused the shortest value: the reply stays cut
            // where it was taken back to (it ends at the budget, unparsed).
            return None;
        }
        reply.truncate(boundary);
        reply.extend(tokens.iter().flat_map(|&t| matcher.token_bytes(t)));
        Some(keep + tokens.len())
    }
}

/// What is left of `separator` after the longest part of it that `reply`
/// already ends with.
fn remainder<'a>(reply: &[u8], separator: &'a str) -> &'a str {
    let written = (0..=separator.len())
        .rev()
        .filter(|&k| separator.is_char_boundary(k))
        .find(|&k| reply.ends_with(&separator.as_bytes()[..k]))
        .unwrap_or(0);
    &separator[written..]
}

/// The last position of `needle` in `haystack`.
fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Text that completes a JSON value cut off at the end of `partial`: the
/// open string's quote and the open containers' brackets, or `None` when
/// it stops where only more content could follow (after `,` or `:`, in a
/// number or literal's middle). The grammar has the last word.
pub(super) fn json_completion(partial: &str) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Frame {
        Object { expecting_key: bool },
        Array,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut last = None::<char>;
    for c in partial.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    last = Some('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => stack.push(Frame::Object {
                expecting_key: true,
            }),
            '[' => stack.push(Frame::Array),
            '}' | ']' => {
                stack.pop();
            }
            ',' => {
                if let Some(Frame::Object { expecting_key }) = stack.last_mut() {
                    *expecting_key = true;
                }
            }
            ':' => {
                if let Some(Frame::Object { expecting_key }) = stack.last_mut() {
                    *expecting_key = false;
                }
            }
            _ => {}
        }
        if !c.is_whitespace() && c != '"' {
            last = Some(c);
        }
    }
    let mut close = String::new();
    if in_string {
        if escaped {
            return None;
        }
        close.push('"');
        last = Some('"');
        // A key closed here still needs a value.
        if let Some(Frame::Object {
            expecting_key: true,
        }) = stack.last()
        {
            close.push_str(":null");
        }
    }
    match last {
        None => return None,
        Some(',' | ':') => return None,
        Some('"' | '{' | '[' | '}' | ']') => {}
        // A number or literal: complete only if it already is one.
        Some(_) => {
            let token: String = partial
                .chars()
                .rev()
                .take_while(|c| !matches!(c, ',' | ':' | '[' | '{' | ' '))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let complete = matches!(token.as_str(), "true" | "false" | "null")
                || token
                    .parse::<f64>()
                    .is_ok_and(|_| !token.ends_with(['.', 'e', 'E', '-', '+']));
            if !complete {
                return None;
            }
        }
    }
    for frame in stack.iter().rev() {
        close.push(match frame {
            Frame::Object { .. } => '}',
            Frame::Array => ']',
        });
    }
    Some(close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_is_completed_where_text_can_complete_it() {
        assert_eq!(json_completion(r#"["a", "b"#).as_deref(), Some(r#""]"#));
        assert_eq!(
            json_completion(r#"{"name": "Par"#).as_deref(),
            Some(r#""}"#)
        );
        assert_eq!(json_completion(r#"{"na"#).as_deref(), Some(r#"":null}"#));
        assert_eq!(json_completion(r#"{"a": [1, 2"#).as_deref(), Some("]}"));
        assert_eq!(json_completion(r#"{"a": true"#).as_deref(), Some("}"));
        assert_eq!(json_completion(r#"{"a": tr"#), None);
        assert_eq!(json_completion(r#"[1,"#), None);
        assert_eq!(json_completion(r#"{"a":"#), None);
        assert_eq!(json_completion("12."), None);
        assert_eq!(json_completion("12").as_deref(), Some(""));
        assert_eq!(json_completion(r#""esc\"#), None);
    }

    #[test]
    fn the_remainder_of_a_separator_is_what_the_reply_has_not_written() {
        assert_eq!(
            remainder(b"Paris\n\n[[ ##", "\n\n[[ ## x ## ]]\n"),
            " x ## ]]\n"
        );
        assert_eq!(
            remainder(b"Paris", "\n\n[[ ## x ## ]]\n"),
            "\n\n[[ ## x ## ]]\n"
        );
        assert_eq!(remainder(b"", "ab"), "ab");
    }
}
