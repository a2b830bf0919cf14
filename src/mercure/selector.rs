//! Mercure topic selectors: `*`, an exact topic, or an RFC 6570 URI template (level 4, every
//! operator, with `:n` prefixes and `*` explosion) that matches the topics it could expand to.
//!
//! A template compiles to an anchored regular expression, as the reference hub's does (it
//! uses yosida95/uritemplate): each expression matches what its operator could produce, in its
//! operator's character class, so `{v}` never matches `/` while `{+v}` does. A selector is
//! compiled once per node whoever uses it ([`SelectorStore`]), and a template remembers which
//! topics it matched, so deciding an update for a thousand subscribers with the same selector
//! runs the expression once.
//!
//! What templates hold is bounded per node ([`TemplateBudget`], `--mercure-max-templates`): each
//! template's compiled expression (at most [`MAX_PROGRAM_BYTES`], and as much again for each
//! thread's search cache), the topics it remembers (at most [`MAX_REMEMBERED`], fewer as
//! templates multiply so that all of them remember at most [`REMEMBERED_PER_NODE`] answers, about
//! 100 bytes each), and 2 KiB of recent updates. A subscribe that would pass the budget is
//! refused for now; templates already held cost nothing more.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::codec::mercure::MercureUpdate;

/// Topics a template remembers its answer for (then it forgets them all at once), at most.
const MAX_REMEMBERED: usize = 4096;

/// Topics all the templates of a node remember their answers for, together, about: each
/// remembers its share, [`MAX_REMEMBERED`] at most and 64 at least.
const REMEMBERED_PER_NODE: usize = 1 << 20;

/// Largest compiled expression of a template, and of each of its search caches; a template
/// that needs more is taken as an exact topic.
const MAX_PROGRAM_BYTES: usize = 256 << 10;

/// Templates a node holds compiled at once unless told otherwise.
pub(crate) const DEFAULT_MAX_TEMPLATES: usize = 10_000;

/// Updates a template remembers its answer for (2 KiB per template in use).
const RECENT_UPDATES: usize = 256;

/// Selectors kept compiled after their last user went away, at most.
const MAX_IDLE_SELECTORS: usize = 16 << 10;

/// A compiled topic selector.
pub(crate) struct MercureSelector {
    text: Box<str>,
    matcher: Matcher,
}

enum Matcher {
    Any,
    Exact,
    Template {
        regex: regex::Regex,
        /// Its place in the node's budget, if it was compiled for the store.
        slot: Option<TemplateSlot>,
        /// Its answer per topic.
        remembered: RwLock<HashMap<Box<str>, bool>>,
        /// Its answers for the last updates it was asked about, by serial modulo the length:
        /// `serial << 1 | matched`, 0 for none. Every subscriber with this selector asks about
        /// the same run of updates in turn (one wakeup's worth each), so all but the first
        /// read one atomic per update.
        recent_updates: Box<[AtomicU64]>,
    },
}

impl MercureSelector {
    /// Compiles `text`. Text that is not a valid template is an exact topic.
    pub(crate) fn compile(text: &str) -> Self {
        Self::compile_in(text, None)
    }

    /// Compiles `text`, a template taking a place in `budget`.
    fn compile_in(text: &str, budget: Option<&Arc<TemplateBudget>>) -> Self {
        let compiled = |pattern: String| {
            regex::RegexBuilder::new(&pattern)
                .size_limit(MAX_PROGRAM_BYTES)
                .dfa_size_limit(MAX_PROGRAM_BYTES)
                .build()
                .ok()
        };
        let matcher = if text == "*" {
            Matcher::Any
        } else if is_template(text) {
            match template_regex(text).and_then(compiled) {
                Some(regex) => Matcher::Template {
                    regex,
                    slot: budget.map(|budget| budget.take()),
                    remembered: RwLock::default(),
                    recent_updates: (0..RECENT_UPDATES).map(|_| AtomicU64::new(0)).collect(),
                },
                None => Matcher::Exact,
            }
        } else {
            Matcher::Exact
        };
        MercureSelector { text: text.into(), matcher }
    }

