//! The one door every publish goes through, whichever edge it comes from (`POST /publish`, a
//! WebSocket `publish` command, a Mercure update), in two steps:
//!
//! 1. [`PublishPolicy::admit`]: the publisher's rate (`--publishes-per-sec`, counted for its
//!    token's subject, else its address; 429), the topics it may have the node create
//!    (`--new-topics-per-sec`; 429), and a place among the publishes in flight
//!    (`--max-concurrent-publishes`; 503 `overloaded` at once, never a queue). The
//!    [`PublishPermit`] it gives holds the place, so an edge takes it before it reads a body.
//! 2. [`PublishPermit::publish`]: the event goes to the hub (its idempotency key with it) and
//!    is answered within `--publish-timeout`. A cluster publish still queued for Redis then is
//!    withdrawn (503 `unavailable`: nothing was published); one Redis has, but did not answer
//!    for, is `outcome_unknown` (503: retry with the same idempotency key to find out).
//!
//! Every refusal is counted where it is made (`crier_rejections_total`,
//! `crier_shed_requests_total{route="publish"}`).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::admission::Admission;
use super::error::{ApiError, ErrorCode};
use super::keyed_attempts::{Attempt, Ending, KeyedAttempts};
use super::peer::Peer;
use crate::event::{EventData, EventName, IdempotencyKey, TopicName};
use crate::hub::{Hub, PublishError, PublishOptions, Published, Ticket};
use crate::limits::{ClientKey, RateTable};
use crate::metrics::{Metrics, Rejection};

/// Who a publish rate is counted for: the token's subject, else the peer's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Principal {
    Subject(Box<str>),
    Address(ClientKey),
}

/// The limits of [`PublishPolicy`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PublishLimits {
    /// Publishes per principal per second (and in a burst).
    pub(crate) per_sec: u32,
    /// Publishes in flight at once.
    pub(crate) max_in_flight: usize,
    /// Longest a publish may wait to be accepted.
    pub(crate) timeout: Duration,
    /// How long Redis remembers an idempotency key (`--idempotency-window`).
    pub(crate) idempotency_window: Duration,
}

/// Every publish's limits, and the way into the hub.
pub(crate) struct PublishPolicy {
    hub: Arc<Hub>,
    /// Counts new topics, as for streams.
    admission: Arc<Admission>,
    limits: PublishLimits,
    rates: RateTable<Principal>,
    in_flight: Arc<Semaphore>,
    /// Keyed cluster publishes whose outcome is open.
    attempts: Arc<KeyedAttempts>,
    metrics: Arc<Metrics>,
    /// `crier_shed_requests_total{route="publish"}`.
    shed: Counter,
}

/// A publish admitted, holding its place among those in flight until it is answered.
#[must_use = "a permit holds a place among the publishes in flight"]
pub(crate) struct PublishPermit {
    policy: Arc<PublishPolicy>,
    peer: IpAddr,
    principal: Principal,
    _place: OwnedSemaphorePermit,
}

impl PublishPolicy {
    pub(crate) fn new(
        hub: Arc<Hub>,
        admission: Arc<Admission>,
        limits: PublishLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(PublishPolicy {
            hub,
            admission,
            rates: RateTable::per_second(limits.per_sec),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            attempts: Arc::new(KeyedAttempts::new(limits.idempotency_window)),
            shed: metrics.shed_requests("publish"),
            metrics,
            limits,
        })
    }

    /// Admits a publish to `topic` by `peer`, whose token names `subject` (if any): its rate,
    /// the new topic it may create, and a place in flight.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: Peer,
        subject: Option<&str>,
        topic: &TopicName,
    ) -> Result<PublishPermit, ApiError> {
        let permit = self.admit_batch(peer, subject)?;
        permit.admit_event(topic, false)?;
        Ok(permit)
    }

    /// Admits a batch of publishes by `peer` (whose token names `subject`, if any) to one
    /// place in flight; each event is then admitted on its own ([`PublishPermit::admit_event`]).
    pub(crate) fn admit_batch(
        self: &Arc<Self>,
        peer: Peer,
        subject: Option<&str>,
    ) -> Result<PublishPermit, ApiError> {
        let principal = match subject {
            Some(subject) => Principal::Subject(subject.into()),
            None => Principal::Address(ClientKey::of(peer.ip)),
        };
        let place = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            self.shed.increment(1);
            let detail = format!(
                "more than {} publishes are in flight; retry later",
                self.limits.max_in_flight
            );
            ApiError::new(ErrorCode::Overloaded, detail)
        })?;
        Ok(PublishPermit { policy: self.clone(), peer: peer.ip, principal, _place: place })
    }

    /// The metrics publishes are counted in.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Forgets the principals whose buckets are full again.
    pub(crate) fn prune(&self) {
        self.rates.prune(Instant::now());
        self.attempts.prune();
    }
}

