//! An event-stream parser written from the WHATWG HTML standard, "9.2.6 Interpreting an event
//! stream", independent of crier's encoder. Used by the tests and the fuzz targets to check
//! that what crier writes is read back exactly by a conforming client.

#![allow(dead_code)]

/// A dispatched event, as a browser's `EventSource` would deliver it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `event.type`: the `event:` field, or "message".
    pub kind: String,
    /// `event.data`.
    pub data: String,
    /// `event.lastEventId`.
    pub last_event_id: String,
}

/// Incremental parser state.
#[derive(Default, Debug)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous byte was CR, so a following LF belongs to the same line break.
    after_cr: bool,
    started: bool,
    data: String,
    kind: String,
    last_event_id: String,
    /// The last valid `retry:` value, in milliseconds.
    pub retry: Option<u64>,
    /// Comment lines seen, without the leading colon.
    pub comments: Vec<String>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Parser::default()
    }

    /// Feeds bytes from the stream; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut bytes = bytes;
        if !self.started && !bytes.is_empty() {
            self.started = true;
            // "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
            if let Some(rest) = bytes.strip_prefix("\u{feff}".as_bytes()) {
                bytes = rest;
            }
        }
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.process_line(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        events
    }

    fn process_line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments.push(comment.to_owned());
            return None;
        }
        let (field, value) = match line.find(':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "event" => self.kind = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        if self.data.is_empty() {
            self.kind.clear();
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let kind = std::mem::take(&mut self.kind);
        Some(Event {
            kind: if kind.is_empty() { "message".to_owned() } else { kind },
            data,
            last_event_id: self.last_event_id.clone(),
        })
    }
}

/// Parses a complete stream.
pub fn parse(bytes: &[u8]) -> Vec<Event> {
    Parser::new().feed(bytes)
}

/// What a conforming client reads back for text `data`: every CRLF, CR and LF becomes LF.
pub fn normalize_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}