    /// Whether `topic` matches: `*` matches every topic, any selector matches itself, a
    /// template matches what it could expand to.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact => *self.text == *topic,
            Matcher::Template { regex, remembered, slot, .. } => {
                if *self.text == *topic {
                    return true;
                }
                if let Some(&matched) = remembered.read().get(topic) {
                    return matched;
                }
                let matched = regex.is_match(topic);
                let mut remembered = remembered.write();
                let room = slot.as_ref().map_or(MAX_REMEMBERED, |slot| slot.0.remembered_each());
                if remembered.len() >= room {
                    remembered.clear();
                }
                remembered.insert(topic.into(), matched);
                matched
            }
        }
    }
}

/// What every subscription event's topic starts with.
const SUBSCRIPTION_TOPICS: &str = "/.well-known/mercure/subscriptions/";

/// What no update's topic holds (publishers may not use the hub's namespace).
const HUB_NAMESPACE: &str = crate::http::MERCURE_HUB_PATH;

impl MercureSelector {
    /// Whether the selector could match a subscription event's topic; `true` when unsure.
    pub(crate) fn may_match_subscription_events(&self) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact => self.text.starts_with(SUBSCRIPTION_TOPICS),
            Matcher::Template { .. } => {
                // What every expansion starts with, and what every such topic starts with,
                // must agree as far as the shorter goes.
                let literal = self.literal_prefix();
                literal.starts_with(SUBSCRIPTION_TOPICS) || SUBSCRIPTION_TOPICS.starts_with(literal)
            }
        }
    }

    /// Whether the selector could match an update's topic; `true` when unsure.
    pub(crate) fn may_match_updates(&self) -> bool {
        let literal = match &self.matcher {
            Matcher::Any => return true,
            Matcher::Exact => &*self.text,
            Matcher::Template { .. } => self.literal_prefix(),
        };
        !literal.contains(HUB_NAMESPACE)
    }

    /// The text before the first expression: what every expansion starts with.
    fn literal_prefix(&self) -> &str {
        &self.text[..self.text.find('{').unwrap_or(self.text.len())]
    }
}

impl std::fmt::Debug for MercureSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MercureSelector").field(&self.text).finish()
    }
}

impl MercureSelector {
    /// Whether one of `update`'s topics matches, remembered for the update (by its serial).
    pub(crate) fn matches_update(&self, update: &MercureUpdate) -> bool {
        let Matcher::Template { recent_updates, .. } = &self.matcher else {
            return update.topics.iter().any(|topic| self.matches(topic));
        };
        let slot = &recent_updates[update.serial as usize % RECENT_UPDATES];
        let remembered = slot.load(Ordering::Acquire);
        if remembered >> 1 == update.serial {
            return remembered & 1 == 1;
        }
        let matched = update.topics.iter().any(|topic| self.matches(topic));
        slot.store(update.serial << 1 | u64::from(matched), Ordering::Release);
        matched
    }
}

/// Whether one of `update`'s topics matches one of `selectors`.
pub(crate) fn any_matches_update(
    selectors: &[Arc<MercureSelector>],
    update: &MercureUpdate,
) -> bool {
    selectors.iter().any(|selector| selector.matches_update(update))
}

/// Whether `text` is compiled as a template (if it is a valid one).
fn is_template(text: &str) -> bool {
    text.contains('{')
}

/// How many templates a node may hold compiled, and how many it holds.
pub(crate) struct TemplateBudget {
    held: AtomicUsize,
    max: usize,
}

impl TemplateBudget {
    fn take(self: &Arc<Self>) -> TemplateSlot {
        self.held.fetch_add(1, Ordering::Relaxed);
        TemplateSlot(self.clone())
    }

    /// How many topics each template remembers its answer for now.
    fn remembered_each(&self) -> usize {
        let held = self.held.load(Ordering::Relaxed).max(1);
        (REMEMBERED_PER_NODE / held).clamp(64, MAX_REMEMBERED)
    }
}

/// A compiled template's place in the budget, given back when it is dropped.
struct TemplateSlot(Arc<TemplateBudget>);

impl Drop for TemplateSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscribe needs more templates compiled than the node's budget has room for.
#[derive(Debug, thiserror::Error)]
#[error("the hub holds as many compiled templates as it may (--mercure-max-templates {max})")]
pub(crate) struct TemplatesFull {
    pub(crate) max: usize,
}

