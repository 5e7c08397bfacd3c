//! Text policy over OCR lines and speech transcripts: contact details, off-platform payment requests,
//! profanity. Rules are data (`[[text_rules]]` in the policy) so a deployment can add a language or a
//! messenger without a rebuild; they are compiled once into a [`RegexSet`] (one pass answers "which rules
//! can match at all?") plus one [`Regex`] per rule for the spans.

use std::collections::HashSet;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use crate::verdict::{Label, Severity};

/// One rule: either a regular expression (`pattern`) or a word list (`words`).
///
/// Word lists match whole words, case-insensitively; a word's edge that is a CJK character needs no
/// boundary (Chinese and Japanese are written without spaces). With `obfuscation = true`, common
/// disguises of ASCII words also match ("sh1t", "f*ck", "f.u.c.k", "a$$hole").
///
/// `context`, when given, must also match within `context_window` characters of the hit; it keeps rules
/// that are only suspicious near a cue (seven spoken digits near "phone") quiet in ordinary lessons
/// (counting "one two three four five six seven"). `exclude`, when given, drops a hit whose matched
/// text it matches: the regex engine has no look-around, so known innocent phrases are listed there
/// ("look at the dot com bubble" is not an e-mail address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRule {
    pub id: String,
    pub label: Label,
    /// ISO 639-1 code (`en`, `zh`, ...) or `any`; see [`TextPolicy::scan_lang`].
    #[serde(default = "any_lang")]
    pub lang: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    #[serde(default)]
    pub obfuscation: bool,
    #[serde(default)]
    pub case_sensitive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default = "default_context_window")]
    pub context_window: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
}

fn any_lang() -> String {
    "any".to_string()
}

fn default_context_window() -> usize {
    80
}

/// A rule that matched. `span` is a byte range of the scanned text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextHit {
    pub rule_id: String,
    pub label: Label,
    pub severity: Severity,
    pub matched: String,
    pub span: (usize, usize),
}

/// Why a rule did not compile; `field` is e.g. `text_rules[3].pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Compiled {
    id: String,
    label: Label,
    lang: String,
    severity: Severity,
    re: Regex,
    /// Word-list rule: check word boundaries in code (see [`bounded`]).
    words: bool,
    context: Option<(Regex, usize)>,
    exclude: Option<Regex>,
}

/// Compiled text rules.
#[derive(Debug, Clone)]
pub struct TextPolicy {
    set: RegexSet,
    rules: Vec<Compiled>,
}

impl Default for TextPolicy {
    fn default() -> Self {
        TextPolicy {
            set: RegexSet::empty(),
            rules: Vec::new(),
        }
    }
}

/// Compiled-size ceiling per regex: Unicode case folding of large classes needs more than the default.
const SIZE_LIMIT: usize = 64 << 20;

