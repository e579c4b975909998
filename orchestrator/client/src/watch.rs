//! A watch stream that knows how far it got, so the caller can resume it on another server.
//!
//! Bookmarks. Watches ask for `allowWatchBookmarks=true`; a server that honours it sends, while idle, a
//! `BOOKMARK` whose `metadata.resourceVersion` is the revision the watch has reached. Bookmarks advance
//! [`Watch::revision`] and are not events: they reach the caller only after [`Watch::with_bookmarks`].
//!
//! Silence. Once a watch has seen a bookmark, its server has promised one every second while idle, so
//! [`WATCH_SILENCE`](crate::WATCH_SILENCE) without any line means the server died or stalled: the watch ends
//! with [`ClientError::WatchSilent`]. Before the first bookmark no timeout applies: a server that does not
//! send bookmarks (an older one) is legitimately silent on an idle collection, and timing it out would turn
//! every quiet watch into a reconnect loop. A server that stalls before its first bookmark (one second after
//! the watch opens) is still caught by the readiness probe, which moves the client, which ends the watch.

use crate::servers::Servers;
use crate::{ClientError, Event};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Where a watch was opened.
pub(crate) struct WatchSource {
    pub servers: Arc<Servers>,
    pub index: usize,
    pub url: String,
    pub silence: Duration,
}

/// The events of one watch, in order; ends when the server ends it, with an error when the server broke,
/// went silent or was failed over from. Resume with the same `resourceVersion` = [`Watch::revision`].
pub struct Watch {
    events: BoxStream<'static, Result<Event, ClientError>>,
    revision: Arc<AtomicU64>,
    bookmarks: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("revision", &self.revision()).finish_non_exhaustive()
    }
}

struct State {
    lines: BoxStream<'static, Result<Vec<u8>, ClientError>>,
    switched: tokio::sync::watch::Receiver<usize>,
    source: WatchSource,
    /// A bookmark was seen: silence now means death.
    armed: bool,
    revision: Arc<AtomicU64>,
    bookmarks: Arc<AtomicBool>,
    done: bool,
}

impl Watch {
    pub(crate) fn start(
        source: WatchSource,
        body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
        from: Option<u64>,
    ) -> Watch {
        let revision = Arc::new(AtomicU64::new(from.unwrap_or(0)));
        let bookmarks = Arc::new(AtomicBool::new(false));
        let mut switched = source.servers.subscribe();
        switched.mark_unchanged();
        let state = State {
            lines: crate::ndjson(body).boxed(),
            switched,
            source,
            armed: false,
            revision: revision.clone(),
            bookmarks: bookmarks.clone(),
            done: false,
        };
        Watch { events: futures::stream::unfold(state, next).boxed(), revision, bookmarks }
    }

    /// The revision to resume from: the last event's or bookmark's (or the one the watch started at).
    pub fn revision(&self) -> Option<u64> {
        Some(self.revision.load(Ordering::Acquire)).filter(|r| *r > 0)
    }

    /// Also yield `BOOKMARK` events (kind `BOOKMARK`, object with only `metadata.resourceVersion`).
    pub fn with_bookmarks(self) -> Self {
        self.bookmarks.store(true, Ordering::Release);
        self
    }
}

impl Stream for Watch {
    type Item = Result<Event, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

async fn next(mut st: State) -> Option<(Result<Event, ClientError>, State)> {
    loop {
        if st.done {
            return None;
        }
        let silence = st.source.silence;
        let armed = st.armed;
        let lines = &mut st.lines;
        let line = async move {
            if armed {
                tokio::time::timeout(silence, lines.next()).await
            } else {
                Ok(lines.next().await)
            }
        };
        let line = tokio::select! {
            line = line => line,
            changed = st.switched.changed() => {
                let now = *st.switched.borrow_and_update();
                if changed.is_ok() && now == st.source.index {
                    continue;
                }
                st.done = true;
                let err = ClientError::FailedOver {
                    url: st.source.url.clone(),
                    now: st.source.servers.url(now).to_string(),
                };
                return Some((Err(err), st));
            }
        };
        let line = match line {
            Err(_) => {
                st.done = true;
                let err = ClientError::WatchSilent { url: st.source.url.clone(), silence };
                fail(&st.source, &err);
                return Some((Err(err), st));
            }
            Ok(None) => return None,
            Ok(Some(Err(err))) => {
                st.done = true;
                fail(&st.source, &err);
                return Some((Err(err), st));
            }
            Ok(Some(Ok(line))) => line,
        };
        let v: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => return Some((Err(ClientError::Protocol(e.to_string())), st)),
        };
        let event = Event {
            kind: v.get("type").and_then(Value::as_str).unwrap_or("").to_string(),
            object: v.get("object").cloned().unwrap_or(Value::Null),
        };
        if let Some(rev) = event.revision() {
            st.revision.fetch_max(rev, Ordering::AcqRel);
        }
        if event.kind == "BOOKMARK" {
            st.armed = true;
            if !st.bookmarks.load(Ordering::Acquire) {
                continue;
            }
        }
        return Some((Ok(event), st));
    }
}

/// The watch's server failed: move the client off it (unless it already moved).
fn fail(source: &WatchSource, err: &ClientError) {
    source.servers.move_from(source.index, source.servers.next(source.index), &err.to_string());
}
