//! The notification bus between the nodes sharing one PostgreSQL schema: LISTEN/NOTIFY on the
//! channel `certgate_<schema>`, carrying a [`Notice`] whose type publisher and listener share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, PgPool};

/// Something one node changed that the others hold a copy of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// One record of a dataset (exchange caches drop it).
    DataKey {
        /// Dataset id.
        dataset: String,
        /// Record key.
        key: String,
    },
    /// A whole dataset.
    Dataset {
        /// Dataset id.
        dataset: String,
    },
    /// A licence issued or changed (datasets that depend on the type drop the holder; nodes
    /// forget the licence's record).
    Licence {
        /// Licence type code.
        licence_type: String,
        /// Holder id.
        holder: String,
        /// The licence (absent in notices of earlier versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// A seal was revoked (nodes forget its record).
    Seal {
        /// The seal id.
        id: String,
    },
    /// Policies or enterprise profiles changed: catch up from the shared store.
    Policies,
}

/// A change and the node that made it (its own notices a node ignores).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The sending node's id (empty when the sender is a store, not a node).
    pub node: String,
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A notice.
    Notice(Notice),
    /// A notification that is not a notice (logged and dropped).
    Unreadable(String),
    /// The listener has (re)connected: notices sent while it was away are lost, so whatever
    /// they would have refreshed must be refreshed now.
    Resync,
    /// Nothing arrived for a while (a chance to stop).
    Idle,
}

impl PgPool {
    /// The notification channel of this pool's schema (nodes of one schema hear each other).
    pub fn channel(&self) -> String {
        format!("certgate_{}", self.schema())
    }

    /// Sends `notice` to every listener of [`PgPool::channel`] now.
    pub fn notify(&self, notice: &Notice) -> Result<(), Error> {
        let channel = self.channel();
        self.with(|c| notify_in(c, &channel, notice))
    }

    /// Listens on [`PgPool::channel`] and calls `on` with every event until it returns false;
    /// reconnects after a failure (with [`Event::Resync`] once back). Blocks: run it on a
    /// thread of its own.
    pub fn listen(&self, mut on: impl FnMut(Event) -> bool) {
        let channel = self.channel();
        loop {
            let connected = self
                .dedicated()
                .and_then(|mut c| Ok(c.batch_execute(&format!("LISTEN {channel}")).map(|()| c)?));
            let mut client = match connected {
                Ok(c) => c,
                Err(_) => {
                    if !on(Event::Idle) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            if !on(Event::Resync) {
                return;
            }
            'connected: loop {
                {
                    let mut notifications = client.notifications();
                    let mut iter = notifications.timeout_iter(Duration::from_millis(250));
                    loop {
                        use postgres::fallible_iterator::FallibleIterator;
                        match iter.next() {
                            Ok(Some(n)) => {
                                let event = match serde_json::from_str(n.payload()) {
                                    Ok(notice) => Event::Notice(notice),
                                    Err(_) => Event::Unreadable(n.payload().to_owned()),
                                };
                                if !on(event) {
                                    return;
                                }
                            }
                            Err(_) => break 'connected,
                            Ok(None) => break,
                        }
                    }
                }
                if !on(Event::Idle) {
                    return;
                }
                // A dead connection shows on the next query, not in the notification stream.
                if client.is_closed() || client.simple_query("SELECT 1").is_err() {
                    break 'connected;
                }
            }
        }
    }
}

/// Sends `notice` on `channel` through `client`: inside a transaction, it is delivered when
/// the transaction commits, and only then.
pub fn notify_in(
    client: &mut impl postgres::GenericClient,
    channel: &str,
    notice: &Notice,
) -> Result<(), Error> {
    let payload = serde_json::to_string(notice)
        .map_err(|e| Error::Settings(format!("a notice that cannot be written: {e}")))?;
    client.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_keep_their_wire_form() {
        let n = Notice {
            node: "a1".into(),
            change: Change::DataKey {
                dataset: "household".into(),
                key: "k".into(),
            },
        };
        let text = serde_json::to_string(&n).unwrap();
        assert_eq!(
            text,
            r#"{"node":"a1","kind":"data_key","dataset":"household","key":"k"}"#
        );
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), n);
        let policies: Notice = serde_json::from_str(r#"{"node":"","kind":"policies"}"#).unwrap();
        assert_eq!(policies.change, Change::Policies);
    }

    #[test]
    fn a_notice_reaches_a_listener_of_the_schema() {
        let Some((pool, _schema)) = crate::pg::test_pool("bus").unwrap() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let listener = pool.clone();
        std::thread::spawn(move || {
            listener.listen(|e| {
                let stop = matches!(e, Event::Notice(_));
                let _ = tx.send(e);
                !stop
            })
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rx.recv_timeout(Duration::from_secs(10)).unwrap() != Event::Resync {
            assert!(std::time::Instant::now() < deadline);
        }
        let sent = Notice {
            node: "b".into(),
            change: Change::Policies,
        };
        pool.notify(&sent).unwrap();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::Notice(n) => {
                    assert_eq!(n, sent);
                    break;
                }
                Event::Idle => continue,
                other => panic!("{other:?}"),
            }
        }
    }
}
