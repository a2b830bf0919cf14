//! The routing table: which endpoint a path names, decided once per request and carried with
//! it from then on. The endpoints split in two: those a request reaches only through
//! [`Admission`](super::Admission) ([`GatedRoute`]), and the open ones ([`OpenRoute`]).

/// The path of the Mercure hub.
pub(crate) const MERCURE_HUB_PATH: &str = "/.well-known/mercure";

/// The path of the Mercure hub's subscriptions API, and the prefix of its topics.
pub(crate) const MERCURE_SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// An endpoint, by path; its name is the `route` label of `crier_http_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Behind admission.
    Gated(GatedRoute),
    /// Open to any request.
    Open(OpenRoute),
}

/// An endpoint every request to which passes admission first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GatedRoute {
    /// `POST /publish`.
    Publish,
    /// `GET /sse`.
    Sse,
    /// `GET /ws`.
    Ws,
    /// The Mercure hub (publish and subscribe); its own tokens are read by the hub.
    Mercure,
    /// The Mercure hub's subscriptions API (it reads its own tokens too).
    MercureSubscriptions,
}

/// An endpoint that takes any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenRoute {
    /// The built-in page.
    Page,
    /// `GET /ws/echo`, the conformance target.
    WsEcho,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `GET /stats`: the page's few figures, where `/metrics` is kept from the public.
    Stats,
    /// Nothing is served here.
    NotFound,
}

/// The endpoints a node serves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Routes {
    /// The Mercure hub is on.
    pub(crate) mercure: bool,
}

impl Routes {
    /// The endpoint serving `path`.
    pub(crate) fn of(self, path: &str) -> Route {
        match path {
            "/publish" => Route::Gated(GatedRoute::Publish),
            "/sse" => Route::Gated(GatedRoute::Sse),
            "/ws" => Route::Gated(GatedRoute::Ws),
            "/" => Route::Open(OpenRoute::Page),
            "/ws/echo" => Route::Open(OpenRoute::WsEcho),
            "/healthz" => Route::Open(OpenRoute::Healthz),
            "/readyz" => Route::Open(OpenRoute::Readyz),
            "/metrics" => Route::Open(OpenRoute::Metrics),
            "/stats" => Route::Open(OpenRoute::Stats),
            MERCURE_HUB_PATH if self.mercure => Route::Gated(GatedRoute::Mercure),
            path if self.mercure && path.starts_with(MERCURE_SUBSCRIPTIONS_PATH) => {
                Route::Gated(GatedRoute::MercureSubscriptions)
            }
            _ => Route::Open(OpenRoute::NotFound),
        }
    }
}

impl Route {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Gated(GatedRoute::Publish) => "publish",
            Route::Gated(GatedRoute::Sse) => "sse",
            Route::Gated(GatedRoute::Ws) => "ws",
            Route::Gated(GatedRoute::Mercure | GatedRoute::MercureSubscriptions) => "mercure",
            Route::Open(OpenRoute::Page) => "page",
            Route::Open(OpenRoute::WsEcho) => "ws_echo",
            Route::Open(OpenRoute::Healthz) => "healthz",
            Route::Open(OpenRoute::Readyz) => "readyz",
            Route::Open(OpenRoute::Metrics) => "metrics",
            Route::Open(OpenRoute::Stats) => "stats",
            Route::Open(OpenRoute::NotFound) => "not_found",
        }
    }
}

impl GatedRoute {
    /// The methods a cross-origin page may use here (a preflight's answer), if its answers may
    /// be read across origins at all (a WebSocket's origin is checked by its handshake).
    pub(crate) fn cors_methods(self) -> Option<&'static str> {
        match self {
            GatedRoute::Sse => Some("GET, HEAD, OPTIONS"),
            GatedRoute::Publish => Some("POST, OPTIONS"),
            GatedRoute::Mercure => Some("GET, HEAD, POST, OPTIONS"),
            GatedRoute::MercureSubscriptions => Some("GET, HEAD, OPTIONS"),
            GatedRoute::Ws => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mercure_paths_exist_only_while_the_hub_is_on() {
        let on = Routes { mercure: true };
        let off = Routes { mercure: false };
        assert_eq!(on.of("/.well-known/mercure"), Route::Gated(GatedRoute::Mercure));
        assert_eq!(
            on.of("/.well-known/mercure/subscriptions/a"),
            Route::Gated(GatedRoute::MercureSubscriptions)
        );
        assert_eq!(off.of("/.well-known/mercure"), Route::Open(OpenRoute::NotFound));
        assert_eq!(off.of("/.well-known/mercure/subscriptions"), Route::Open(OpenRoute::NotFound));
        assert_eq!(off.of("/sse"), Route::Gated(GatedRoute::Sse));
        assert_eq!(off.of("/ssex").as_str(), "not_found");
        assert_eq!(on.of("/.well-known/mercure/subscriptions").as_str(), "mercure");
    }
}
