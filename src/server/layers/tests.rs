use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt as _};

use super::*;
use crate::metrics::Metrics;

/// A service answering `status`, or never (`None`).
#[derive(Clone)]
struct Answer(Option<StatusCode>);

impl<B> Service<Request<B>> for Answer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        Ready<Result<Response<()>, Infallible>>,
        std::future::Pending<Result<Response<()>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        match self.0 {
            Some(status) => {
                let mut response = Response::new(());
                *response.status_mut() = status;
                futures_util::future::Either::Left(ready(Ok(response)))
            }
            None => futures_util::future::Either::Right(std::future::pending()),
        }
    }
}

fn request(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

#[tokio::test]
async fn shedding_refuses_past_the_limit_at_once_and_counts() {
    let metrics = Metrics::new();
    let layer = ShedLayer::new(1, metrics.shed_requests("publish"));
    let mut stuck = layer.layer(Answer(None));
    let mut quick = layer.layer(Answer(Some(StatusCode::OK)));
    let held = stuck.call(request("/publish"));
    let refused = quick.call(request("/publish")).await.unwrap_err();
    assert!(refused.is::<Overloaded>(), "{refused}");
    assert_eq!(error_response(refused).code, crate::http::ErrorCode::Overloaded);
    assert!(metrics.render().contains("crier_shed_requests_total{route=\"publish\"} 1"));
    drop(held);
    let admitted = quick.call(request("/publish")).await.unwrap();
    assert_eq!(admitted.status(), StatusCode::OK, "the place is free once the first is done");
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_timeout_fails_with_elapsed() {
    let layer = TimeoutLayer::new(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let error = layer.layer(Answer(None)).oneshot(request("/publish")).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let answer = error_response(error);
    assert_eq!(answer.code, crate::http::ErrorCode::Unavailable);
    let response = answer.into_response();
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    let quick = layer.layer(Answer(Some(StatusCode::OK))).oneshot(request("/")).await;
    assert_eq!(quick.unwrap().status(), StatusCode::OK);
}

#[test]
fn answers_are_counted_by_route_and_status() {
    let metrics = Arc::new(Metrics::new());
    let layer = RequestMetricsLayer::new(metrics.clone());
    let mut cx = Context::from_waker(Waker::noop());
    for (path, status) in [("/healthz", 200), ("/publish", 413), ("/nowhere", 404)] {
        let mut service = layer.layer(Answer(Some(StatusCode::from_u16(status).unwrap())));
        let mut answer = std::pin::pin!(service.call(request(path)));
        assert!(answer.as_mut().poll(&mut cx).is_ready());
    }
    let mut never = layer.layer(Answer(None));
    let mut pending = std::pin::pin!(never.call(request("/readyz")));
    assert!(pending.as_mut().poll(&mut cx).is_pending());
    let text = metrics.render();
    for line in [
        r#"crier_http_requests_total{route="healthz",status="200"} 1"#,
        r#"crier_http_requests_total{route="publish",status="413"} 1"#,
        r#"crier_http_requests_total{route="not_found",status="404"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
    }
    assert!(!text.contains(r#"route="readyz""#), "counted only once answered");
}
