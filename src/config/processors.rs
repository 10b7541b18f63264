//! `[[processors]]`: the ordered pipeline a request goes through before it is
//! stored. Types: `redact`, `sample`, `filter`, `limits`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::security::resolve_secret;
use super::ConfigError;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessorConfig {
    Redact(RedactConfig),
    Sample(SampleConfig),
    Filter(FilterConfig),
    Limits(LimitsConfig),
}

/// Where attributes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeScope {
    Resource,
    /// The instrumentation scope's attributes.
    Scope,
    Span,
    Event,
    Link,
}

pub const ALL_SCOPES: [AttributeScope; 5] = [
    AttributeScope::Resource,
    AttributeScope::Scope,
    AttributeScope::Span,
    AttributeScope::Event,
    AttributeScope::Link,
];

/// Values the built-in patterns find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinPattern {
    Email,
    /// 13–19 digits (spaces or dashes between groups allowed) passing the Luhn check.
    CardNumber,
    Ipv4,
    Ipv6,
    /// `Bearer <token>`.
    BearerToken,
    /// A JSON Web Token (`eyJ...`.`...`.`...`).
    Jwt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactAction {
    /// Replace with the mask.
    Mask,
    /// Replace with `hmac:<32 hex digits>`, a keyed HMAC-SHA256 of the value: equal
    /// values stay equal (joinable), and without the key they cannot be guessed.
    Hash,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// The rule name in metrics (`tracespool_redacted_attributes_total{rule}`).
    pub name: String,
    pub regex: Pattern,
}

/// A regex from the configuration, compiled once, when it is read. Reading never
/// fails on a bad regex: the check that says which key holds it does (processors are
/// a tagged enum, and an error from inside one would lose the key).
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    compiled: Result<regex::Regex, String>,
}

impl Pattern {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let compiled = regex::Regex::new(&text).map_err(|e| e.to_string());
        Self { text, compiled }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The compiled regex, or why the text is not one.
    pub fn regex(&self) -> Result<&regex::Regex, &str> {
        self.compiled.as_ref().map_err(String::as_str)
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Attribute scopes to look at.
    pub scopes: Vec<AttributeScope>,
    /// Keys whose whole value is always redacted (case-insensitive; `*` at the end
    /// matches any suffix, e.g. "http.request.header.*").
    pub deny_keys: Vec<String>,
    /// Keys never touched, whatever their value (same syntax).
    pub allow_keys: Vec<String>,
    /// Built-in value patterns.
    pub patterns: Vec<BuiltinPattern>,
    /// More value patterns (Rust regex syntax).
    pub custom_patterns: Vec<CustomPattern>,
    pub action: RedactAction,
    /// What a masked value or match becomes.
    pub mask: String,
    /// The HMAC key for `action = "hash"` (or hash_key_file / hash_key_env).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key_env: Option<String>,
    #[serde(skip)]
    pub resolved_hash_key: Option<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            scopes: ALL_SCOPES.to_vec(),
            deny_keys: Vec::new(),
            allow_keys: Vec::new(),
            patterns: vec![
                BuiltinPattern::Email,
                BuiltinPattern::CardNumber,
                BuiltinPattern::BearerToken,
                BuiltinPattern::Jwt,
            ],
            custom_patterns: Vec::new(),
            action: RedactAction::Mask,
            mask: "[REDACTED]".into(),
            hash_key: None,
            hash_key_file: None,
            hash_key_env: None,
            resolved_hash_key: None,
        }
    }
}

/// Head sampling by trace id, the same decision everywhere for the same trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Fraction of traces kept (0.0 to 1.0) for services not listed below.
    pub rate: f64,
    /// Per `service.name`.
    pub service_rates: BTreeMap<String, f64>,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            rate: 1.0,
            service_rates: BTreeMap::new(),
        }
    }
}

/// Drops spans that match any rule; a rule matches when all its conditions do.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// The label of `tracespool_spans_filtered_total{filter}`.
    pub name: String,
    pub drop: Vec<DropRule>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropRule {
    /// The span's name, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_name: Option<String>,
    /// The span's name matches this regex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_name_regex: Option<Pattern>,
    /// The resource's service.name, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Span (or else resource) attributes equal to these values (as text).
    pub attributes: BTreeMap<String, String>,
    /// Span (or else resource) attributes whose text matches these regexes.
    pub attributes_regex: BTreeMap<String, Pattern>,
}

/// Bounds on what one span or request may carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Attributes beyond this many are dropped (per span, event, link, resource).
    pub max_attributes: usize,
    /// String values (and each string in an array) longer than this many bytes are
    /// cut, at a character boundary.
    pub max_attribute_value_length: usize,
    pub max_events_per_span: usize,
    pub max_links_per_span: usize,
    /// A request with more spans is refused (413 / RESOURCE_EXHAUSTED without retry);
    /// 0 = no limit.
    pub max_spans_per_request: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_attributes: 128,
            max_attribute_value_length: 8192,
            max_events_per_span: 128,
            max_links_per_span: 128,
            max_spans_per_request: 0,
        }
    }
}