impl PublishPermit {
    /// Admits one event to `topic` under this permit: the publisher's rate, and the new topic
    /// it may create, unless `topic_admitted` (the event before it in a batch went to the
    /// same topic, which exists or is charged already).
    pub(crate) fn admit_event(
        &self,
        topic: &TopicName,
        topic_admitted: bool,
    ) -> Result<(), ApiError> {
        let policy = &self.policy;
        policy.rates.take(&self.principal, Instant::now()).map_err(|wait| {
            policy.metrics.rejected(Rejection::PublishRate);
            tracing::debug!(peer = %self.peer, "publish over the rate limit");
            let detail = format!("more than {} publishes per second", policy.limits.per_sec);
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
        })?;
        if topic_admitted {
            Ok(())
        } else if policy.hub.is_relayed() {
            // A cluster node holds only the topics it has readers for: whether this publish
            // starts a topic is Redis's to say, and charged then.
            policy.admission.may_start_topic(self.peer)
        } else {
            policy.admission.admit_topics(self.peer, [topic.as_str()])
        }
    }

    /// Publishes the event and answers with its id, within `--publish-timeout`; the place in
    /// flight is held until the permit is dropped.
    pub(crate) async fn publish(
        &self,
        topic: TopicName,
        name: Option<EventName>,
        data: EventData,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Published, ApiError> {
        let policy = self.policy.clone();
        if !policy.hub.is_relayed() {
            // A single node answers at once, and never leaves an outcome open.
            let options = PublishOptions { idempotency_key, ticket: None };
            return Ok(policy.hub.publish_with(&topic, name, data, options).await?);
        }
        let Some(key) = idempotency_key else {
            let ticket = Arc::new(Ticket::default());
            let options = PublishOptions { idempotency_key: None, ticket: Some(ticket.clone()) };
            let publishing = policy.hub.publish_with(&topic, name, data, options);
            let answer = Deadline::new(publishing, policy.limits.timeout).await;
            return self.answer(&topic, answer, &ticket, false);
        };
        let attempt = policy.attempts.begin(&topic, &key);
        let ticket = Arc::new(Ticket::default());
        let options = PublishOptions { idempotency_key: Some(key), ticket: Some(ticket.clone()) };
        let hub = policy.hub.clone();
        let topic_ = topic.clone();
        // Boxed so that, if its caller stops waiting, it can be driven to its end elsewhere.
        let mut publishing =
            Box::pin(async move { hub.publish_with(&topic_, name, data, options).await });
        let answer = tokio::select! {
            biased;
            answer = Deadline::new(publishing.as_mut(), policy.limits.timeout) => answer,
            // An earlier attempt of the key got its answer first: it is this one's too.
            id = attempt.settled() => {
                if !ticket.withdraw() {
                    finish_in_background(publishing, policy.attempts.clone(), attempt);
                } else {
                    policy.attempts.end(&attempt, Ending::NotPublished);
                }
                return Ok(Published { id, replayed: true });
            }
        };
        let ending = match &answer {
            Ok(published) => Ending::of(published),
            Err(_) if ticket.withdraw() => Ending::NotPublished,
            Err(_) => {
                // Sent: its answer still settles the key for the retries.
                let earlier_open = attempt.earlier_open();
                finish_in_background(publishing, policy.attempts.clone(), attempt);
                return self.answer(&topic, answer, &ticket, earlier_open);
            }
        };
        policy.attempts.end(&attempt, ending);
        self.answer(&topic, answer, &ticket, attempt.earlier_open())
    }

    /// Publishes events admitted under this permit, in their order, and answers each (with its
    /// topic), within
    /// `--publish-timeout` for them all: as [`PublishPermit::publish`] does each, but in
    /// cluster mode through Redis together (one round trip for the batch). A keyed event
    /// settles its key for retries elsewhere on this node; one sent and not answered in time
    /// leaves its key's outcome unknown.
    pub(crate) async fn publish_group(
        &self,
        events: Vec<(TopicName, Option<EventName>, EventData, Option<IdempotencyKey>)>,
    ) -> Vec<(TopicName, Result<Published, ApiError>)> {
        let policy = self.policy.clone();
        let relayed = policy.hub.is_relayed();
        let mut topics = Vec::with_capacity(events.len());
        let mut tickets = Vec::with_capacity(events.len());
        let mut attempts = Vec::with_capacity(events.len());
        let mut grouped = Vec::with_capacity(events.len());
        for (topic, name, data, key) in events {
            let ticket = Arc::new(Ticket::default());
            let attempt =
                key.as_ref().filter(|_| relayed).map(|key| policy.attempts.begin(&topic, key));
            let options = PublishOptions { idempotency_key: key, ticket: Some(ticket.clone()) };
            topics.push(topic.clone());
            tickets.push(ticket);
            attempts.push(attempt);
            grouped.push((topic, name, data, options));
        }
        let answers: Vec<Result<Result<Published, PublishError>, Duration>> =
            match Deadline::new(policy.hub.publish_group(grouped), policy.limits.timeout).await {
                Ok(answers) => answers.into_iter().map(Ok).collect(),
                Err(elapsed) => topics.iter().map(|_| Err(elapsed)).collect(),
            };
        let mut results = Vec::with_capacity(topics.len());
        for (((topic, ticket), attempt), answer) in
            topics.into_iter().zip(&tickets).zip(attempts).zip(answers)
        {
            if !relayed {
                let answer = match answer {
                    Ok(answer) => answer.map_err(ApiError::from),
                    Err(elapsed) => {
                        let detail = format!("no answer within {elapsed:?}; retry later");
                        Err(ApiError::new(ErrorCode::Unavailable, detail))
                    }
                };
                results.push((topic, answer));
                continue;
            }
            let earlier_open = attempt.as_ref().is_some_and(|a| a.earlier_open());
            if let Some(attempt) = &attempt {
                let ending = match &answer {
                    Ok(published) => Ending::of(published),
                    Err(_) if ticket.withdraw() => Ending::NotPublished,
                    Err(_) => Ending::Unknown,
                };
                policy.attempts.end(attempt, ending);
            }
            let answer = self.answer(&topic, answer, ticket, earlier_open);
            results.push((topic, answer));
        }
        results
    }

    /// The answer to a cluster publish: its id, or why not. `earlier_open`: an earlier attempt
    /// with the same key may yet be published, so "nothing was published" cannot be said.
    fn answer(
        &self,
        topic: &TopicName,
        answer: Result<Result<Published, PublishError>, Duration>,
        ticket: &Ticket,
        earlier_open: bool,
    ) -> Result<Published, ApiError> {
        let outcome_unknown = || {
            let detail = "the event was sent to Redis and no answer came in time: it may have \
                          been published; retry with the same Idempotency-Key to find out";
            ApiError::new(ErrorCode::OutcomeUnknown, detail)
        };
        match answer {
            Ok(Ok(published)) => {
                if published.id.seq == 1 && !published.replayed {
                    self.policy.admission.charge_new_topic(self.peer);
                }
                Ok(published)
            }
            Ok(Err(PublishError::Unavailable(_))) if earlier_open => Err(outcome_unknown()),
            Ok(Err(error)) => Err(error.into()),
            // Withdrawn if still queued for Redis (then nothing is published), else only Redis
            // knows.
            Err(elapsed) if !ticket.withdraw() => {
                tracing::debug!(%topic, ?elapsed, "a publish Redis has did not get its answer in time");
                Err(outcome_unknown())
            }
            Err(_) if earlier_open => Err(outcome_unknown()),
            Err(elapsed) => {
                let detail = format!("no answer within {elapsed:?}; retry later");
                Err(ApiError::new(ErrorCode::Unavailable, detail))
            }
        }
    }
}

/// Drives a keyed publish whose caller stopped waiting to its end, so its answer settles the
/// key for the retries. Only a publish already sent to Redis is left to this: their number is
/// bounded by the relay's pipelines.
fn finish_in_background(
    publishing: Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send>>,
    attempts: Arc<KeyedAttempts>,
    attempt: Attempt,
) {
    tokio::spawn(async move {
        let ending = Ending::of(&publishing.await);
        attempts.end(&attempt, ending);
    });
}

pin_project! {
    /// A future's answer, or how long it was waited for once that is too long. The timer is
    /// armed only if the answer is not ready at once, so a publish answered on its first poll
    /// (a single node's) reads no clock and never touches the timer wheel.
    struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Duration,
    }
}

