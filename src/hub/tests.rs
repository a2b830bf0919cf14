use std::task::{Context, Poll, Waker};

use futures_util::FutureExt as _;

use super::*;
use crate::codec::{Draft, gap};
use crate::event::{Epoch, Gap, GapReason};
use crate::registry::Topic;

fn append(topic: &Topic, id: EventId, s: &str) {
    let data = EventData::from(s.to_owned());
    let frames = Draft::new(topic.name(), None, &data).finish(id);
    topic.append(id, None, data, frames).unwrap();
}

fn subscribe(hub: &Hub, topic: &TopicName, last_event_id: Option<String>) -> Subscription {
    let request = SubscriptionRequest::new(vec![topic.clone()], last_event_id, Wire::Sse);
    hub.subscribe(request).now_or_never().expect("a local subscribe is immediate").unwrap()
}

/// Everything the subscription hands over now: (id, event name).
fn drain(subscription: &mut Subscription) -> Vec<(String, Option<String>)> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    while let Poll::Ready(Polled::Events) = subscription.poll_events(&mut cx, 1 << 20, |_, e| {
        got.push((e.id.to_string(), e.name.as_ref().map(|n| n.to_string())))
    }) {}
    got
}

#[test]
fn readers_of_a_replaced_copy_finish_it_then_get_the_notice_then_the_new_copy() {
    let hub = Hub::local(HubConfig::default(), Arc::new(Metrics::new()));
    let name = TopicName::new("t").unwrap();
    let (old_epoch, new_epoch) = (Epoch::from_u64(1000).unwrap(), Epoch::from_u64(2000).unwrap());
    let id = |epoch, seq| EventId { epoch, seq };
    let old = hub.registry.new_topic(name.clone(), old_epoch, 10);
    assert!(!hub.registry.install(old.clone(), id(old_epoch, 10), None));
    append(&old, id(old_epoch, 11), "a");
    let mut subscription = subscribe(&hub, &name, None);
    assert_eq!(subscription.start_positions(), [id(old_epoch, 11)]);
    append(&old, id(old_epoch, 12), "b");
    assert_eq!(drain(&mut subscription), [(id(old_epoch, 12).to_string(), None)]);
    append(&old, id(old_epoch, 13), "c");

    let new = hub.registry.new_topic(name.clone(), new_epoch, 0);
    append(&new, id(new_epoch, 1), "x");
    let lost = Gap { reason: GapReason::Epoch, requested: id(old_epoch, 13), missed: None };
    let part = gap::TopicGap { topic: &name, gap: &lost, resumed_after: id(new_epoch, 0) };
    let notice = Arc::new(gap::notice(&[part], id(new_epoch, 0)));
    assert!(hub.registry.install(new.clone(), id(new_epoch, 0), Some(notice)));
    append(&new, id(new_epoch, 2), "y");
    assert_eq!(
        drain(&mut subscription),
        [
            (id(old_epoch, 13).to_string(), None),
            (id(new_epoch, 0).to_string(), Some("crier.gap".to_owned())),
            (id(new_epoch, 1).to_string(), None),
            (id(new_epoch, 2).to_string(), None),
        ]
    );
    assert_eq!(old.readers().len(), 0, "moved off the old copy");
    assert_eq!(new.readers().len(), 1);
    hub.registry.prune_retired();
    assert_eq!(hub.registry.topics().len(), 1);

    // A resume from the old epoch on the new copy reports the gap.
    let resumed = subscribe(&hub, &name, Some(id(old_epoch, 12).to_string()));
    let gaps = resumed.gaps();
    assert_eq!(gaps[0].gap.reason, GapReason::Epoch);
}

#[test]
fn both_modes_answer_the_same_calls_without_panicking() {
    let hub = Hub::local(
        HubConfig { max_event_bytes: 4, ..HubConfig::default() },
        Arc::new(Metrics::new()),
    );
    let topic = TopicName::new("t").unwrap();
    let publish = |data: &str| {
        hub.publish(&topic, None, EventData::from(data.to_owned()))
            .now_or_never()
            .expect("a local publish is immediate")
    };
    assert_eq!(publish("abcd").unwrap().seq, 1);
    assert!(matches!(publish("abcde"), Err(PublishError::TooLarge { size: 5, max: 4 })));
    assert!(hub.is_ready());
    let prepared = Arc::new(hub).prepare_topic(topic, None).now_or_never();
    assert!(matches!(prepared, Some(Ok(()))));
}

/// Where the other topic was when an event was published, as the test's events say it: their
/// data is `after:{id}`.
fn after_in_data(event: &Event) -> Option<EventId> {
    std::str::from_utf8(event.data.bytes()).ok()?.strip_prefix("after:")?.parse().ok()
}

#[test]
fn a_causally_linked_pair_hands_no_event_before_the_other_topics_it_follows() {
    let hub = Hub::local(HubConfig::default(), Arc::new(Metrics::new()));
    let (a, b) = (TopicName::new("a").unwrap(), TopicName::new("b").unwrap());
    // Alternating publishes, each naming where the other topic was: every event of one follows
    // an event of the other.
    let mut published = Vec::new();
    for n in 0..6 {
        let (topic, other) = if n % 2 == 0 { (&b, &a) } else { (&a, &b) };
        let after = hub.head(other.as_str()).map_or(String::new(), |head| format!("after:{head}"));
        let id = hub.publish(topic, None, EventData::from(after)).now_or_never().unwrap().unwrap();
        published.push((topic.clone(), id));
    }
    let from_start = |topic: &TopicName| {
        (topic.clone(), hub.head(topic.as_str()).map(|head| EventId { seq: 0, ..head }))
    };
    let request = SubscriptionRequest::starting_at(vec![from_start(&a), from_start(&b)], Wire::Sse)
        .linked_causally(after_in_data);
    let mut subscription =
        hub.subscribe(request).now_or_never().expect("a local subscribe is immediate").unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut order = Vec::new();
    // One event per poll at most, so the order is the one handed over, whatever the batching.
    while let Poll::Ready(Polled::Events) = subscription.poll_events(&mut cx, 1, |_, event| {
        order.push((event.topic.clone(), event.id, after_in_data(event)));
    }) {}
    for (at, (topic, _, after)) in order.iter().enumerate() {
        let Some(after) = after else { continue };
        let handed_before = order[..at].iter().filter(|(t, _, _)| t != topic).count() as u64;
        assert!(handed_before >= after.seq, "event {at} came before what it follows: {order:?}");
    }
    let mut delivered: Vec<_> = order.iter().map(|(t, id, _)| (t.clone(), *id)).collect();
    delivered.sort_by_key(|(t, id)| (t.clone(), id.seq));
    published.sort_by_key(|(t, id)| (t.clone(), id.seq));
    assert_eq!(delivered, published);
}