fn check_regex(key: &str, re: &Pattern) -> Result<(), ConfigError> {
    re.regex()
        .map(|_| ())
        .map_err(|e| ConfigError(format!("{key}: not a valid regex: {e}")))
}

fn check_key_globs(key: &str, globs: &[String]) -> Result<(), ConfigError> {
    for g in globs {
        if g.is_empty() || g[..g.len() - 1].contains('*') {
            return Err(ConfigError(format!(
                "{key}: {g:?}: a key, or a prefix followed by one '*' at the end"
            )));
        }
    }
    Ok(())
}

impl ProcessorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redact(_) => "redact",
            Self::Sample(_) => "sample",
            Self::Filter(_) => "filter",
            Self::Limits(_) => "limits",
        }
    }

    pub(super) fn resolve(
        &mut self,
        i: usize,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let key = format!("processors[{i}]");
        match self {
            Self::Redact(r) => {
                check_key_globs(&format!("{key}.deny_keys"), &r.deny_keys)?;
                check_key_globs(&format!("{key}.allow_keys"), &r.allow_keys)?;
                let mut names = std::collections::BTreeSet::new();
                for (j, c) in r.custom_patterns.iter().enumerate() {
                    let k = format!("{key}.custom_patterns[{j}]");
                    if c.name.is_empty() || !names.insert(c.name.clone()) {
                        return Err(ConfigError(format!(
                            "{k}.name {:?}: give each pattern its own name",
                            c.name
                        )));
                    }
                    check_regex(&format!("{k}.regex"), &c.regex)?;
                }
                if r.scopes.is_empty() {
                    return Err(ConfigError(format!("{key}.scopes: name at least one")));
                }
                if r.patterns.is_empty() && r.custom_patterns.is_empty() && r.deny_keys.is_empty() {
                    return Err(ConfigError(format!(
                        "{key}: no patterns, custom_patterns or deny_keys: it would redact nothing"
                    )));
                }
                r.resolved_hash_key = resolve_secret(
                    &format!("{key}.hash_key"),
                    r.hash_key.as_deref(),
                    r.hash_key_file.as_deref(),
                    r.hash_key_env.as_deref(),
                    env,
                )?;
                match (r.action, &r.resolved_hash_key) {
                    (RedactAction::Hash, None) => {
                        return Err(ConfigError(format!(
                            "{key}: action = \"hash\" needs hash_key, hash_key_file or hash_key_env"
                        )))
                    }
                    (RedactAction::Hash, Some(k)) if k.len() < 16 => {
                        return Err(ConfigError(format!(
                            "{key}.hash_key: shorter than 16 characters; use a long random key"
                        )))
                    }
                    _ => {}
                }
            }
            Self::Sample(s) => {
                let ok = |r: f64| (0.0..=1.0).contains(&r);
                if !ok(s.rate) {
                    return Err(ConfigError(format!(
                        "{key}.rate must be between 0.0 and 1.0, got {}",
                        s.rate
                    )));
                }
                for (svc, r) in &s.service_rates {
                    if !ok(*r) {
                        return Err(ConfigError(format!(
                            "{key}.service_rates.{svc:?} must be between 0.0 and 1.0, got {r}"
                        )));
                    }
                }
            }
            Self::Filter(f) => {
                if f.name.is_empty() {
                    f.name = format!("filter{i}");
                }
                if f.drop.is_empty() {
                    return Err(ConfigError(format!("{key}.drop: name at least one rule")));
                }
                for (j, d) in f.drop.iter().enumerate() {
                    let k = format!("{key}.drop[{j}]");
                    if d.span_name.is_none()
                        && d.span_name_regex.is_none()
                        && d.service.is_none()
                        && d.attributes.is_empty()
                        && d.attributes_regex.is_empty()
                    {
                        return Err(ConfigError(format!(
                            "{k}: no condition; it would drop every span"
                        )));
                    }
                    if let Some(re) = &d.span_name_regex {
                        check_regex(&format!("{k}.span_name_regex"), re)?;
                    }
                    for (a, re) in &d.attributes_regex {
                        check_regex(&format!("{k}.attributes_regex.{a:?}"), re)?;
                    }
                }
            }
            Self::Limits(l) => {
                for (name, v) in [
                    ("max_attributes", l.max_attributes),
                    ("max_attribute_value_length", l.max_attribute_value_length),
                    ("max_events_per_span", l.max_events_per_span),
                    ("max_links_per_span", l.max_links_per_span),
                ] {
                    if v == 0 {
                        return Err(ConfigError(format!("{key}.{name} must be at least 1")));
                    }
                }
            }
        }
        Ok(())
    }

    /// The same, with secrets replaced for display.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        if let Self::Redact(r) = &mut c {
            if r.hash_key.is_some() {
                r.hash_key = Some("<redacted>".into());
            }
        }
        c
    }
}
