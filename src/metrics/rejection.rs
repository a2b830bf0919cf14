//! Why a request or connection was refused: the `reason` label of `crier_rejections_total`.

/// Why a request or connection was refused by a limit; the `reason` label of
/// `crier_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// `--max-connections`.
    Connections,
    /// `--max-connections-per-ip`.
    ConnectionsPerIp,
    /// `--new-streams-per-sec`.
    StreamRate,
    /// `--publishes-per-sec`.
    PublishRate,
    /// `--max-request-head-bytes`.
    HeadTooLarge,
    /// `--header-read-timeout`: no complete request head (HTTP/1) or first request (HTTP/2) in
    /// time.
    HeadTimeout,
    /// `--body-read-timeout`.
    BodyTimeout,
    /// `--max-topics`.
    TopicLimit,
    /// `--new-topics-per-sec`.
    TopicRate,
    /// `--resumes-per-sec`.
    ResumeRate,
    /// `--max-streams-per-ip`.
    StreamsPerIp,
    /// `--mercure-max-templates`.
    MercureTemplates,
}

impl Rejection {
    pub(super) const ALL: [Rejection; 12] = [
        Rejection::Connections,
        Rejection::ConnectionsPerIp,
        Rejection::StreamRate,
        Rejection::PublishRate,
        Rejection::HeadTooLarge,
        Rejection::HeadTimeout,
        Rejection::BodyTimeout,
        Rejection::TopicLimit,
        Rejection::TopicRate,
        Rejection::ResumeRate,
        Rejection::StreamsPerIp,
        Rejection::MercureTemplates,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Connections => "connections",
            Rejection::ConnectionsPerIp => "connections_per_ip",
            Rejection::StreamRate => "stream_rate",
            Rejection::PublishRate => "publish_rate",
            Rejection::HeadTooLarge => "head_too_large",
            Rejection::HeadTimeout => "head_timeout",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::TopicLimit => "topic_limit",
            Rejection::TopicRate => "topic_rate",
            Rejection::ResumeRate => "resume_rate",
            Rejection::StreamsPerIp => "streams_per_ip",
            Rejection::MercureTemplates => "mercure_templates",
        }
    }
}
