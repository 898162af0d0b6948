//! Settings of a PostgreSQL pool.

use std::time::Duration;

/// Settings of a PostgreSQL connection pool. `Debug` shows the URL without its password.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/db` (key-value strings are accepted too).
    pub url: String,
    /// The schema certgate's tables live in.
    pub schema: String,
    /// Connections kept open at most.
    pub pool_size: usize,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one statement.
    pub statement_timeout: Duration,
    /// PEM CA(s) to verify the server's certificate with. Without one, connections are
    /// encrypted when the server offers TLS (or as `sslmode` in the URL says) but the server
    /// is not authenticated — as libpq's `require`.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PgSettings {
    /// Defaults for `url`: schema `certgate`, 8 connections, 5 s to connect, 10 s a statement.
    pub fn new(url: &str) -> PgSettings {
        PgSettings {
            url: url.to_owned(),
            schema: "certgate".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `url` with any password replaced by `<redacted>`: in the URL form (`user:secret@`) and in
/// the key-value form (`password=secret`).
pub fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((name, _)) => format!("{name}:<redacted>@{host}"),
                None => format!("{user}@{host}"),
            },
            None => authority.to_owned(),
        };
        let tail = tail
            .split('&')
            .map(redact_pair)
            .collect::<Vec<_>>()
            .join("&");
        return format!("{scheme}://{authority}{tail}");
    }
    url.split(' ')
        .map(redact_pair)
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_pair(pair: &str) -> String {
    let (key, _) = pair.split_once('=').unwrap_or((pair, ""));
    if key.trim_start_matches('?').eq_ignore_ascii_case("password") {
        format!("{key}=<redacted>")
    } else {
        pair.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_debug() {
        for (url, shown) in [
            (
                "postgres://certgate:s3cret@db:5432/cg",
                "postgres://certgate:<redacted>@db:5432/cg",
            ),
            (
                "postgresql://u:p%40ss@db/cg?sslmode=require&password=two",
                "postgresql://u:<redacted>@db/cg?sslmode=require&password=<redacted>",
            ),
            ("postgres://u@db/cg", "postgres://u@db/cg"),
            (
                "host=db user=u password=s3cret dbname=cg",
                "host=db user=u password=<redacted> dbname=cg",
            ),
        ] {
            assert_eq!(redacted(url), shown);
            let debug = format!("{:?}", PgSettings::new(url));
            assert!(
                !debug.contains("s3cret") && !debug.contains("p%40ss"),
                "{debug}"
            );
        }
    }
}
