//! `GET /v1/events`: the directory's change feed as Server-Sent Events.
//!
//! Each event's id is `<epoch>-<seq>`: the server's epoch and the feed's sequence number. A client
//! that reconnects with `Last-Event-ID` (or `?last_event_id=`, for browsers that cannot set the
//! header) resumes right after that change if the server still journals it; otherwise, or if the
//! id is from another server process, it gets a `resync` event with the full current state.
//!
//! Memory stays bounded per client, resyncs included: the feed holds only a cursor into the
//! directory's bounded journal; the response body pulls the next piece only once the connection
//! has written the previous one; and a resync of every service is serialized once per
//! sequence number and reason, off the runtime's threads (the `cache` module keeps the newest of
//! each reason), then shared by every client that needs it and written to each in pieces of
//! [`PIECE`] bytes (a thousand clients resynced after a
//! re-list hold one copy, not a thousand). A client too slow to take its pieces is dropped by
//! the write timeout (see the `conn` module). A closed connection drops the stream, and with it
//! everything the client held.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use registry::engine::{AllChanges, ChangeKind, DirectoryEvent, ResyncReason, validate_service};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{instance_json, service_json};
use super::{ApiError, Server, rfc3339};

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    service: Option<String>,
    last_event_id: Option<String>,
}

/// Parses an event id `<epoch>-<seq>`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = id.trim().split_once('-')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