/// The node's compiled selectors, shared by every subscriber and token that names them.
pub(crate) struct SelectorStore {
    compiled: Mutex<HashMap<Box<str>, Weak<MercureSelector>>>,
    budget: Arc<TemplateBudget>,
}

impl Default for SelectorStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TEMPLATES)
    }
}

impl SelectorStore {
    /// A store that holds at most `max_templates` templates compiled for subscribers.
    pub(crate) fn new(max_templates: usize) -> Self {
        let budget = Arc::new(TemplateBudget { held: AtomicUsize::new(0), max: max_templates });
        SelectorStore { compiled: Mutex::default(), budget }
    }

    /// The compiled `text`, compiled now if no one holds it; for a request's own use (it
    /// counts in the budget while held, but is never refused).
    pub(crate) fn get(&self, text: &str) -> Arc<MercureSelector> {
        let mut compiled = self.compiled.lock();
        self.get_locked(&mut compiled, text)
    }

    fn get_locked(
        &self,
        compiled: &mut HashMap<Box<str>, Weak<MercureSelector>>,
        text: &str,
    ) -> Arc<MercureSelector> {
        if let Some(selector) = compiled.get(text).and_then(Weak::upgrade) {
            return selector;
        }
        if compiled.len() >= MAX_IDLE_SELECTORS {
            compiled.retain(|_, selector| selector.strong_count() > 0);
        }
        let selector = Arc::new(MercureSelector::compile_in(text, Some(&self.budget)));
        compiled.insert(text.into(), Arc::downgrade(&selector));
        selector
    }

    /// Every one of `texts`, compiled; for a request's own use, as [`SelectorStore::get`].
    pub(crate) fn get_all<S: AsRef<str>>(&self, texts: &[S]) -> Vec<Arc<MercureSelector>> {
        texts.iter().map(|text| self.get(text.as_ref())).collect()
    }

    /// Every one of `texts`, compiled, to hold for a stream's life: refused if the templates
    /// not compiled yet would take the node past its budget.
    pub(crate) fn hold_all<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Arc<MercureSelector>>, TemplatesFull> {
        let mut compiled = self.compiled.lock();
        let mut new: Vec<&str> = texts
            .iter()
            .map(AsRef::as_ref)
            .filter(|text| is_template(text))
            .filter(|text| compiled.get(*text).is_none_or(|held| held.strong_count() == 0))
            .collect();
        new.sort_unstable();
        new.dedup();
        if self.budget.held.load(Ordering::Relaxed) + new.len() > self.budget.max {
            return Err(TemplatesFull { max: self.budget.max });
        }
        Ok(texts.iter().map(|text| self.get_locked(&mut compiled, text.as_ref())).collect())
    }
}

/// RFC 3986 unreserved characters, as a regex class body.
const UNRESERVED: &str = r"A-Za-z0-9\-._~";
/// RFC 3986 reserved characters (gen-delims and sub-delims), as a regex class body.
const RESERVED: &str = r":/?#\[\]@!$&'()*+,;=";
/// A percent-encoded octet.
const PCT: &str = "%[0-9A-Fa-f]{2}";

/// The anchored regular expression matching every expansion of `template`; `None` if it is
/// not a valid level 4 template.
fn template_regex(template: &str) -> Option<String> {
    let mut pattern = String::with_capacity(template.len() * 4);
    pattern.push('^');
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let end = rest.find('}')?;
                expression_regex(&rest[1..end], &mut pattern)?;
                rest = &rest[end + 1..];
            }
            found => {
                let at = found.unwrap_or(rest.len());
                let literal = &rest[..at];
                if literal.contains('}') {
                    return None;
                }
                pattern.push_str(&regex::escape(literal));
                rest = &rest[at..];
            }
        }
    }
    pattern.push('$');
    Some(pattern)
}

/// One variable of an expression.
struct VarSpec<'a> {
    name: &'a str,
    /// `:n`: only the first n characters of the value.
    prefix: Option<u16>,
    /// `*`.
    explode: bool,
}

