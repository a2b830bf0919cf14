//! The `crier.gap` notice: an event a reader gets in place of events it can no longer have,
//! saying for each topic why, the id it asked for, the position it continues after, and how many
//! events were lost when known. Built here, once, for every edge and every cause (a resume from
//! a position the log no longer holds, a cluster topic whose history was lost).
//!
//! ```text
//! {"gaps":[{"topic":"news","reason":"expired","last_event_id":"k2j8f0qz-3",
//!           "resumed_after":"k2j8f0qz-9","missed":6}]}
//! ```

use crate::event::{Event, EventData, EventId, EventName, Gap, TopicName, Wire};

use super::Draft;

/// One topic's part of a notice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TopicGap<'a> {
    /// The topic.
    pub(crate) topic: &'a TopicName,
    /// What was lost.
    pub(crate) gap: &'a Gap,
    /// The position the reader continues after.
    pub(crate) resumed_after: EventId,
}

/// The notice for `gaps`, as an event of the first gap's topic with id `id` (the position the
/// reader continues after, or on a stream of several topics the one its cursor names), so that
/// it reaches every wire format like any other event and resuming from it is exact.
///
/// # Panics
///
/// If `gaps` is empty: a notice says what was lost.
pub(crate) fn notice(gaps: &[TopicGap<'_>], id: EventId) -> Event {
    let topic = gaps.first().expect("a notice names at least one gap").topic.clone();
    let name = EventName::gap();
    let data = EventData::from(notice_json(gaps));
    let frames = Draft::new(&topic, Some(&name), &data).finish(id);
    Event::new(topic, id, Some(name), data, frames, [0; Wire::COUNT])
}

/// What a `format=raw` WebSocket closes with in place of `notice`, which it has no frame for (a
/// client could not tell it from an event): the notice's first gap as JSON, leaving out what
/// does not fit in `max` bytes: the id asked for first (the client sent it), then the count
/// lost, then the topic.
pub(crate) fn close_reason(notice: &Event, max: usize) -> String {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Part {
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_event_id: Option<String>,
        resumed_after: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct NoticeData {
        gaps: Vec<Part>,
    }
    // Every notice is built by `notice`, with at least one gap.
    let first = serde_json::from_slice::<NoticeData>(notice.data.bytes()).ok();
    let Some(mut part) = first.and_then(|notice| notice.gaps.into_iter().next()) else {
        return r#"{"reason":"unknown"}"#.to_owned();
    };
    let json = |part: &Part| serde_json::to_string(part).expect("strings and numbers serialize");
    let mut reason = json(&part);
    let leave_out: [fn(&mut Part); 3] =
        [|p| p.last_event_id = None, |p| p.missed = None, |p| p.topic = None];
    for leave_out in leave_out {
        if reason.len() <= max {
            break;
        }
        leave_out(&mut part);
        reason = json(&part);
    }
    reason
}

fn notice_json(gaps: &[TopicGap<'_>]) -> String {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        topic: &'a str,
        reason: &'static str,
        last_event_id: String,
        resumed_after: String,
        missed: Option<u64>,
    }
    #[derive(serde::Serialize)]
    struct NoticeJson<'a> {
        gaps: Vec<Json<'a>>,
    }
    let gaps = gaps
        .iter()
        .map(|g| Json {
            topic: g.topic.as_str(),
            reason: g.gap.reason.as_str(),
            last_event_id: g.gap.requested.to_string(),
            resumed_after: g.resumed_after.to_string(),
            missed: g.gap.missed,
        })
        .collect();
    serde_json::to_string(&NoticeJson { gaps }).expect("strings and numbers serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Epoch, GapReason};

    #[test]
    fn the_notice_is_an_event_in_every_format() {
        let id = |seq| EventId { epoch: Epoch::from_u64(36 * 36).unwrap(), seq };
        let topic = TopicName::new("news").unwrap();
        let gap = Gap { reason: GapReason::Expired, requested: id(3), missed: Some(6) };
        let notice = notice(&[TopicGap { topic: &topic, gap: &gap, resumed_after: id(9) }], id(9));
        let json = r#"{"gaps":[{"topic":"news","reason":"expired","last_event_id":"100-3","resumed_after":"100-9","missed":6}]}"#;
        assert_eq!(
            notice.frames.sse(),
            format!("id: 100-9\nevent: crier.gap\ndata: {json}\n\n").as_bytes()
        );
        let frame = super::super::ws::event_frame(&notice, Wire::WsRaw);
        assert_eq!(&frame[2..], json.as_bytes());
        assert_eq!(
            close_reason(&notice, 123),
            r#"{"topic":"news","reason":"expired","last_event_id":"100-3","resumed_after":"100-9","missed":6}"#
        );
    }

    #[test]
    fn a_close_reason_leaves_out_what_does_not_fit() {
        let id = |seq| EventId { epoch: Epoch::from_u64((1 << 40) - 1).unwrap(), seq };
        let topic = TopicName::new(&"t".repeat(200)).unwrap();
        let requested = id(u64::MAX - 9);
        let gap = Gap { reason: GapReason::Expired, requested, missed: Some(u64::MAX / 2) };
        let resumed_after = id(u64::MAX);
        let part = TopicGap { topic: &topic, gap: &gap, resumed_after };
        let notice = notice(&[part], resumed_after);
        let reason = close_reason(&notice, 123);
        assert!(reason.len() <= 123, "{reason}");
        let fields: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({"reason":"expired","resumed_after":resumed_after.to_string()})
        );
        // With a short topic, the topic stays, and what else fits.
        let short = TopicName::new("news").unwrap();
        let notice = super::notice(&[TopicGap { topic: &short, ..part }], resumed_after);
        let reason = close_reason(&notice, 123);
        assert!(reason.len() <= 123, "{reason}");
        let fields: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert_eq!(fields["topic"], "news");
        assert_eq!(fields["missed"], u64::MAX / 2);
        assert!(fields.get("last_event_id").is_none());
    }
}