/// `GET /v1/events[?service=S][&last_event_id=ID]`.
pub(crate) async fn events(
    State(server): State<Server>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(s) = &q.service {
        validate_service(s).map_err(|e| ApiError::bad_request(e.message().to_owned()))?;
    }
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
                .to_owned(),
        ),
        None => None,
    };
    // The header wins: a browser's EventSource sends it on reconnection, with the URL unchanged.
    let last = match header.or(q.last_event_id).filter(|s| !s.is_empty()) {
        None => None,
        Some(id) => Some(parse_id(&id).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{}` is not an event id of the form <epoch>-<seq>",
                id.chars().take(64).collect::<String>()
            ))
        })?),
    };
    let dir = server.dir();
    let (feed, foreign) = match last {
        Some((epoch, seq)) if epoch == server.epoch() => (dir.all_changes_since(seq), false),
        Some(_) => (dir.all_changes(), true),
        None => (dir.all_changes(), false),
    };
    let Some(guard) = server.inner.metrics.sse_client(server.max_event_clients()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; retry later",
        ));
    };
    let mut stopping = server.inner.stopping.subscribe();
    let keep_alive = server.inner.options.keep_alive;
    let stream = sse_stream(server, feed, q.service, foreign, keep_alive)
        .map(move |piece| {
            let _held_while_streaming = &guard;
            Ok::<_, Infallible>(piece)
        })
        .take_until(async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// How much of a large event one write of the body carries.
pub(crate) const PIECE: usize = 16 * 1024;

/// What a stream has still to write of an event: the event and how far it got.
struct Pending {
    event: Bytes,
    at: usize,
}

/// The stream's state between pieces.
struct StreamState {
    server: Server,
    feed: AllChanges,
    only: Option<String>,
    foreign: bool,
    pending: Option<Pending>,
    keep_alive: std::pin::Pin<Box<tokio::time::Sleep>>,
    every: Duration,
}

/// The feed as the bytes of SSE events (only those of `only` if given), in pieces of at most
/// [`PIECE`] bytes, with a comment after `keep_alive` without an event. `foreign`: the
/// client's last id came from another server process, which the first (start) resync says.
fn sse_stream(
    server: Server,
    feed: AllChanges,
    only: Option<String>,
    foreign: bool,
    every: Duration,
) -> impl Stream<Item = Bytes> {
    let state = StreamState {
        server,
        feed,
        only,
        foreign,
        pending: None,
        keep_alive: Box::pin(tokio::time::sleep(every)),
        every,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(p) = &mut st.pending {
                let end = (p.at + PIECE).min(p.event.len());
                let piece = p.event.slice(p.at..end);
                p.at = end;
                if end == p.event.len() {
                    st.pending = None;
                }
                return Some((piece, st));
            }
            tokio::select! {
                event = st.feed.next() => {
                    let event = event?;
                    let deadline = tokio::time::Instant::now() + st.every;
                    st.keep_alive.as_mut().reset(deadline);
                    let foreign = std::mem::take(&mut st.foreign);
                    if let Some(bytes) = to_sse(&st.server, &event, st.only.as_deref(), foreign).await {
                        st.pending = Some(Pending { event: bytes, at: 0 });
                    }
                }
                () = &mut st.keep_alive => {
                    let deadline = tokio::time::Instant::now() + st.every;
                    st.keep_alive.as_mut().reset(deadline);
                    return Some((Bytes::from_static(b":\n\n"), st));
                }
            }
        }
    })
}

/// One SSE event's bytes. `data` is compact JSON: one line.
fn sse_event(name: &str, id: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\nid: {id}\ndata: {data}\n\n"))
}

/// One feed event as an SSE event, or `None` if it is about another service than `only`.
async fn to_sse(
    server: &Server,
    event: &DirectoryEvent,
    only: Option<&str>,
    foreign: bool,
) -> Option<Bytes> {
    let id = format!("{}-{}", server.epoch(), event.seq());
    match event {
        DirectoryEvent::Change(c) => {
            if only.is_some_and(|s| s != &*c.service) {
                return None;
            }
            // Serialized once, for every stream that writes it.
            Some(server.inner.frames.get_or(c.seq, || {
                let hidden = match &c.kind {
                    ChangeKind::Insert { hidden, .. } | ChangeKind::Update { hidden, .. } => {
                        *hidden
                    }
                    _ => false,
                };
                let data = json!({
                    "seq": c.seq,
                    "service": &*c.service,
                    "id": c.instance().map(|i| i.id.clone()),
                    "instance": c.instance().map(|i| {
                        let mut v = instance_json(i, hidden);
                        // The source showing it now (the event itself does not say).
                        v["source"] = json!(server.dir().snapshot(&c.service).source_of(&i.id));
                        v
                    }),
                    "revision": super::api::revision_json(c.revision),
                    "time": rfc3339(c.time),
                });
                sse_event(c.kind.name(), &id, &data.to_string())
            }))
        }
        DirectoryEvent::Resync(r) => {
            let reason = match r.reason {
                ResyncReason::Start if foreign => "unknown_epoch",
                ResyncReason::Start => "start",
                ResyncReason::Lagged { .. } => "lagged",
                ResyncReason::Unknown { .. } => "unknown_seq",
                _ => "resync",
            };
            let build = {
                let r = r.clone();
                let only = only.map(str::to_owned);
                move || {
                    let services: Vec<Value> = r
                        .services
                        .iter()
                        .filter(|s| only.as_deref().is_none_or(|o| o == s.service()))
                        .map(|s| service_json(s))
                        .collect();
                    let data = json!({ "seq": r.seq, "reason": reason, "services": services });
                    sse_event("resync", &id, &data.to_string())
                }
            };
            // Serialized off the runtime's threads (100,000 instances are about 20 MB of JSON).
            if only.is_some() {
                return Some(
                    tokio::task::spawn_blocking(build)
                        .await
                        .unwrap_or_else(|_| Bytes::new()),
                );
            }
            let key = super::cache::Key {
                kind: super::cache::Kind::Resync { reason },
                seq: r.seq,
            };
            Some(server.inner.answers.get(key, build).await)
        }
        // A kind of event this server does not know yet: not streamed.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn event_ids() {
        assert_eq!(parse_id("12-34"), Some((12, 34)));
        assert_eq!(parse_id("12-"), None);
        assert_eq!(parse_id("34"), None);
        assert_eq!(parse_id("a-1"), None);
        assert_eq!(parse_id("1-2-3"), None);
    }
}
