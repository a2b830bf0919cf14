use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt as _};

use super::*;
use crate::auth::{AuthConfig, Authority};
use crate::http::{Admission, CorsPolicy, GatedRoute, OpenRoute, ResponseBody, Route, Routes};
use crate::http::{RefusalForm, StreamRates, TrustedProxies};
use crate::hub::{Hub, HubConfig};
use crate::metrics::Metrics;
use crate::server::ConnInfo;
use crate::server::router::{Dispatch, Endpoint, Routed, refusal};

/// A service answering `status`, or never (`None`).
#[derive(Clone)]
struct Canned(Option<StatusCode>);

impl<R> Service<R> for Canned {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        Ready<Result<Response<()>, Infallible>>,
        std::future::Pending<Result<Response<()>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
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

fn routed(target: &str) -> Routed<()> {
    let request = Request::builder().uri(target).body(()).unwrap();
    let route = Routes { mercure: false }.of(request.uri().path());
    Routed { route, conn: ConnInfo::test(), request }
}

#[test]
fn answers_are_counted_by_the_route_they_carry_and_their_status() {
    let metrics = Arc::new(Metrics::new());
    let layer = RequestMetricsLayer::new(metrics.clone());
    let mut cx = Context::from_waker(Waker::noop());
    for (path, status) in [("/healthz", 200), ("/publish", 413), ("/nowhere", 404)] {
        let mut service = layer.layer(Canned(Some(StatusCode::from_u16(status).unwrap())));
        let mut answer = std::pin::pin!(service.call(routed(path)));
        assert!(answer.as_mut().poll(&mut cx).is_ready());
    }
    let mut never = layer.layer(Canned(None));
    let mut pending = std::pin::pin!(never.call(routed("/readyz")));
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

/// Records the endpoint of every request it is handed, and answers 200.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Service<Dispatch<()>> for Recorder {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dispatch: Dispatch<()>) -> Self::Future {
        let (seen, answer) = match dispatch.endpoint {
            Endpoint::Gated(route, admitted) => (
                format!("{route:?} from {}", admitted.peer.ip),
                Response::new(ResponseBody::empty()),
            ),
            Endpoint::Open(route) => (format!("{route:?}"), Response::new(ResponseBody::empty())),
            Endpoint::Refused(route, refused) => (
                format!("{route:?} refused: {}", refused.error.code.as_str()),
                refusal(route, refused, RefusalForm::Hard),
            ),
        };
        self.0.lock().unwrap().push(seen);
        ready(Ok(answer))
    }
}

#[tokio::test]
async fn only_admitted_requests_reach_gated_endpoints_and_their_answers_carry_cors() {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::local(HubConfig::default(), metrics.clone()));
    let authority = Arc::new(Authority::new(AuthConfig::default()).unwrap());
    let rates = StreamRates {
        new_streams_per_sec: 1,
        resumes_per_sec: 1,
        max_streams_per_ip: 100,
        new_topics_per_sec: 100,
    };
    let listed = ["https://app.example".to_owned()];
    let cors = (CorsPolicy::new(&listed), Default::default());
    let admission =
        Admission::new(authority, TrustedProxies::default(), cors, metrics.clone(), rates, hub);
    let recorder = Recorder::default();
    let admit = AdmitLayer::new(Arc::new(admission)).layer(recorder.clone());
    let request = |path: &str, method: Method| {
        let mut routed = routed(path);
        *routed.request.method_mut() = method;
        routed.request.headers_mut().insert("origin", "https://app.example".parse().unwrap());
        routed
    };

    let first = admit.clone().oneshot(request("/sse?topic=a", Method::GET)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["access-control-allow-origin"], "https://app.example");
    // One new stream per second from this address: the second is refused, and reaches the
    // router only as a refusal.
    let refused = admit.clone().oneshot(request("/sse?topic=a", Method::GET)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["access-control-allow-origin"], "https://app.example");
    let mut preflight = request("/publish", Method::OPTIONS);
    preflight
        .request
        .headers_mut()
        .insert("access-control-request-method", "POST".parse().unwrap());
    let answered = admit.clone().oneshot(preflight).await.unwrap();
    assert_eq!(answered.status(), StatusCode::NO_CONTENT);
    let open = admit.clone().oneshot(request("/healthz", Method::GET)).await.unwrap();
    assert!(open.headers().get("access-control-allow-origin").is_none());

    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            format!("{:?} from 127.0.0.1", GatedRoute::Sse),
            format!("{:?} refused: rate_limited", GatedRoute::Sse),
            format!("{:?}", OpenRoute::Healthz)
        ]
    );
    assert_eq!(routed("/ws").route, Route::Gated(GatedRoute::Ws));
}
