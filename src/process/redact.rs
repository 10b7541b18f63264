//! `redact`: masks or hashes attribute values, by key (deny/allow lists) and by value
//! pattern (built-ins and user regexes), in the scopes configured.
//!
//! A denied key's whole value is replaced; a pattern replaces only what it matches
//! (`"user jane@example.com logged in"` → `"user [REDACTED] logged in"`). With
//! `action = "hash"` the replacement is `hmac:` and the first 16 bytes of the keyed
//! HMAC-SHA256 of the replaced text in hex: equal values stay equal across requests,
//! restarts and tracespools sharing the key, and cannot be guessed without it.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prometheus_client::metrics::counter::Counter;
use regex::Regex;
use ring::hmac;

use super::text;
use crate::config::processors::{AttributeScope, BuiltinPattern, RedactAction, RedactConfig};
use crate::metrics::{Metrics, RuleLabel};

enum Matcher {
    Regex(Regex),
    /// Digit runs that pass the Luhn check.
    Card(Regex),
    /// Runs of hex digits, colons and dots that parse as an IPv6 address.
    Ipv6,
}

struct Pattern {
    matcher: Matcher,
    hits: Counter,
}

/// A key, or a prefix when the configured text ends in `*` (lowercase).
struct KeyGlob {
    text: String,
    prefix: bool,
}

impl KeyGlob {
    fn new(g: &str) -> Self {
        let g = g.to_lowercase();
        match g.strip_suffix('*') {
            Some(p) => Self {
                text: p.to_string(),
                prefix: true,
            },
            None => Self {
                text: g,
                prefix: false,
            },
        }
    }

    fn matches(&self, key_lower: &str) -> bool {
        if self.prefix {
            key_lower.starts_with(&self.text)
        } else {
            key_lower == self.text
        }
    }
}

enum Action {
    Mask(String),
    Hash(hmac::Key),
}

pub struct Redactor {
    scopes: Vec<AttributeScope>,
    deny: Vec<KeyGlob>,
    allow: Vec<KeyGlob>,
    deny_hits: Counter,
    patterns: Vec<Pattern>,
    action: Action,
}