/// Appends the expression `{body}`'s regex: what the operator starts with, then the defined
/// variables' values joined by its separator, or nothing when none is defined.
fn expression_regex(body: &str, out: &mut String) -> Option<()> {
    let (operator, list) = match body.chars().next()? {
        op @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(op), &body[1..]),
        // Reserved for future extensions (RFC 6570 §2.2): not a template we can read.
        '=' | ',' | '!' | '@' | '|' => return None,
        _ => (None, body),
    };
    let (first, separator, named, reserved) = match operator {
        None => ("", ",", false, false),
        Some('+') => ("", ",", false, true),
        Some('#') => ("#", ",", false, true),
        Some('.') => (".", ".", false, false),
        Some('/') => ("/", "/", false, false),
        Some(';') => (";", ";", true, false),
        Some('?') => ("?", "&", true, false),
        _ => ("&", "&", true, false),
    };
    let vars = list.split(',').map(var_spec).collect::<Option<Vec<_>>>()?;
    // Characters a value may hold: U, or U+R for `+` and `#`, percent-encoded octets beyond.
    let class = if reserved { format!("{UNRESERVED}{RESERVED}") } else { UNRESERVED.to_owned() };
    let char_re = format!("(?:[{class}]|{PCT})");
    // A list's or map's items are joined by `,` unless exploded; exploded maps add `=`.
    let item = |var: &VarSpec<'_>| -> String {
        let value = match var.prefix {
            Some(n) => format!("{char_re}{{0,{n}}}"),
            None if reserved => format!("{char_re}*"),
            None => format!("(?:{char_re}|,)*"),
        };
        match (named, var.explode) {
            (false, false) => value,
            // Exploded values are separated by the operator's separator; a map's pairs hold `=`.
            (false, true) => format!("(?:{char_re}|[,=])*"),
            (true, false) if operator == Some(';') => {
                format!("{}(?:={value})?", regex::escape(var.name))
            }
            (true, false) => format!("{}={value}", regex::escape(var.name)),
            (true, true) => format!("(?:{char_re}|,)+(?:=(?:{char_re}|,)*)?"),
        }
    };
    let alternatives: Vec<String> = vars.iter().map(item).collect();
    let any_item = format!("(?:{})", alternatives.join("|"));
    let separator = regex::escape(separator);
    // Undefined variables are left out: at most one item per variable, unless one explodes.
    let more = if vars.iter().any(|var| var.explode) {
        "*".to_owned()
    } else {
        format!("{{0,{}}}", vars.len() - 1)
    };
    let first = regex::escape(first);
    let _ = write!(out, "(?:{first}{any_item}(?:{separator}{any_item}){more})?");
    Some(())
}