impl TextPolicy {
    pub fn compile(rules: &[TextRule]) -> Result<TextPolicy, RuleError> {
        let mut seen = HashSet::new();
        let mut compiled = Vec::with_capacity(rules.len());
        let mut sources = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let err = |f: &str, message: String| RuleError {
                field: format!("text_rules[{i}].{f}"),
                message,
            };
            if r.id.trim().is_empty() {
                return Err(err("id", "must not be empty".into()));
            }
            if !seen.insert(r.id.as_str()) {
                return Err(err("id", format!("duplicate rule id `{}`", r.id)));
            }
            if !valid_lang(&r.lang) {
                return Err(err(
                    "lang",
                    format!("`{}` is not `any` or a language code like `en`", r.lang),
                ));
            }
            let flags = if r.case_sensitive { "" } else { "(?i)" };
            let (field, body) = match (&r.pattern, r.words.is_empty()) {
                (Some(p), true) => ("pattern", p.clone()),
                (None, false) => {
                    if let Some(w) = r.words.iter().position(|w| w.trim().is_empty()) {
                        return Err(err(&format!("words[{w}]"), "must not be empty".into()));
                    }
                    ("words", words_pattern(&r.words, r.obfuscation))
                }
                _ => {
                    return Err(err(
                        "pattern",
                        "give exactly one of `pattern` or `words`".into(),
                    ))
                }
            };
            let source = format!("{flags}(?:{body})");
            let re = build(&source).map_err(|e| err(field, e))?;
            if re.is_match("") {
                return Err(err(field, "matches the empty string".into()));
            }
            let context = match &r.context {
                None => None,
                Some(c) => {
                    if r.context_window == 0 {
                        return Err(err("context_window", "must be greater than 0".into()));
                    }
                    Some((
                        build(&format!("{flags}(?:{c})")).map_err(|e| err("context", e))?,
                        r.context_window,
                    ))
                }
            };
            let exclude = match &r.exclude {
                None => None,
                Some(x) => Some(build(&format!("{flags}(?:{x})")).map_err(|e| err("exclude", e))?),
            };
            sources.push(source);
            compiled.push(Compiled {
                id: r.id.clone(),
                label: r.label,
                lang: r.lang.clone(),
                severity: r.severity,
                re,
                words: r.pattern.is_none(),
                context,
                exclude,
            });
        }
        let set = RegexSetBuilder::new(&sources)
            .size_limit(SIZE_LIMIT.saturating_mul(4))
            .build()
            .map_err(|e| RuleError {
                field: "text_rules".into(),
                message: e.to_string(),
            })?;
        Ok(TextPolicy {
            set,
            rules: compiled,
        })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// All rules, whatever their language (OCR lines often mix languages).
    pub fn scan(&self, text: &str) -> Vec<TextHit> {
        self.scan_where(text, |_| true)
    }

    /// Rules for `lang` (e.g. the language Whisper detected) plus the `any` rules.
    pub fn scan_lang(&self, text: &str, lang: &str) -> Vec<TextHit> {
        self.scan_where(text, |r| {
            r.lang == "any" || r.lang.eq_ignore_ascii_case(lang)
        })
    }

    fn scan_where(&self, text: &str, keep: impl Fn(&Compiled) -> bool) -> Vec<TextHit> {
        let mut hits = Vec::new();
        if self.rules.is_empty() || text.is_empty() {
            return hits;
        }
        for idx in self.set.matches(text).iter() {
            let rule = &self.rules[idx];
            if !keep(rule) {
                continue;
            }
            let mut pos = 0;
            while let Some(m) = rule.re.find_at(text, pos) {
                let ok = !m.is_empty()
                    && (!rule.words || bounded(text, m.start(), m.end()))
                    && rule
                        .context
                        .as_ref()
                        .is_none_or(|(c, w)| near(c, *w, text, m.start(), m.end()))
                    && rule
                        .exclude
                        .as_ref()
                        .is_none_or(|x| !x.is_match(m.as_str()));
                if ok {
                    hits.push(TextHit {
                        rule_id: rule.id.clone(),
                        label: rule.label,
                        severity: rule.severity,
                        matched: m.as_str().to_string(),
                        span: (m.start(), m.end()),
                    });
                    pos = m.end();
                } else {
                    // Retry from the next character: a rejected match may hide a valid one inside it.
                    match text[m.start()..].chars().next() {
                        Some(c) => pos = m.start() + c.len_utf8(),
                        None => break,
                    }
                }
                if pos >= text.len() {
                    break;
                }
            }
        }
        dedup(hits)
    }
}