fn builtin(p: BuiltinPattern) -> (&'static str, Matcher) {
    let re = |s: &str| Regex::new(s).expect("built-in pattern compiles");
    match p {
        BuiltinPattern::Email => (
            "email",
            Matcher::Regex(re(
                r"(?i)[a-z0-9._%+\-]+@[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{2,}",
            )),
        ),
        BuiltinPattern::CardNumber => (
            "card_number",
            Matcher::Card(re(r"\b[0-9](?:[ \-]?[0-9]){12,18}\b")),
        ),
        BuiltinPattern::Ipv4 => (
            "ipv4",
            Matcher::Regex(re(
                r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b",
            )),
        ),
        BuiltinPattern::Ipv6 => ("ipv6", Matcher::Ipv6),
        BuiltinPattern::BearerToken => (
            "bearer_token",
            Matcher::Regex(re(r"(?i)\bbearer\s+[a-z0-9\-._~+/]+=*")),
        ),
        BuiltinPattern::Jwt => (
            "jwt",
            Matcher::Regex(re(
                r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
            )),
        ),
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// IPv6 addresses in `s`: maximal runs of `[0-9a-fA-F:.]` standing alone (not part
/// of a word, so `std::vec` is left alone), with at least two colons and a hex
/// digit, that parse as an address (a trailing `.` or `:` is not part of it).
fn ipv6_ranges(s: &str) -> Vec<Range<usize>> {
    let b = s.as_bytes();
    let in_run = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !in_run(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && in_run(b[i]) {
            i += 1;
        }
        let mut end = i;
        if (start > 0 && is_word(b[start - 1])) || (end < b.len() && is_word(b[end])) {
            continue;
        }
        while end > start
            && (b[end - 1] == b'.' || (b[end - 1] == b':' && !s[start..end].ends_with("::")))
        {
            end -= 1;
        }
        let cand = &s[start..end];
        if cand.bytes().filter(|&c| c == b':').count() >= 2
            && cand.bytes().any(|c| c.is_ascii_hexdigit())
            && std::net::Ipv6Addr::from_str(cand).is_ok()
        {
            out.push(start..end);
        }
    }
    out
}

impl Matcher {
    fn find(&self, s: &str) -> Vec<Range<usize>> {
        match self {
            Self::Regex(re) => re.find_iter(s).map(|m| m.range()).collect(),
            Self::Card(re) => re
                .find_iter(s)
                .filter(|m| {
                    let digits: Vec<u8> = m.as_str().bytes().filter(u8::is_ascii_digit).collect();
                    (13..=19).contains(&digits.len()) && luhn(&digits)
                })
                .map(|m| m.range())
                .collect(),
            Self::Ipv6 => ipv6_ranges(s),
        }
    }
}

impl Redactor {
    pub fn new(cfg: &RedactConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let counter = |rule: &str| {
            metrics
                .redacted_attributes
                .get_or_create(&RuleLabel { rule: rule.into() })
                .clone()
        };
        let mut patterns = Vec::new();
        for p in &cfg.patterns {
            let (name, matcher) = builtin(*p);
            patterns.push(Pattern {
                matcher,
                hits: counter(name),
            });
        }
        for c in &cfg.custom_patterns {
            let re = c
                .regex
                .regex()
                .map_err(|e| format!("custom pattern {:?}: {e}", c.name))?
                .clone();
            patterns.push(Pattern {
                matcher: Matcher::Regex(re),
                hits: counter(&c.name),
            });
        }
        let action = match cfg.action {
            RedactAction::Mask => Action::Mask(cfg.mask.clone()),
            RedactAction::Hash => {
                let key = cfg
                    .resolved_hash_key
                    .as_deref()
                    .ok_or("action = \"hash\" without a key")?;
                Action::Hash(hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()))
            }
        };
        Ok(Self {
            scopes: cfg.scopes.clone(),
            deny: cfg.deny_keys.iter().map(|g| KeyGlob::new(g)).collect(),
            allow: cfg.allow_keys.iter().map(|g| KeyGlob::new(g)).collect(),
            deny_hits: counter("deny_keys"),
            patterns,
            action,
        })
    }

    fn replacement(&self, original: &str) -> String {
        match &self.action {
            Action::Mask(m) => m.clone(),
            Action::Hash(key) => {
                let tag = hmac::sign(key, original.as_bytes());
                format!("hmac:{}", super::hex(&tag.as_ref()[..16]))
            }
        }
    }

    /// `s` with every pattern's matches replaced, or `None` if nothing matched;
    /// `hit[i]` is set for each pattern that matched.
    fn scrub(&self, s: &str, hit: &mut [bool]) -> Option<String> {
        let mut cur: Option<String> = None;
        for (i, p) in self.patterns.iter().enumerate() {
            let text = cur.as_deref().unwrap_or(s);
            let ranges = p.matcher.find(text);
            if ranges.is_empty() {
                continue;
            }
            hit[i] = true;
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for r in ranges {
                out.push_str(&text[last..r.start]);
                out.push_str(&self.replacement(&text[r.clone()]));
                last = r.end;
            }
            out.push_str(&text[last..]);
            cur = Some(out);
        }
        cur
    }

    /// Scrubs every string inside `v` (arrays and maps included); keys inside maps
    /// are checked against the lists too.
    fn value(&self, v: &mut AnyValue, hit: &mut [bool], denied: &mut bool) {
        use any_value::Value;
        match &mut v.value {
            Some(Value::StringValue(s)) => {
                if let Some(new) = self.scrub(s, hit) {
                    *s = new;
                }
            }
            Some(Value::ArrayValue(a)) => {
                for x in &mut a.values {
                    self.value(x, hit, denied);
                }
            }
            Some(Value::KvlistValue(l)) => {
                for kv in &mut l.values {
                    self.key_value(kv, hit, denied);
                }
            }
            _ => {}
        }
    }

    fn key_value(&self, kv: &mut KeyValue, hit: &mut [bool], denied: &mut bool) {
        let Some(v) = kv.value.as_mut() else {
            return;
        };
        let key = kv.key.to_lowercase();
        if self.allow.iter().any(|g| g.matches(&key)) {
            return;
        }
        if self.deny.iter().any(|g| g.matches(&key)) {
            *denied = true;
            let replaced = self.replacement(&text(v));
            v.value = Some(any_value::Value::StringValue(replaced));
            return;
        }
        self.value(v, hit, denied);
    }

    fn attributes(&self, attrs: &mut [KeyValue]) {
        let mut hit = vec![false; self.patterns.len()];
        for kv in attrs {
            hit.iter_mut().for_each(|h| *h = false);
            let mut denied = false;
            self.key_value(kv, &mut hit, &mut denied);
            if denied {
                self.deny_hits.inc();
            }
            for (p, h) in self.patterns.iter().zip(&hit) {
                if *h {
                    p.hits.inc();
                }
            }
        }
    }

    pub fn apply(&self, req: &mut ExportTraceServiceRequest) {
        let on = |s: AttributeScope| self.scopes.contains(&s);
        for rs in &mut req.resource_spans {
            if on(AttributeScope::Resource) {
                if let Some(r) = rs.resource.as_mut() {
                    self.attributes(&mut r.attributes);
                }
            }
            for ss in &mut rs.scope_spans {
                if on(AttributeScope::Scope) {
                    if let Some(sc) = ss.scope.as_mut() {
                        self.attributes(&mut sc.attributes);
                    }
                }
                for span in &mut ss.spans {
                    if on(AttributeScope::Span) {
                        self.attributes(&mut span.attributes);
                    }
                    if on(AttributeScope::Event) {
                        for e in &mut span.events {
                            self.attributes(&mut e.attributes);
                        }
                    }
                    if on(AttributeScope::Link) {
                        for l in &mut span.links {
                            self.attributes(&mut l.attributes);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::config::processors::CustomPattern;

    fn redactor(cfg: RedactConfig) -> (Redactor, Arc<Metrics>) {
        let m = Metrics::new(&[]);
        (Redactor::new(&cfg, &m).unwrap(), m)
    }

    fn all_patterns() -> RedactConfig {
        RedactConfig {
            patterns: vec![
                BuiltinPattern::Email,
                BuiltinPattern::CardNumber,
                BuiltinPattern::Ipv4,
                BuiltinPattern::Ipv6,
                BuiltinPattern::BearerToken,
                BuiltinPattern::Jwt,
            ],
            ..Default::default()
        }
    }

    fn scrub(r: &Redactor, s: &str) -> String {
        let mut hit = vec![false; r.patterns.len()];
        r.scrub(s, &mut hit).unwrap_or_else(|| s.to_string())
    }

    #[test]
    fn builtin_patterns_find_what_they_should_and_leave_the_rest() {
        let (r, _) = redactor(all_patterns());
        let cases = [
            (
                "mail jane.doe+x@mail.example.co.uk now",
                "mail [REDACTED] now",
            ),
            ("card 4111 1111 1111 1111 exp", "card [REDACTED] exp"),
            ("card 4111-1111-1111-1111", "card [REDACTED]"),
            ("pan=5500005555555559;", "pan=[REDACTED];"),
            // Fails the Luhn check: an order number, not a card.
            ("order 4111111111111112", "order 4111111111111112"),
            ("from 10.1.2.3:8080", "from [REDACTED]:8080"),
            (
                "not an ip 999.1.1.1 or 1.2.3",
                "not an ip 999.1.1.1 or 1.2.3",
            ),
            (
                "peer [2001:db8::8a2e:370:7334]:443",
                "peer [[REDACTED]]:443",
            ),
            (
                "lo ::1 and fe80::1%eth0",
                "lo [REDACTED] and [REDACTED]%eth0",
            ),
            (
                "std::vec::Vec at 12:30:45 mac 00:1a:2b:3c:4d:5e",
                "std::vec::Vec at 12:30:45 mac 00:1a:2b:3c:4d:5e",
            ),
            (
                "Authorization: Bearer abc.DEF-123_x/y+z==",
                "Authorization: [REDACTED]",
            ),
            (
                "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_x end",
                "t=[REDACTED] end",
            ),
            ("plain text, 1234, v1.2", "plain text, 1234, v1.2"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(&r, input), want, "input {input:?}");
        }
    }

    #[test]
    fn luhn_check() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"4111111111111112"));
    }

    #[test]
    fn keys_denied_allowed_and_counted_per_rule() {
        let (r, m) = redactor(RedactConfig {
            deny_keys: vec!["http.request.header.*".into(), "user.password".into()],
            allow_keys: vec!["trace.note".into()],
            custom_patterns: vec![CustomPattern {
                name: "employee_id".into(),
                regex: r"\bEMP-[0-9]{6}\b".into(),
            }],
            ..Default::default()
        });
        let mut req = request(
            "svc",
            vec![span(
                7,
                "s",
                vec![
                    kv("HTTP.Request.Header.Cookie", "session=1"),
                    kv("user.password", "hunter2"),
                    kv("trace.note", "jane@example.com stays"),
                    kv("who", "EMP-123456 and jane@example.com"),
                    kv("count", "42"),
                ],
            )],
        );
        r.apply(&mut req);
        let got: Vec<(String, String)> = spans(&req)[0]
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), text(kv.value.as_ref().unwrap())))
            .collect();
        assert_eq!(
            got,
            [
                ("HTTP.Request.Header.Cookie", "[REDACTED]"),
                ("user.password", "[REDACTED]"),
                ("trace.note", "jane@example.com stays"),
                ("who", "[REDACTED] and [REDACTED]"),
                ("count", "42"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let text = m.render();
        for (rule, n) in [
            ("deny_keys", 2),
            ("email", 1),
            ("employee_id", 1),
            ("card_number", 0),
        ] {
            let line = format!("tracespool_redacted_attributes_total{{rule=\"{rule}\"}} {n}");
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn hashing_is_keyed_stable_and_joinable() {
        let cfg = |key: &str| RedactConfig {
            action: RedactAction::Hash,
            resolved_hash_key: Some(key.into()),
            ..Default::default()
        };
        let (a, _) = redactor(cfg("0123456789abcdef-one"));
        let (a2, _) = redactor(cfg("0123456789abcdef-one"));
        let (b, _) = redactor(cfg("0123456789abcdef-two"));
        let x = scrub(&a, "to jane@example.com");
        assert_eq!(x, scrub(&a2, "to jane@example.com"));
        assert_ne!(x, scrub(&b, "to jane@example.com"));
        assert_ne!(x, scrub(&a, "to john@example.com"));
        let h = x.strip_prefix("to hmac:").unwrap();
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|c| c.is_ascii_hexdigit()));
        // Known answer: HMAC-SHA256("0123456789abcdef-one", "jane@example.com").
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef-one"),
            b"jane@example.com",
        );
        assert_eq!(h, super::super::hex(&tag.as_ref()[..16]));
    }

    #[test]
    fn non_string_and_nested_values() {
        let (r, _) = redactor(RedactConfig {
            deny_keys: vec!["secret.*".into()],
            ..Default::default()
        });
        let nested = AnyValue {
            value: Some(any_value::Value::KvlistValue(
                opentelemetry_proto::tonic::common::v1::KeyValueList {
                    values: vec![kv("mail", "x jane@example.com"), kv("secret.token", "abc")],
                },
            )),
        };
        let array = AnyValue {
            value: Some(any_value::Value::ArrayValue(
                opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![kv("_", "a@b.io").value.unwrap()],
                },
            )),
        };
        let int = AnyValue {
            value: Some(any_value::Value::IntValue(1234)),
        };
        let mut attrs = vec![
            KeyValue {
                key: "m".into(),
                value: Some(nested),
                ..Default::default()
            },
            KeyValue {
                key: "a".into(),
                value: Some(array),
                ..Default::default()
            },
            KeyValue {
                key: "secret.pin".into(),
                value: Some(int),
                ..Default::default()
            },
        ];
        r.attributes(&mut attrs);
        let t: Vec<String> = attrs
            .iter()
            .map(|kv| text(kv.value.as_ref().unwrap()))
            .collect();
        assert_eq!(
            t,
            [
                "{mail=x [REDACTED],secret.token=[REDACTED]}",
                "[[REDACTED]]",
                "[REDACTED]"
            ]
        );
    }

    #[test]
    fn scopes_limit_where_it_looks() {
        let (r, _) = redactor(RedactConfig {
            scopes: vec![AttributeScope::Event],
            ..Default::default()
        });
        let mut req = request("svc", vec![span(1, "s", vec![kv("m", "a@b.io")])]);
        r.apply(&mut req);
        assert_eq!(
            text(spans(&req)[0].attributes[0].value.as_ref().unwrap()),
            "a@b.io"
        );
    }
}