/// `name`, `name:n` or `name*`, with a name of `ALPHA / DIGIT / _ / pct-encoded` and dots.
fn var_spec(text: &str) -> Option<VarSpec<'_>> {
    let (name, prefix, explode) = if let Some(name) = text.strip_suffix('*') {
        (name, None, true)
    } else if let Some((name, n)) = text.split_once(':') {
        let n: u16 = n.parse().ok().filter(|n| (1..10_000).contains(n))?;
        (name, Some(n), false)
    } else {
        (text, None, false)
    };
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'%'))
        && !name.starts_with('.')
        && !name.ends_with('.');
    valid.then_some(VarSpec { name, prefix, explode })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(selector: &str, topic: &str) -> bool {
        MercureSelector::compile(selector).matches(topic)
    }

    #[test]
    fn a_selector_knows_which_logs_it_could_match_in() {
        let could = |text: &str| {
            let selector = MercureSelector::compile(text);
            (selector.may_match_updates(), selector.may_match_subscription_events())
        };
        assert_eq!(could("*"), (true, true));
        assert_eq!(could("https://example.com/books/1"), (true, false));
        assert_eq!(could("https://example.com/books/{id}"), (true, false));
        assert_eq!(could("{+anything}"), (true, true));
        assert_eq!(could("/.well-known/mercure/subscriptions{/topic}{/subscriber}"), (false, true));
        assert_eq!(could("/.well-known/mercure/subscriptions/a/b"), (false, true));
        assert_eq!(could("/.well-known/{x}"), (true, true));
        assert_eq!(could("/.well-known/mercure"), (false, false));
    }

    #[test]
    fn star_and_exact_selectors() {
        assert!(matches("*", "https://example.com/anything"));
        assert!(matches("https://example.com/a", "https://example.com/a"));
        assert!(!matches("https://example.com/a", "https://example.com/ab"));
    }

    #[test]
    fn simple_expressions_stop_at_slashes_and_are_anchored() {
        let s = "https://example.com/books/{id}";
        assert!(matches(s, "https://example.com/books/1"));
        assert!(matches(s, "https://example.com/books/"));
        assert!(matches(s, "https://example.com/books/a%20b"));
        assert!(!matches(s, "https://example.com/books/1/reviews"), "{{v}} never matches /");
        assert!(!matches(s, "https://example.com/books/1?x"));
        assert!(!matches(s, "xhttps://example.com/books/1"), "anchored at the start");
        assert!(matches(s, s), "a template matches itself");
        assert!(matches("https://example.com/{a}/{b}", "https://example.com/x/y"));
    }

    #[test]
    fn every_operator_matches_what_it_expands_to() {
        // RFC 6570 §3.2's examples, var = "value", hello = "Hello World!", path = "/foo/bar",
        // list = (red, green, blue), keys = (semi=";", dot=".", comma=",").
        let cases = [
            ("{+path}/here", "/foo/bar/here"),
            ("here?ref={+path}", "here?ref=/foo/bar"),
            ("X{#var}", "X#value"),
            ("X{#hello}", "X#Hello%20World!"),
            ("X{.var}", "X.value"),
            ("X{.list*}", "X.red.green.blue"),
            ("{/var}", "/value"),
            ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
            ("{;x,y}", ";x=1024;y=768"),
            ("{;x,y,empty}", ";x=1024;y=768;empty"),
            ("{;list*}", ";list=red;list=green;list=blue"),
            ("{?x,y}", "?x=1024&y=768"),
            ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
            ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
            ("{&list*}", "&list=red&list=green&list=blue"),
            ("{var:3}", "val"),
            ("{list}", "red,green,blue"),
            ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
            ("https://example.com/{/path*}", "https://example.com//a/b"),
            ("{x,y}", "1024,768"),
            ("{var}", ""),
        ];
        for (template, expansion) in cases {
            assert!(matches(template, expansion), "{template} should match {expansion}");
        }
        let misses = [
            ("{var:3}", "valu"),
            ("{+path}/here", "/foo/bar/there"),
            ("X{.var}", "X/value"),
            ("{/var}", "/a/b"),
            ("{?x,y}", "?z=1"),
            ("{#var}", "value"),
            ("{var}", "a b"),
        ];
        for (template, topic) in misses {
            assert!(!matches(template, topic), "{template} should not match {topic}");
        }
    }

    #[test]
    fn invalid_templates_are_exact_topics() {
        for text in ["{", "a{b", "{}", "{=x}", "a}b{c}", "{v:0}", "{v:x}", "{.}"] {
            let selector = MercureSelector::compile(text);
            assert!(matches!(selector.matcher, Matcher::Exact), "{text}");
            assert!(selector.matches(text));
        }
    }

    #[test]
    fn the_store_shares_one_compiled_selector_and_remembers_answers() {
        let store = SelectorStore::default();
        let a = store.get("https://example.com/{id}");
        let b = store.get("https://example.com/{id}");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.matches("https://example.com/1") && !a.matches("https://example.com/1/2"));
        let Matcher::Template { remembered, .. } = &a.matcher else { panic!("a template") };
        assert_eq!(remembered.read().len(), 2);
        let update = |topics: &[&str]| MercureUpdate {
            serial: MercureUpdate::next_serial(),
            id: "i".into(),
            topics: topics.iter().map(|t| (*t).into()).collect(),
            private: false,
            after: None,
        };
        let (hit, miss) = (update(&["x", "https://example.com/2"]), update(&["x"]));
        for _ in 0..2 {
            assert!(any_matches_update(std::slice::from_ref(&a), &hit));
            assert!(!any_matches_update(std::slice::from_ref(&a), &miss));
        }
    }
}
