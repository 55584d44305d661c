//! The live dashboard at `/`: one HTML page, a style sheet and a script, embedded in the binary
//! (no CDN, no framework, nothing fetched from elsewhere). The page follows `/v1/events` with an
//! `EventSource` and asks the JSON API for rings (`/v1/services/{service}/ring`) and owners; see
//! `assets/dashboard.js`.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Only this server's own script, style sheet, images and API: no inline script or style, no
/// plugins, no frames, no form sent anywhere.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// An embedded file and its entity tag (a hash of its content: a new binary with other assets
/// has other tags).
struct Asset {
    content_type: &'static str,
    body: &'static str,
    etag: HeaderValue,
}

fn asset(content_type: &'static str, body: &'static str) -> Asset {
    let tag = format!("\"{:016x}\"", registry::engine::hash_key(body.as_bytes()));
    Asset {
        content_type,
        body,
        etag: HeaderValue::from_str(&tag).expect("hex is a header value"),
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/dashboard.css"),
    )
});
static ICON: LazyLock<Asset> =
    LazyLock::new(|| asset("image/svg+xml", include_str!("assets/favicon.svg")));

/// `a` with its headers; a 304 without body when the client already holds this version.
fn serve(a: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == a.etag.as_bytes());
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        ),
        // Revalidated on every load (with the entity tag: a 304 when unchanged).
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, a.etag.clone()),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, a.body).into_response()
    }
}

/// `GET /`: the page.
pub(crate) async fn index(h: HeaderMap) -> Response {
    serve(&INDEX, &h)
}

/// `GET /dashboard.js`.
pub(crate) async fn script(h: HeaderMap) -> Response {
    serve(&SCRIPT, &h)
}

/// `GET /dashboard.css`.
pub(crate) async fn style(h: HeaderMap) -> Response {
    serve(&STYLE, &h)
}

/// `GET /favicon.svg`.
pub(crate) async fn icon(h: HeaderMap) -> Response {
    serve(&ICON, &h)
}