impl<F> Deadline<F> {
    fn new(inner: F, after: Duration) -> Self {
        Deadline { inner, sleep: None, after }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Duration>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(Ok(answer));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.after)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(*this.after)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Authority};
    use crate::http::{StreamRates, TrustedProxies};
    use crate::hub::HubConfig;

    fn policy(per_sec: u32, max_in_flight: usize) -> (Arc<PublishPolicy>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::local(HubConfig::default(), metrics.clone()));
        let authority = Arc::new(Authority::new(AuthConfig::default()).unwrap());
        let rates = StreamRates {
            new_streams_per_sec: 100,
            resumes_per_sec: 100,
            max_streams_per_ip: 100,
            new_topics_per_sec: 100,
        };
        let proxies = TrustedProxies::default();
        let admission = Arc::new(Admission::new(
            authority,
            proxies,
            (None, Default::default()),
            metrics.clone(),
            rates,
            hub.clone(),
        ));
        let limits = PublishLimits {
            per_sec,
            max_in_flight,
            timeout: Duration::from_secs(1),
            idempotency_window: Duration::from_secs(60),
        };
        (PublishPolicy::new(hub, admission, limits, metrics.clone()), metrics)
    }

    fn peer(last: u8) -> Peer {
        Peer { ip: std::net::IpAddr::from([192, 0, 2, last]), local: false }
    }

    #[tokio::test]
    async fn a_permit_holds_a_place_until_its_publish_is_answered() {
        let (policy, metrics) = policy(100, 1);
        let topic = TopicName::new("t").unwrap();
        let held = policy.admit(peer(1), None, &topic).unwrap();
        let shed = policy.admit(peer(2), None, &topic).err().unwrap();
        assert_eq!(shed.code, ErrorCode::Overloaded);
        assert!(metrics.render().contains(r#"crier_shed_requests_total{route="publish"} 1"#));
        let published = held.publish(topic.clone(), None, EventData::from("x".to_owned()), None);
        assert!(!published.await.unwrap().replayed);
        drop(held);
        let key = IdempotencyKey::new("k").unwrap();
        let again = |key| {
            let permit = policy.admit(peer(2), None, &topic).expect("the place is free again");
            let topic = topic.clone();
            async move { permit.publish(topic, None, EventData::from("y".to_owned()), Some(key)).await }
        };
        let first = again(key.clone()).await.unwrap();
        let second = again(key).await.unwrap();
        assert_eq!((second.id, second.replayed), (first.id, true), "keys pass to the hub");
    }

    #[test]
    fn the_rate_is_counted_by_subject_else_by_address() {
        let (policy, metrics) = policy(1, 8);
        let topic = TopicName::new("t").unwrap();
        let _first = policy.admit(peer(1), None, &topic).unwrap();
        let refused = policy.admit(peer(1), None, &topic).err().unwrap();
        assert_eq!((refused.code, refused.retry_after_secs()), (ErrorCode::RateLimited, Some(1)));
        let _other_address = policy.admit(peer(2), None, &topic).unwrap();
        let _subject = policy.admit(peer(1), Some("alice"), &topic).unwrap();
        assert!(policy.admit(peer(3), Some("alice"), &topic).is_err(), "alice from anywhere");
        assert!(metrics.render().contains(r#"crier_rejections_total{reason="publish_rate"} 2"#));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_answers_in_time_or_says_how_long_it_waited() {
        let started = Instant::now();
        let late = Deadline::new(std::future::pending::<()>(), Duration::from_millis(300)).await;
        assert_eq!(late, Err(Duration::from_millis(300)));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(Deadline::new(async { 7 }, Duration::from_millis(300)).await, Ok(7));
    }
}
