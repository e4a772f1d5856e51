//! The web dashboard at `/`: one HTML page, its stylesheet and its script,
//! compiled into the binary with `include_str!` so the coordinator serves
//! it with no files to deploy, no CDN and no build step. The page only
//! reads the public API (`/cluster`, `/stats`, the count stream, a presence
//! WebSocket) and writes through `POST /items`, like any other client.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../assets/dashboard.html");
const STYLE: &str = include_str!("../assets/dashboard.css");
const SCRIPT: &str = include_str!("../assets/dashboard.js");

pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}
