//! The search page: plain HTML, CSS and JavaScript compiled into the binary, served by every
//! node without an API key (the page asks for one and sends it with its own requests to the
//! API, which checks it as it checks any client's). Nothing is fetched from another origin:
//! the Content-Security-Policy says so to the browser too.

use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpResponse;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Only this origin, no inline script; inline styles are allowed for the timeline's positions.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        // The files change with the binary: revalidate, never serve a stale page after an upgrade.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(body)
}

/// `GET /`: the search page.
pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}
