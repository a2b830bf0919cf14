//! What a starting server says about itself: one log line per mode (TLS, cluster, Mercure,
//! credentials) and the limits in force, so an operator reads from the log what runs; and a
//! warning when an open development mode listens beyond loopback.

use super::Config;

impl Config {
    /// Logs the modes and limits the server starts with.
    pub fn log_startup(&self) {
        match &self.tls_cert {
            Some(cert) => tracing::info!(cert = %cert.display(), "mode: TLS (h2 and http/1.1)"),
            None => tracing::info!("mode: plain HTTP (HTTP/1.1 and h2c)"),
        }
        if self.redis_url.is_empty() {
            tracing::info!("mode: single node, history in memory");
        } else {
            let redis: Vec<String> =
                self.redis_url.iter().map(|url| without_password(url)).collect();
            tracing::info!(redis = %redis.join(","), redis_cluster = self.redis_cluster, "mode: cluster");
        }
        let mercure = self.mercure();
        if mercure.is_enabled() {
            tracing::info!(
                anonymous = mercure.anonymous,
                subscriptions = mercure.subscriptions,
                history = self.mercure_history,
                "mode: Mercure hub at /.well-known/mercure"
            );
        }
        if self.has_credentials() {
            let private: Vec<String> =
                self.private_topics.iter().map(ToString::to_string).collect();
            tracing::info!(
                secrets = self.jwt_key.len(),
                secret_files = self.jwt_key_file.len(),
                public_key_files = self.jwt_public_key_file.len(),
                private_topics = %private.join(","),
                "mode: credentials (publishing needs a token)"
            );
        } else {
            tracing::info!(
                "mode: development (no key: every topic public, loopback clients publish)"
            );
            if !self.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %self.listen,
                    "listening beyond loopback with no credentials: anyone who reaches this \
                     address may follow every topic; set --jwt-key-file or --jwt-public-key-file"
                );
            }
        }
        tracing::info!(
            max_connections = self.max_connections,
            max_connections_per_ip = self.max_connections_per_ip,
            max_streams_per_ip = self.max_streams_per_ip,
            new_streams_per_sec = self.new_streams_per_sec,
            resumes_per_sec = self.resumes_per_sec,
            publishes_per_sec = self.publishes_per_sec,
            new_topics_per_sec = self.new_topics_per_sec,
            max_topics = self.max_topics,
            history = self.history,
            "limits"
        );
    }
}

/// `url` without the password of its `user:password@`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_password_never_reaches_the_log() {
        assert_eq!(without_password("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(without_password("redis://:secret@h:6379"), "redis://:***@h:6379");
        assert_eq!(without_password("redis://h:6379"), "redis://h:6379");
    }
}
