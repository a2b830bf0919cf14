//! Topic selectors, as tokens grant topics and `--private-topics` names them: an exact topic,
//! a prefix ending in `/*` or `:*`, or `*` for every topic.

use std::fmt;
use std::str::FromStr;

/// One selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `*`: every topic.
    Any,
    /// `news/*` or `user:*`: every topic that starts with the part before the `*` (the
    /// separator included, so `news/*` does not cover `news` itself).
    Prefix(Box<str>),
    /// One topic.
    Exact(Box<str>),
}

/// A selector that can never match a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Nothing at all.
    #[error("an empty selector")]
    Empty,
    /// A `*` somewhere a topic name cannot have one.
    #[error(
        "selector {0:?} has a `*` that is not `*` alone or a final `/*` or `:*` (topic names \
         cannot contain `*`)"
    )]
    MisplacedWildcard(String),
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, SelectorError> {
        if text.is_empty() {
            return Err(SelectorError::Empty);
        }
        if text == "*" {
            return Ok(Selector::Any);
        }
        let (body, prefix) = match text.strip_suffix('*') {
            Some(head) if head.ends_with('/') || head.ends_with(':') => (head, true),
            _ => (text, false),
        };
        if body.contains('*') || (!prefix && text.ends_with('*')) {
            return Err(SelectorError::MisplacedWildcard(text.to_owned()));
        }
        Ok(if prefix { Selector::Prefix(body.into()) } else { Selector::Exact(body.into()) })
    }
}

impl Selector {
    /// Whether the selector covers `topic`.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Prefix(prefix) => topic.starts_with(&**prefix),
            Selector::Exact(exact) => topic == &**exact,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Prefix(prefix) => write!(f, "{prefix}*"),
            Selector::Exact(exact) => f.write_str(exact),
        }
    }
}

/// A list of selectors: covers a topic when one of them does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selectors(Vec<Selector>);

impl Selectors {
    /// Parses every selector of `items`.
    pub(crate) fn parse<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, SelectorError> {
        items.into_iter().map(str::parse).collect::<Result<_, _>>().map(Selectors)
    }

    /// Whether one of the selectors covers `topic`.
    pub(crate) fn covers(&self, topic: &str) -> bool {
        self.0.iter().any(|s| s.covers(topic))
    }
}

impl From<Vec<Selector>> for Selectors {
    fn from(selectors: Vec<Selector>) -> Self {
        Selectors(selectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_cover_exact_topics_prefixes_and_everything() {
        let covers =
            |selector: &str, topic: &str| selector.parse::<Selector>().unwrap().covers(topic);
        assert!(covers("*", "anything/at:all"));
        assert!(covers("news", "news"));
        assert!(!covers("news", "news/eu"));
        assert!(!covers("news", "new"));
        assert!(covers("news/*", "news/eu"));
        assert!(covers("news/*", "news/eu/fr"));
        assert!(!covers("news/*", "news"), "the separator is part of the prefix");
        assert!(!covers("news/*", "newsroom/x"));
        assert!(covers("user:*", "user:42"));
        assert!(!covers("user:*", "user/42"));
    }

    #[test]
    fn wildcards_anywhere_else_are_refused() {
        for bad in ["", "news*", "*/news", "a/*/b", "**", "news/**", "a:*:*"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?} should be refused");
        }
        let list = Selectors::parse(["a", "b/*"]).unwrap();
        assert!(list.covers("a") && list.covers("b/c") && !list.covers("c"));
        assert_eq!(list.0[1].to_string(), "b/*");
        assert!(!Selectors::default().covers("a"));
    }
}
