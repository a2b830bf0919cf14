//! Active subscriptions (`--mercure-subscriptions`), as the reference hub's `subscriptions`
//! option: each subscriber's arrival and departure is a private update (JSON-LD) on
//! `/.well-known/mercure/subscriptions/{selector}/{subscriber}`, published to the hub's log of
//! subscription events (apart from the updates, with a history of its own), and
//! `GET /.well-known/mercure/subscriptions[/{selector}[/{subscriber}]]` lists who is subscribed.
//!
//! The list is the cluster's, not the node's: each node keeps its subscriptions in the hub's
//! [`Roster`](crate::hub::Roster), which in cluster mode lives in Redis, and announces them
//! through that log. When a node dies, the first survivor to notice (within
//! `NODE_TIMEOUT` and a heartbeat) takes its subscriptions and announces their end.
//! Announcements go through one task per node, so a subscriber's departure never overtakes its
//! arrival.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{MercureEdge, selector::MercureSelector, text};
use crate::codec::mercure::{MercureUpdate, Record};
use crate::event::EventId;
use crate::http::{MERCURE_SUBSCRIPTIONS_PATH as SUBSCRIPTIONS_PATH, ResponseBody};
use crate::hub::{Hub, Roster};

/// The JSON-LD context of every document.
const CONTEXT: &str = "https://mercure.rocks/";

/// A subscription, as announced and listed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct ActiveSubscription {
    #[serde(rename = "@context", default, skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    subscriber: String,
    topic: String,
    active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
}

/// A list of subscriptions, as the API answers it.
#[derive(Serialize)]
struct SubscriptionList<'a> {
    #[serde(rename = "@context")]
    context: &'static str,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "lastEventID")]
    last_event_id: &'a str,
    subscriptions: Vec<ActiveSubscription>,
}

/// The node's side of active subscriptions.
pub(crate) struct Presence {
    /// The subscriptions of departed subscribers, to announce.
    departures: mpsc::UnboundedSender<Announcement>,
}

/// What the announcer is asked to do, in order.
enum Announcement {
    /// Record and announce the end of these subscriptions.
    Left(Vec<ActiveSubscription>),
    /// Say when everything asked before is done.
    Flush(oneshot::Sender<()>),
}

/// Held by a subscriber's stream: announces its departure when dropped.
pub(crate) struct Departure {
    presence: Arc<Presence>,
    subscriptions: Vec<ActiveSubscription>,
}

impl Drop for Departure {
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.subscriptions);
        let _ = self.presence.departures.send(Announcement::Left(left));
    }
}

impl Presence {
    /// Starts the node's announcer, which also keeps the node in the cluster's roster and
    /// announces the end of the subscriptions of nodes that died.
    pub(crate) fn start(hub: Arc<Hub>) -> Arc<Self> {
        let (departures, queue) = mpsc::unbounded_channel();
        tokio::spawn(announce(hub, queue));
        Arc::new(Presence { departures })
    }

    /// Records a new subscriber to `selectors` (its token's `payload` with it) and announces
    /// it, as the reference hub does, before the subscriber reads the log (so it is not told
    /// of itself); its departure is announced when the returned guard is dropped.
    pub(crate) async fn arrive(
        self: &Arc<Self>,
        hub: &Hub,
        selectors: &[String],
        payload: Option<serde_json::Value>,
    ) -> (Departure, Option<EventId>) {
        let subscriber = format!("urn:uuid:{}", uuid::Uuid::now_v7());
        let escaped_subscriber = query_escape(&subscriber);
        let subscriptions: Vec<ActiveSubscription> = selectors
            .iter()
            .map(|selector| ActiveSubscription {
                context: None,
                id: format!("{SUBSCRIPTIONS_PATH}/{}/{escaped_subscriber}", query_escape(selector)),
                kind: "Subscription".to_owned(),
                subscriber: subscriber.clone(),
                topic: selector.clone(),
                active: true,
                payload: payload.clone(),
            })
            .collect();
        record(hub, &subscriptions, true).await;
        let mut last = None;
        for subscription in &subscriptions {
            last = publish(hub, subscription.clone(), true).await.or(last);
        }
        (Departure { presence: self.clone(), subscriptions }, last)
    }

    /// Waits until every departure so far is recorded and announced: at shutdown, once the
    /// streams have ended, so the node announces its own subscribers' departure rather than
    /// leaving it to a survivor after the node is taken for dead.
    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.departures.send(Announcement::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Adds `subscriptions` to the roster (`active`) or removes them.
async fn record(hub: &Hub, subscriptions: &[ActiveSubscription], active: bool) {
    let roster = hub.roster();
    for s in subscriptions {
        let recorded = if active {
            let value = serde_json::to_string(s).unwrap_or_default();
            roster.put(s.id.clone(), value).await
        } else {
            roster.remove(&s.id).await
        };
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "the roster could not record a subscription");
        }
    }
}

