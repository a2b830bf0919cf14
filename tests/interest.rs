//! Scale-out in cluster mode, against real `redis-server` processes and a real Redis Cluster: a
//! node hears only the topics it has readers for (and stops after the grace period), a late
//! reader gets history then live with no gap, bursts of new topics are batched, and on a Redis
//! Cluster events stay in their shard, across a slot migration too.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use support::{SseClient, TestServer, metric, publish, request, wait_until};

async fn node(urls: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--redis-url", urls];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args).await;
    wait_until("the node to be ready", || async {
        request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    server
}

/// New streams and topics as fast as a crowd behind one address opens them.
const UNLIMITED: [&str; 4] = ["--new-streams-per-sec", "100000", "--new-topics-per-sec", "100000"];

async fn value(server: &TestServer, series: &str) -> f64 {
    metric(&server.metrics().await, series).unwrap_or_else(|| panic!("no {series}"))
}

/// How many subscribers Redis has for `topic`'s channel (classic, or shard channel).
async fn listeners(redis: &RedisServer, topic: &str, sharded: bool) -> i64 {
    let mut conn = redis.connection().await;
    let command = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
    let answer: (String, i64) = redis::cmd("PUBSUB")
        .arg(command)
        .arg(format!("crier:{{{topic}}}:ev"))
        .query_async(&mut conn)
        .await
        .unwrap();
    answer.1
}

/// `INFO` of `redis` as key → value.
async fn info(redis: &RedisServer, section: &str) -> HashMap<String, String> {
    let text: String =
        redis::cmd("INFO").arg(section).query_async(&mut redis.connection().await).await.unwrap();
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The sequence number of an event id.
fn seq(id: &str) -> u64 {
    id.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hears_only_the_topics_it_has_readers_for() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis.url(), &[]).await, node(&redis.url(), &[]).await);
    let mut reader = SseClient::connect(a.addr, "/sse?topic=x", &[]).await;
    a.wait_subscriptions(1).await;
    for i in 0..400 {
        b.publish(&format!("y{}", i % 50), "elsewhere").await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(b.publish("x", &format!("x {i}")).await);
    }
    let got: Vec<String> = reader.events(5).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(got, ids);
    // A received the events of x only, and holds x only; B, with no reader, holds nothing.
    assert_eq!(value(&a, "crier_relay_received_total").await, 5.0);
    assert_eq!(value(&a, "crier_topics").await, 1.0);
    assert_eq!(value(&a, "crier_relay_topics_heard").await, 1.0);
    assert_eq!(value(&b, "crier_relay_received_total").await, 0.0);
    assert_eq!(value(&b, "crier_topics").await, 0.0);
    assert_eq!(listeners(&redis, "x", false).await, 1, "A's lane for x, and nobody else");
    assert_eq!(listeners(&redis, "y0", false).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_arriving_later_gets_history_then_live_with_no_gap_or_duplicate() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis.url(), &[]).await, node(&redis.url(), &[]).await);
    let mut first = Vec::new();
    for i in 0..20 {
        first.push(b.publish("late", &format!("{i}")).await);
    }
    // Publishing goes on while readers arrive on A, which does not hear the topic yet.
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 20..220 {
            ids.push(b.publish("late", &format!("{i}")).await);
        }
        ids
    });
    let resume = first[4].clone();
    let mut resumed =
        SseClient::connect(a.addr, "/sse?topic=late", &[("Last-Event-ID", &resume)]).await;
    let mut fresh = SseClient::connect(a.addr, "/sse?topic=late", &[]).await;
    let later = publisher.await.unwrap();
    let all: Vec<String> = first.into_iter().chain(later).collect();
    let want = &all[5..];
    let got: Vec<String> =
        resumed.events(want.len()).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(got, want, "history then live, each once, in order");
    // The reader without a position starts at some point and then misses nothing.
    let tail = fresh.next_event().await.last_event_id;
    let from = all.iter().position(|id| *id == tail).expect("an event published");
    let rest = all.len() - from - 1;
    let got: Vec<String> = fresh.events(rest).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(got, all[from + 1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_reader_leaves_and_the_grace_passes_the_node_stops_hearing_the_topic() {
    let redis = RedisServer::start().await;
    let a = node(&redis.url(), &["--interest-grace", "1s"]).await;
    let b = node(&redis.url(), &[]).await;
    let reader = SseClient::connect(a.addr, "/sse?topic=t", &[]).await;
    a.wait_subscriptions(1).await;
    let heard = b.publish("t", "heard").await;
    a.wait_metric("crier_relay_received_total", 1.0).await;
    assert_eq!(listeners(&redis, "t", false).await, 1);
    drop(reader);
    a.wait_subscriptions(0).await;
    // Within the grace, the node still holds and hears the topic.
    b.publish("t", "in the grace").await;
    a.wait_metric("crier_relay_received_total", 2.0).await;
    assert_eq!(value(&a, "crier_topics").await, 1.0);
    wait_until("the node to let the topic go", || async {
        let metrics = a.metrics().await;
        metric(&metrics, "crier_relay_topics_heard") == Some(0.0)
            && metric(&metrics, "crier_topics") == Some(0.0)
            && metric(&metrics, "crier_relay_interest_changes_total{op=\"unsubscribe\"}")
                == Some(1.0)
    })
    .await;
    assert_eq!(listeners(&redis, "t", false).await, 0, "unsubscribed at Redis");
    for _ in 0..10 {
        b.publish("t", "unheard").await;
    }
    // A round trip on another topic A does hear: by then the ten would have arrived.
    let mut probe = SseClient::connect(a.addr, "/sse?topic=probe", &[]).await;
    let id = b.publish("probe", "p").await;
    assert_eq!(probe.next_event().await.last_event_id, id);
    assert_eq!(value(&a, "crier_relay_received_total").await, 3.0);
    // A new reader is served from the stream again.
    let mut back = SseClient::connect(a.addr, "/sse?topic=t", &[("Last-Event-ID", &heard)]).await;
    let data: Vec<String> = back.events(11).await.into_iter().map(|e| e.data).collect();
    assert_eq!(data[0], "in the grace");
    assert!(data[1..].iter().all(|d| d == "unheard"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ten_thousand_new_topics_is_subscribed_in_a_few_round_trips() {
    let redis = RedisServer::start().await;
    let a = node(&redis.url(), &UNLIMITED).await;
    let before = info(&redis, "commandstats").await;
    let calls = |stats: &HashMap<String, String>| -> u64 {
        stats.get("cmdstat_subscribe").map_or(0, |line| {
            line.split(',').find_map(|f| f.strip_prefix("calls=")).unwrap().parse().unwrap()
        })
    };
    assert_eq!(calls(&before), 0);
    // 200 streams of 50 topics each, all at once.
    let streams = (0..200).map(|s| {
        let query: Vec<String> = (0..50).map(|t| format!("topic=burst-{s}-{t}")).collect();
        let target = format!("/sse?{}", query.join("&"));
        let addr = a.addr;
        tokio::spawn(async move { SseClient::connect(addr, &target, &[]).await })
    });
    let streams = futures_util::future::join_all(streams).await;
    assert_eq!(streams.len(), 200);
    a.wait_subscriptions(10_000).await;
    assert_eq!(value(&a, "crier_relay_topics_heard").await, 10_000.0);
    let after = info(&redis, "commandstats").await;
    let used = calls(&after) - calls(&before);
    // Every stream's request is served by a batch: far fewer commands than topics.
    assert!(used <= 400, "{used} SUBSCRIBE commands for 10,000 topics");
    let stats = info(&redis, "stats").await;
    assert_eq!(stats["pubsub_channels"], "10000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stay_lose_nothing_while_a_thousand_topics_a_second_come_and_go() {
    let redis = RedisServer::start().await;
    let a = node(&redis.url(), &[&UNLIMITED[..], &["--interest-grace", "200ms"]].concat()).await;
    let b = node(&redis.url(), &[]).await;
    let stayers: Vec<String> = (0..4).map(|i| format!("stay{i}")).collect();
    let mut readers = Vec::new();
    for topic in &stayers {
        readers.push(SseClient::connect(a.addr, &format!("/sse?topic={topic}"), &[]).await);
    }
    let churn_addr = a.addr;
    let churn = tokio::spawn(async move {
        // 3 s of 20 streams a second, each of 50 new topics, closed after 100 ms.
        let mut opened = 0;
        for round in 0..60 {
            let query: Vec<String> = (0..50).map(|t| format!("topic=churn-{round}-{t}")).collect();
            let target = format!("/sse?{}", query.join("&"));
            let stream = SseClient::connect(churn_addr, &target, &[]).await;
            opened += 50;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(stream);
        }
        opened
    });
    let publish_addr = b.addr;
    let topics = stayers.clone();
    let publisher = tokio::spawn(async move {
        let mut ids: Vec<Vec<String>> = vec![Vec::new(); topics.len()];
        for n in 0..600 {
            let i = n % topics.len();
            let response = publish(publish_addr, &topics[i], None, b"e", None).await;
            assert_eq!(response.status, 200, "{}", response.text());
            ids[i].push(response.json()["id"].as_str().unwrap().to_owned());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });
    let opened = churn.await.unwrap();
    let ids = publisher.await.unwrap();
    for (reader, published) in readers.iter_mut().zip(&ids) {
        let got: Vec<String> =
            reader.events(published.len()).await.into_iter().map(|e| e.last_event_id).collect();
        assert_eq!(&got, published);
    }
    assert_eq!(opened, 3000);
    wait_until("the churned topics to be let go", || async {
        let metrics = a.metrics().await;
        metric(&metrics, "crier_relay_topics_heard") == Some(4.0)
            && metric(&metrics, "crier_relay_interest_changes_total{op=\"unsubscribe\"}")
                == Some(3000.0)
    })
    .await;
    assert_eq!(value(&a, "crier_relay_gaps_total").await, 0.0);
}

/// The cluster-bus messages `server` sent for classic and shard-channel publishes.
async fn bus_publishes(server: &RedisServer) -> (u64, u64) {
    let text: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (
        field("cluster_stats_messages_publish_sent"),
        field("cluster_stats_messages_publishshard_sent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_events_stay_in_their_shard() {
    let redis = RedisCluster::start().await;
    let (a, b) = (
        node(&redis.urls(), &["--redis-cluster"]).await,
        node(&redis.urls(), &["--redis-cluster"]).await,
    );
    let topics: Vec<String> = (0..12).map(|i| format!("shard-{i}")).collect();
    let mut readers = Vec::new();
    for topic in &topics {
        readers.push(SseClient::connect(a.addr, &format!("/sse?topic={topic}"), &[]).await);
    }
    for round in 0..5 {
        for (topic, reader) in topics.iter().zip(&mut readers) {
            let id = b.publish(topic, &format!("{round}")).await;
            assert_eq!(reader.next_event().await.last_event_id, id);
        }
    }
    let mut spublish = 0;
    let mut masters_used = 0;
    for master in &redis.masters {
        let (classic, _) = bus_publishes(master).await;
        assert_eq!(classic, 0, "no classic PUBLISH crossed the cluster bus");
        let stats = info(master, "commandstats").await;
        let calls = stats.get("cmdstat_spublish").map_or(0, |line| {
            line.split(',').find_map(|f| f.strip_prefix("calls=")).unwrap().parse::<u64>().unwrap()
        });
        assert!(!stats.contains_key("cmdstat_publish"), "{stats:?}");
        spublish += calls;
        masters_used += u64::from(calls > 0);
        // A's lanes are subscribed on this master to its own shard channels only.
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("SHARDCHANNELS")
            .query_async(&mut master.connection().await)
            .await
            .unwrap();
        for channel in channels {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&channel)
                .query_async(&mut master.connection().await)
                .await
                .unwrap();
            let owned: i64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query_async(&mut master.connection().await)
                .await
                .unwrap();
            assert!(owned > 0, "{channel} is subscribed where its topic's keys are");
        }
    }
    assert_eq!(spublish, 60);
    assert!(masters_used >= 2, "12 topics spread over the masters");
    assert_eq!(value(&b, "crier_relay_received_total").await, 0.0);
}

/// The id of a cluster node as `CLUSTER MYID` says.
async fn node_id(server: &RedisServer) -> String {
    redis::cmd("CLUSTER").arg("MYID").query_async(&mut server.connection().await).await.unwrap()
}

/// Moves `slot` from `from` to `to` as `redis-cli --cluster reshard` does: importing and
/// migrating, keys moved with `MIGRATE`, then the new owner announced to every master.
async fn migrate_slot(redis: &RedisCluster, slot: i64, from: usize, to: usize) {
    let (source, target) = (&redis.masters[from], &redis.masters[to]);
    let (source_id, target_id) = (node_id(source).await, node_id(target).await);
    let mut source_conn = source.connection().await;
    let mut target_conn = target.connection().await;
    let setslot = |state: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
        cmd
    };
    let _: () = setslot("IMPORTING", &source_id).query_async(&mut target_conn).await.unwrap();
    let _: () = setslot("MIGRATING", &target_id).query_async(&mut source_conn).await.unwrap();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut source_conn)
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg("127.0.0.1").arg(target.port).arg("").arg(0).arg(5000).arg("KEYS").arg(keys);
        let _: () = migrate.query_async(&mut source_conn).await.unwrap();
    }
    let _: () = setslot("NODE", &target_id).query_async(&mut target_conn).await.unwrap();
    let _: () = setslot("NODE", &target_id).query_async(&mut source_conn).await.unwrap();
    for master in &redis.masters {
        let mut conn = master.connection().await;
        let _: () = setslot("NODE", &target_id).query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_during_traffic_loses_duplicates_and_reorders_nothing() {
    let redis = RedisCluster::start().await;
    let a = node(&redis.urls(), &["--redis-cluster"]).await;
    let b = node(&redis.urls(), &["--redis-cluster"]).await;
    let topic = "moving";
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("crier:{{{topic}}}:ev"))
        .query_async(&mut redis.masters[0].connection().await)
        .await
        .unwrap();
    let mut reader = SseClient::connect(a.addr, &format!("/sse?topic={topic}"), &[]).await;
    a.wait_subscriptions(1).await;
    b.publish(topic, "first").await;
    reader.next_event().await;
    let mut owner = None;
    for (i, master) in redis.masters.iter().enumerate() {
        if listeners(master, topic, true).await > 0 {
            owner = Some(i);
        }
    }
    let owner = owner.expect("A listens on the slot's master");
    let publish_addr = b.addr;
    let publisher = tokio::spawn(async move {
        // Each event retried with its idempotency key until it is answered: during the move a
        // publish may be refused, never lost or doubled.
        let mut ids = Vec::new();
        for n in 0..300 {
            let key = format!("k{n}");
            let id = loop {
                let target = format!("/publish?topic={topic}");
                let headers = [("Idempotency-Key", key.as_str())];
                let answer =
                    request(publish_addr, "POST", &target, &headers, n.to_string().as_bytes())
                        .await;
                if answer.status == 200 {
                    break answer.json()["id"].as_str().unwrap().to_owned();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    migrate_slot(&redis, slot, owner, (owner + 1) % 3).await;
    let ids = publisher.await.unwrap();
    let got: Vec<String> =
        reader.events(ids.len()).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(got, ids, "every event once, in order, across the move");
    assert!(ids.windows(2).all(|w| seq(&w[1]) == seq(&w[0]) + 1));
    wait_until("A to listen at the slot's new owner", || async {
        listeners(&redis.masters[(owner + 1) % 3], topic, true).await > 0
    })
    .await;
    assert_eq!(listeners(&redis.masters[owner], topic, true).await, 0);
    assert!(value(&a, "crier_relay_interest_changes_total{op=\"moved\"}").await >= 1.0);
    assert_eq!(value(&a, "crier_relay_gaps_total").await, 0.0);
    // And live events keep coming from the new owner.
    let id = b.publish(topic, "after").await;
    assert_eq!(reader.next_event().await.last_event_id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_counts_as_a_new_topic_only_when_redis_starts_the_topic() {
    let redis = RedisServer::start().await;
    let a = node(&redis.url(), &["--new-topics-per-sec", "20"]).await;
    // The node holds none of these topics: only Redis knows they exist.
    a.publish("known", "first").await;
    for _ in 0..100 {
        a.publish("known", "again").await;
    }
    let mut refused = 0;
    for i in 0..60 {
        let answer = publish(a.addr, &format!("fresh-{i}"), None, b"x", None).await;
        match answer.status {
            200 => {}
            429 => refused += 1,
            status => panic!("{status}: {}", answer.text()),
        }
    }
    assert!(refused >= 30, "new topics are still limited: {refused} refused");
    assert_eq!(value(&a, "crier_topics").await, 0.0);
}