fn build(source: &str) -> Result<Regex, String> {
    RegexBuilder::new(source)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

fn valid_lang(lang: &str) -> bool {
    lang == "any" || {
        let mut parts = lang.splitn(2, '-');
        let primary = parts.next().unwrap_or("");
        (2..=3).contains(&primary.len())
            && primary.bytes().all(|b| b.is_ascii_lowercase())
            && parts
                .next()
                .is_none_or(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    }
}

/// Alternation of the words, longest first so that "fucking" wins over "fuck" at the same position.
fn words_pattern(words: &[String], obfuscation: bool) -> String {
    let mut ws: Vec<&str> = words.iter().map(|w| w.trim()).collect();
    ws.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    ws.dedup();
    ws.iter()
        .map(|w| word_pattern(w, obfuscation))
        .collect::<Vec<_>>()
        .join("|")
}

fn word_pattern(word: &str, obfuscation: bool) -> String {
    let mut out = String::new();
    let mut prev_letter = false;
    for part in word.split_whitespace() {
        if !out.is_empty() {
            out.push_str(r"\s+");
            prev_letter = false;
        }
        for c in part.chars() {
            if obfuscation && c.is_ascii_alphanumeric() {
                if prev_letter {
                    out.push_str(r"[._\-]?");
                }
                out.push_str(&disguises(c));
                prev_letter = true;
            } else {
                out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
                prev_letter = false;
            }
        }
    }
    out
}

/// Look-alike characters people type to slip a word past a filter.
fn disguises(c: char) -> String {
    match c.to_ascii_lowercase() {
        'a' => r"[a@4*]".into(),
        'e' => r"[e3*]".into(),
        'i' => r"[i1!|*]".into(),
        'o' => r"[o0*]".into(),
        'u' => r"[uv*]".into(),
        's' => r"[s$5]".into(),
        other => regex::escape(other.encode_utf8(&mut [0; 4])),
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // kana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xAC00..=0xD7AF    // hangul
        | 0x20000..=0x2FA1F) // extensions B..
}

fn is_word(c: char) -> bool {
    (c.is_alphanumeric() || c == '_') && !is_cjk(c)
}

/// Whole-word check for word-list hits: a Latin edge needs a non-word neighbour ("class" is not "ass");
/// a CJK edge needs none. A CJK neighbour counts as a boundary, so English words inside Chinese text match.
fn bounded(text: &str, start: usize, end: usize) -> bool {
    let first = text[start..end].chars().next();
    let last = text[start..end].chars().next_back();
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let lead = first.is_none_or(is_cjk)
        || !first.is_some_and(is_word)
        || before.is_none_or(|c| !is_word(c));
    let trail =
        last.is_none_or(is_cjk) || !last.is_some_and(is_word) || after.is_none_or(|c| !is_word(c));
    lead && trail
}

/// Does `context` match within `window` characters of `start..end`?
fn near(context: &Regex, window: usize, text: &str, start: usize, end: usize) -> bool {
    let lo = text[..start]
        .char_indices()
        .rev()
        .take(window)
        .last()
        .map_or(start, |(i, _)| i);
    let hi = text[end..]
        .char_indices()
        .nth(window)
        .map_or(text.len(), |(i, _)| end + i);
    context.find_at(text, lo).is_some_and(|m| m.start() < hi)
}

/// Drops a hit contained in another hit of the same label (two phone patterns on one number), and
/// orders hits by position.
fn dedup(mut hits: Vec<TextHit>) -> Vec<TextHit> {
    hits.sort_by(|a, b| {
        a.span
            .0
            .cmp(&b.span.0)
            .then(b.span.1.cmp(&a.span.1))
            .then(a.rule_id.cmp(&b.rule_id))
    });
    let mut kept: Vec<TextHit> = Vec::with_capacity(hits.len());
    for h in hits {
        let covered = kept
            .iter()
            .any(|k| k.label == h.label && k.span.0 <= h.span.0 && h.span.1 <= k.span.1);
        if !covered {
            kept.push(h);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_rule(id: &str, words: &[&str], obfuscation: bool) -> TextRule {
        TextRule {
            id: id.into(),
            label: Label::Profanity,
            lang: "any".into(),
            severity: Severity::Medium,
            pattern: None,
            words: words.iter().map(|w| w.to_string()).collect(),
            obfuscation,
            case_sensitive: false,
            context: None,
            context_window: 80,
            exclude: None,
        }
    }

    fn matched(tp: &TextPolicy, text: &str) -> Vec<String> {
        tp.scan(text).into_iter().map(|h| h.matched).collect()
    }

    #[test]
    fn words_match_whole_words_only() {
        let tp = TextPolicy::compile(&[words_rule("w", &["ass", "hell"], false)]).unwrap();
        assert!(matched(&tp, "class assessment in Shell, hello").is_empty());
        assert_eq!(matched(&tp, "ASS and hell."), vec!["ASS", "hell"]);
    }

    #[test]
    fn longest_word_wins() {
        let tp = TextPolicy::compile(&[words_rule("w", &["fuck", "fucking"], false)]).unwrap();
        assert_eq!(matched(&tp, "fucking"), vec!["fucking"]);
    }

    #[test]
    fn rejected_match_does_not_hide_a_later_one() {
        let tp = TextPolicy::compile(&[words_rule("w", &["shit"], false)]).unwrap();
        assert_eq!(matched(&tp, "shitake shit"), vec!["shit"]);
    }

    #[test]
    fn obfuscation() {
        let tp =
            TextPolicy::compile(&[words_rule("w", &["shit", "fuck", "asshole"], true)]).unwrap();
        for t in ["sh1t", "f*ck", "f.u.c.k", "a$$hole", "SH!T"] {
            assert_eq!(matched(&tp, t).len(), 1, "{t}");
        }
        for t in ["shot", "shift", "fact", "a shirt"] {
            assert!(matched(&tp, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn cjk_words_need_no_boundary_and_latin_words_match_inside_cjk() {
        let tp = TextPolicy::compile(&[words_rule("w", &["傻逼", "bitch"], false)]).unwrap();
        assert_eq!(matched(&tp, "你这个傻逼啊"), vec!["傻逼"]);
        assert_eq!(matched(&tp, "你是bitch吗"), vec!["bitch"]);
        assert!(matched(&tp, "bitchy").is_empty());
    }

    #[test]
    fn context_window() {
        let mut r = words_rule("d", &["one two three"], false);
        r.context = Some("phone".into());
        r.context_window = 10;
        let tp = TextPolicy::compile(&[r]).unwrap();
        assert_eq!(matched(&tp, "phone: one two three").len(), 1);
        assert_eq!(matched(&tp, "one two three, phone").len(), 1);
        assert!(matched(&tp, "phone .................... one two three").is_empty());
        assert!(matched(&tp, "one two three").is_empty());
    }

    #[test]
    fn exclude_drops_innocent_matches() {
        let mut r = words_rule("x", &[], false);
        r.pattern = Some(r"\w+ at \w+ dot com".into());
        r.exclude = Some(r"\bthe dot".into());
        let tp = TextPolicy::compile(&[r]).unwrap();
        assert_eq!(
            matched(&tp, "li at example dot com"),
            vec!["li at example dot com"]
        );
        assert!(matched(&tp, "look at the dot com bubble").is_empty());
    }

    #[test]
    fn lang_filter() {
        let mut r = words_rule("zh", &["傻逼"], false);
        r.lang = "zh".into();
        let tp = TextPolicy::compile(&[r]).unwrap();
        assert_eq!(tp.scan_lang("傻逼", "zh").len(), 1);
        assert!(tp.scan_lang("傻逼", "en").is_empty());
    }

    #[test]
    fn compile_errors_name_the_field() {
        let mut bad = words_rule("a", &[], false);
        bad.pattern = Some("(unclosed".into());
        assert_eq!(
            TextPolicy::compile(&[bad.clone()]).unwrap_err().field,
            "text_rules[0].pattern"
        );
        bad.pattern = Some("x*".into());
        assert!(TextPolicy::compile(&[bad])
            .unwrap_err()
            .message
            .contains("empty string"));
        let dup = [
            words_rule("a", &["x"], false),
            words_rule("a", &["y"], false),
        ];
        assert_eq!(
            TextPolicy::compile(&dup).unwrap_err().field,
            "text_rules[1].id"
        );
        let both = TextRule {
            pattern: Some("x".into()),
            ..words_rule("a", &["x"], false)
        };
        assert_eq!(
            TextPolicy::compile(&[both]).unwrap_err().field,
            "text_rules[0].pattern"
        );
        let lang = TextRule {
            lang: "English".into(),
            ..words_rule("a", &["x"], false)
        };
        assert_eq!(
            TextPolicy::compile(&[lang]).unwrap_err().field,
            "text_rules[0].lang"
        );
    }

    #[test]
    fn valid_langs() {
        for l in ["any", "en", "zh", "zh-Hans", "yue"] {
            assert!(valid_lang(l), "{l}");
        }
        for l in ["", "EN", "e", "english", "zh-"] {
            assert!(!valid_lang(l), "{l}");
        }
    }
}