/// The announcer: records and announces departures; every heartbeat,
/// keeps the node in the roster and announces the departure of the subscribers of dead nodes.
async fn announce(hub: Arc<Hub>, mut departures: mpsc::UnboundedReceiver<Announcement>) {
    let mut beat = tokio::time::interval(Roster::HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            asked = departures.recv() => match asked {
                None => return,
                Some(Announcement::Left(subscriptions)) => {
                    record(&hub, &subscriptions, false).await;
                    for subscription in subscriptions {
                        publish(&hub, subscription, false).await;
                    }
                }
                Some(Announcement::Flush(done)) => {
                    let _ = done.send(());
                }
            },
            _ = beat.tick() => {
                let roster = hub.roster();
                if let Err(e) = roster.beat().await {
                    tracing::debug!(error = %e, "the node could not tell the roster it is alive");
                    continue;
                }
                match roster.take_dead().await {
                    Ok(dead) => {
                        for value in dead {
                            if let Ok(subscription) = serde_json::from_str::<ActiveSubscription>(&value) {
                                publish(&hub, subscription, false).await;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "the roster's dead nodes could not be read"),
                }
            }
        }
    }
}

/// Publishes a subscription event: a private update on the subscription's own topic, to the
/// log of subscription events; returns its place in that log.
async fn publish(hub: &Hub, mut subscription: ActiveSubscription, active: bool) -> Option<EventId> {
    subscription.context = Some(CONTEXT.to_owned());
    subscription.active = active;
    let data = serde_json::to_string_pretty(&subscription).ok()?;
    let id = format!("urn:uuid:{}", uuid::Uuid::now_v7());
    let record = Record {
        id: id.as_str().into(),
        topics: vec![subscription.id.as_str().into()],
        private: true,
        kind: None,
        retry: None,
        data: data.as_str().into(),
        after: super::resume::reached(hub, &crate::codec::mercure::log()),
    };
    hub.publish(&crate::codec::mercure::subscriptions_log(), None, record.to_event_data())
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "a subscription event could not be published"))
        .ok()
}

impl MercureEdge {
    /// `GET /.well-known/mercure/subscriptions[/{selector}[/{subscriber}]]`: the cluster's
    /// subscriptions, as JSON-LD, with the id of the last update as `lastEventID` and `ETag`.
    pub(super) async fn subscriptions<B>(&self, req: &Request<B>) -> Response<ResponseBody> {
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        let rest = &req.uri().path()[SUBSCRIPTIONS_PATH.len()..];
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        let (topic, subscriber) = match (rest.is_empty(), parts.as_slice()) {
            (true, _) => (None, None),
            (false, [topic]) => (Some(query_unescape(topic)), None),
            (false, [topic, subscriber]) => {
                (Some(query_unescape(topic)), Some(query_unescape(subscriber)))
            }
            _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
        };
        if self.authority.has_subscriber_key() {
            let request_uri = req.uri().path_and_query().map_or(req.uri().path(), |p| p.as_str());
            let allowed = match self.authorize_subscriber(req) {
                Ok(grant) => grant.subscribe.as_deref().is_some_and(|claim| {
                    claim.iter().any(|s| self.selectors.get(s).matches(request_uri))
                }),
                Err(_) => false,
            };
            if !allowed {
                return text(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
        }
        // The last id first: a change listed after it is also announced after it.
        let last_event_id = self.last_event_id();
        let values = match self.hub.roster().list().await {
            Ok(values) => values,
            Err(e) => {
                tracing::debug!(error = %e, "the roster could not be read");
                return text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
            }
        };
        let requested = topic.as_deref().map(MercureSelector::compile);
        let mut subscriptions: Vec<ActiveSubscription> = values
            .iter()
            .filter_map(|value| serde_json::from_str::<ActiveSubscription>(value).ok())
            .filter(|s| requested.as_ref().is_none_or(|selector| selector.matches(&s.topic)))
            .filter(|s| subscriber.as_ref().is_none_or(|wanted| *wanted == s.subscriber))
            .collect();
        subscriptions.sort_by(|a, b| a.id.cmp(&b.id));
        let etag = format!("\"{}\"", last_event_id.replace('"', ""));
        let unchanged =
            req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(
                |tags| {
                    tags.split(',').any(|tag| {
                        let tag = tag.trim().trim_start_matches("W/");
                        tag == etag || tag.trim_matches('"') == last_event_id || tag == "*"
                    })
                },
            );
        let body = match (topic, subscriber) {
            (Some(_), Some(_)) => {
                let Some(mut one) = subscriptions.pop() else {
                    return text(StatusCode::NOT_FOUND, "Not Found");
                };
                one.context = Some(CONTEXT.to_owned());
                serde_json::to_vec_pretty(&one)
            }
            (topic, _) => {
                let id = match topic {
                    None => SUBSCRIPTIONS_PATH.to_owned(),
                    Some(topic) => format!("{SUBSCRIPTIONS_PATH}/{}", query_escape(&topic)),
                };
                serde_json::to_vec_pretty(&SubscriptionList {
                    context: CONTEXT,
                    id,
                    kind: "Subscriptions",
                    last_event_id: &last_event_id,
                    subscriptions,
                })
            }
        };
        let mut response = if unchanged {
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            Response::new(ResponseBody::full(Bytes::from(body.unwrap_or_default())))
        };
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/ld+json"));
        headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
        if let Ok(etag) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, etag);
        }
        response
    }

    /// The id of the last subscription event the node holds, or `earliest`: a client that
    /// reads the list, then subscribes to subscription events from there, misses no change.
    fn last_event_id(&self) -> String {
        let Some(log) = &self.logs.subscriptions else { return super::EARLIEST.to_owned() };
        let mut last = None;
        self.hub.visit_held(log.as_str(), |event| {
            if let Some(update) = event.frames.attachment::<MercureUpdate>() {
                last = Some(update.id.clone());
            }
            true
        });
        last.map_or_else(|| super::EARLIEST.to_owned(), String::from)
    }
}

/// Escapes like Go's `url.QueryEscape` (as the reference hub builds subscription ids): every
/// byte but `A-Z a-z 0-9 - _ . ~` is `%XX`, and a space is `+`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(byte >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(byte & 15)]));
            }
        }
    }
    out
}

/// Undoes [`query_escape`] (and any `%XX`); `+` is a space.
fn query_unescape(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_escaped_as_the_reference_hub_escapes_them() {
        let topic = "https://example.com/books/{id} x~*";
        let escaped = query_escape(topic);
        assert_eq!(escaped, "https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D+x~%2A");
        assert_eq!(query_unescape(&escaped), topic);
    }
}
