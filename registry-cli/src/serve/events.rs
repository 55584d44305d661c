//! `GET /v1/events`: the directory's change feed as Server-Sent Events.
//!
//! Each event's id is `<epoch>-<seq>`: the server's epoch and the feed's sequence number. A client
//! that reconnects with `Last-Event-ID` (or `?last_event_id=`, for browsers that cannot set the
//! header) resumes right after that change if the server still journals it; otherwise, or if the
//! id is from another server process, it gets a `resync` event with the full current state.
//!
//! Memory stays bounded per client: the feed holds only a cursor into the directory's bounded
//! journal, and the response body pulls the next event only once the connection has written the
//! previous one, so a client that stops reading holds at most one batch of events. A closed
//! connection drops the stream, and with it everything the client held.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
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
    let stream = sse_stream(server.clone(), feed, q.service, foreign)
        .map(move |e| {
            let _held_while_streaming = &guard;
            Ok::<_, Infallible>(e)
        })
        .take_until(async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(server.inner.options.keep_alive))
        .into_response())
}

/// The feed as SSE events, only those of `only` if given. `foreign`: the client's last id came
/// from another server process, which the first (start) resync says.
fn sse_stream(
    server: Server,
    feed: AllChanges,
    only: Option<String>,
    foreign: bool,
) -> impl Stream<Item = Event> {
    futures::stream::unfold((feed, foreign), move |(mut feed, foreign)| {
        let server = server.clone();
        let only = only.clone();
        async move {
            loop {
                let event = feed.next().await?;
                if let Some(e) = to_sse(&server, &event, only.as_deref(), foreign) {
                    return Some((e, (feed, false)));
                }
            }
        }
    })
}

/// One feed event as an SSE event, or `None` if it is about another service than `only`.
fn to_sse(
    server: &Server,
    event: &DirectoryEvent,
    only: Option<&str>,
    foreign: bool,
) -> Option<Event> {
    let id = format!("{}-{}", server.epoch(), event.seq());
    let (name, data) = match event {
        DirectoryEvent::Change(c) => {
            if only.is_some_and(|s| s != &*c.service) {
                return None;
            }
            let hidden = match &c.kind {
                ChangeKind::Insert { hidden, .. } | ChangeKind::Update { hidden, .. } => *hidden,
                _ => false,
            };
            let data = json!({
                "seq": c.seq,
                "service": &*c.service,
                "id": c.instance().map(|i| i.id.clone()),
                "instance": c.instance().map(|i| instance_json(i, hidden)),
                "revision": super::api::revision_json(c.revision),
                "time": rfc3339(c.time),
            });
            (c.kind.name(), data)
        }
        DirectoryEvent::Resync(r) => {
            let reason = match r.reason {
                ResyncReason::Start if foreign => "unknown_epoch",
                ResyncReason::Start => "start",
                ResyncReason::Lagged { .. } => "lagged",
                ResyncReason::Unknown { .. } => "unknown_seq",
                _ => "resync",
            };
            let services: Vec<Value> = r
                .services
                .iter()
                .filter(|s| only.is_none_or(|o| o == s.service()))
                .map(|s| service_json(s))
                .collect();
            let data = json!({ "seq": r.seq, "reason": reason, "services": services });
            ("resync", data)
        }
        // A kind of event this server does not know yet: not streamed.
        _ => return None,
    };
    Some(Event::default().event(name).id(id).data(data.to_string()))
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
