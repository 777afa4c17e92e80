//! Media: authenticated uploads (raw `PUT` or `multipart/form-data`), signed expiring download
//! links for the uploader and members of conversations where the media was shared, downloads
//! with range requests, and image thumbnails.
//!
//! Downloads never trust the uploader: the type is sniffed from the bytes,
//! `X-Content-Type-Options: nosniff` is always sent, and anything outside a short list of
//! inert types (never HTML or SVG) is served as an attachment.

use std::sync::Arc;

use axum::body::Body as RawBody;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::quota::{reserve, Reservation};
use super::{
    blocking, declared_length, discard_body, now_secs, ApiError, AppState, AuthUser, DISCARD_TIME,
};
use crate::media::{MediaError, Upload};
use crate::refusal::Refusal;
use crate::store::MediaRow;
use crate::tokens::Signer;

/// Types shown inline; everything else downloads as an attachment.
const INLINE: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "video/mp4",
    "audio/mpeg",
    "audio/ogg",
    "audio/mp4",
];

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/media", post(upload_multipart).put(upload_raw))
        .route("/api/v1/media/{id}/link", get(link))
        .route("/media/{id}", get(download))
        .route("/media/{id}/thumbnail", get(thumbnail))
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> ApiError {
        match e {
            MediaError::TooLarge(max) => ApiError::from(Refusal::TooLarge)
                .with_message(format!("uploads are limited to {max} bytes")),
            MediaError::NotAnImage => ApiError::from(Refusal::NotAnImage),
            MediaError::TooManyPixels => ApiError::from(Refusal::ImageTooLarge),
            MediaError::Io(e) => {
                tracing::error!(error = %e, "media storage failed");
                ApiError::from(Refusal::Internal)
            }
        }
    }
}

/// PUT /api/v1/media — the request body is the file.
async fn upload_raw(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    headers: HeaderMap,
    body: RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let max_upload = state.settings.max_upload;
    let mut stream = body.into_data_stream();
    let declared = declared_length(&headers);
    // Refused before a byte is stored when the declared length is over what is allowed; the
    // rest of the body is dropped in the background (see `discard_body`).
    let held = match reserve(&state, &me.user, declared).await {
        Ok(held) if declared.is_some_and(|n| n > held.limit()) => Err(held.over(max_upload)),
        other => other,
    };
    let held = match held {
        Ok(held) => held,
        Err(e) => {
            discard_body(stream);
            return Err(e);
        }
    };
    let mut upload = state
        .media
        .begin(held.limit())
        .await
        .map_err(MediaError::from)?;
    while let Some(chunk) = stream.next().await {
        let Ok(bytes) = chunk else {
            // The client went away mid-upload: dropping the upload removes its file.
            return Err(ApiError::bad_request("the upload was interrupted"));
        };
        if let Err(e) = upload.write(&bytes).await {
            // The partial file goes now, not after the rest of the body is drained.
            drop(upload);
            discard_body(stream);
            return Err(over_or(e, &held, max_upload));
        }
    }
    finish(&state, &me, upload, held).await
}

/// An upload's write error as the client sees it: past the reservation, the quota or size
/// refusal it stands for.
fn over_or(e: MediaError, held: &Reservation, max_upload: u64) -> ApiError {
    match e {
        MediaError::TooLarge(_) => held.over(max_upload),
        e => e.into(),
    }
}

/// The body as `multipart/form-data`; any other content type is 415, not axum's plain-text 400.
async fn multipart(request: Request, state: &Arc<AppState>) -> Result<Multipart, ApiError> {
    match Multipart::from_request(request, state).await {
        Ok(form) => Ok(form),
        Err(MultipartRejection::InvalidBoundary(e)) => {
            Err(ApiError::from(Refusal::UnsupportedMediaType)
                .with_message(format!("{}; use PUT for a raw body", e.body_text())))
        }
        Err(e) => Err(ApiError::rejection(e.status(), e.body_text())),
    }
}

/// POST /api/v1/media — `multipart/form-data` with the file in a part named `file`.
async fn upload_multipart(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The form is at most its declared length: the reservation need not be larger.
    let declared = declared_length(request.headers());
    let held = match reserve(&state, &me.user, declared).await {
        Ok(held) => held,
        Err(e) => {
            discard_body(request.into_body().into_data_stream());
            return Err(e);
        }
    };
    let mut form = multipart(request, &state).await?;
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let Some(mut field) = field else {
            return Err(ApiError::bad_request("no part named `file`"));
        };
        if field.name() != Some("file") {
            continue;
        }
        let mut upload = state
            .media
            .begin(held.limit())
            .await
            .map_err(MediaError::from)?;
        let copied = copy_field(&mut field, &mut upload).await;
        drop(field);
        return match copied {
            Ok(()) => finish(&state, &me, upload, held).await,
            Err(PartError::Read(e)) => Err(e),
            Err(PartError::Write(e)) => {
                drop(upload);
                discard_form(form);
                Err(over_or(e, &held, state.settings.max_upload))
            }
        };
    }
}

/// Why a form's file part was not stored whole.
enum PartError {
    /// The form is malformed or the client went away.
    Read(ApiError),
    /// The upload refused the bytes (over its limit) or storage failed.
    Write(MediaError),
}

/// Streams a form part into an upload.
async fn copy_field(field: &mut Field<'_>, upload: &mut Upload) -> Result<(), PartError> {
    loop {
        match field.chunk().await {
            Ok(Some(bytes)) => upload.write(&bytes).await.map_err(PartError::Write)?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(PartError::Read(ApiError::bad_request(e.body_text()))),
        }
    }
}

/// Reads (and drops) the rest of a refused form in the background, for a bounded time, so
/// the client still sending it gets the refusal rather than a reset (see `discard_body`).
fn discard_form(mut form: Multipart) {
    tokio::spawn(async move {
        let drain = async { while let Ok(Some(_)) = form.next_field().await {} };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

async fn finish(
    state: &Arc<AppState>,
    me: &AuthUser,
    upload: Upload,
    held: Reservation,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stored = state.media.finish(upload).await?;
    let row = MediaRow {
        id: crate::ids::random_hex(16),
        hash: stored.hash.clone(),
        owner: me.user.clone(),
        size: stored.size,
        mime: stored.mime,
    };
    let reply = json!({"id": row.id, "size": row.size, "type": row.mime});
    let size = row.size;
    if let Err(e) = blocking(state, move |s| s.add_media(&row)).await {
        // A blob no row names would never be served nor cleaned up by retention. But another
        // upload of the same bytes may have found this blob meanwhile (`created = false` there)
        // and recorded its row: the blob is then that upload's file and stays. If the check
        // itself fails, the blob stays too (a stray file beats a lost one).
        if stored.created {
            let hash = stored.hash.clone();
            if let Ok(false) = blocking(state, move |s| s.media_hash_in_use(&hash)).await {
                state.media.remove(&stored.hash).await;
            }
        }
        return Err(e);
    }
    // Recorded: the row counts against the quota from now on, the reservation no more.
    drop(held);
    crate::stats::Stats::add(&state.stats.media_bytes_uploaded, size);
    Ok((StatusCode::CREATED, Json(reply)))
}

/// Whether `user` may see a media item: its uploader, or a member of a conversation where a
/// message carried it.
async fn may_see(state: &Arc<AppState>, user: &str, row: &MediaRow) -> Result<bool, ApiError> {
    if row.owner == user {
        return Ok(true);
    }
    let id = row.id.clone();
    let convs = blocking(state, move |s| s.media_conversations(&id)).await?;
    let dir = state.directory.read().unwrap_or_else(|e| e.into_inner());
    Ok(convs.iter().any(|c| dir.is_member(c, user)))
}

fn not_found() -> ApiError {
    ApiError::from(Refusal::NotFound).with_message("no such media")
}

async fn find(state: &Arc<AppState>, id: &str) -> Result<MediaRow, ApiError> {
    let id = id.to_string();
    blocking(state, move |s| s.media(&id))
        .await?
        .ok_or_else(not_found)
}

fn signing_input(id: &str, user: &str, exp: i64) -> String {
    format!("media|{id}|{user}|{exp}")
}

/// GET /api/v1/media/{id}/link — a signed link (and a thumbnail link) valid for a while.
async fn link(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = find(&state, &id).await?;
    if !may_see(&state, &me.user, &row).await? {
        // The same answer as for an unknown id: no probing which ids exist.
        return Err(not_found());
    }
    let exp = now_secs() + state.settings.media_link_ttl as i64;
    let query = Signed::new(&state.signer, &id, &me.user, exp).query();
    Ok(Json(json!({
        "url": format!("/media/{id}?{query}"),
        "thumbnail_url": row.mime.starts_with("image/").then(|| format!("/media/{id}/thumbnail?{query}")),
        "expires": exp,
        "type": row.mime,
        "size": row.size,
    })))
}

/// What a signed link carries in its query: the user it was made for, its expiry (seconds
/// since the epoch) and the signature over both and the media id.
#[derive(Deserialize)]
struct Signed {
    u: String,
    exp: i64,
    sig: String,
}

impl Signed {
    /// Signs a link to media `id` for `user`, valid until `exp`.
    fn new(signer: &Signer, id: &str, user: &str, exp: i64) -> Signed {
        Signed {
            u: user.to_string(),
            exp,
            sig: signer.mac(&signing_input(id, user, exp)),
        }
    }

    /// The link's query string, each value percent-encoded.
    fn query(&self) -> String {
        format!(
            "u={}&exp={}&sig={}",
            encode(&self.u),
            self.exp,
            encode(&self.sig)
        )
    }

    /// Whether the signature is good for media `id` and the link is still valid at `now`
    /// (seconds since the epoch): it is expired from the second `exp` on.
    fn valid(&self, signer: &Signer, id: &str, now: i64) -> bool {
        signer.verify_mac(&signing_input(id, &self.u, self.exp), &self.sig) && self.exp > now
    }
}

/// `value` for a query string: every byte but RFC 3986's unreserved characters as `%XX`.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a signed link: signature, expiry, and that the user may still see the media.
async fn check_link(state: &Arc<AppState>, id: &str, q: &Signed) -> Result<MediaRow, ApiError> {
    let forbidden = || ApiError::from(Refusal::BadLink);
    if !q.valid(&state.signer, id, now_secs()) {
        return Err(forbidden());
    }
    let row = find(state, id).await?;
    if !may_see(state, &q.u, &row).await? {
        return Err(forbidden());
    }
    Ok(row)
}

/// GET /media/{id}?u=&exp=&sig= — the file, with range requests.
async fn download(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = check_link(&state, &id, &q).await?;
    let path = state.media.blob_path(&row.hash);
    serve_file(&path, &row.mime, row.size, &headers).await
}

/// GET /media/{id}/thumbnail?u=&exp=&sig= — a PNG thumbnail of an image.
async fn thumbnail(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = check_link(&state, &id, &q).await?;
    if !row.mime.starts_with("image/") {
        return Err(MediaError::NotAnImage.into());
    }
    let path = state.media.thumbnail(&row.hash, &state.thumbnails).await?;
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(MediaError::from)?
        .len();
    serve_file(&path, "image/png", size, &headers).await
}

/// Serves a file whole or one byte range of it (RFC 9110 §14).
async fn serve_file(
    path: &std::path::Path,
    mime: &str,
    size: u64,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => match parse_range(value, size) {
            Some(range) => Some(range),
            None => return Ok(unsatisfiable(size)),
        },
        None => None,
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut response = Response::new(read_span(path, start, len).await?);
    *response.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    content_headers(h, mime, len);
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

/// The 416 answer to a range a file of `size` bytes cannot satisfy.
fn unsatisfiable(size: u64) -> Response {
    (
        StatusCode::RANGE_NOT_SATISFIABLE,
        [(header::CONTENT_RANGE, format!("bytes */{size}"))],
    )
        .into_response()
}

/// A body streaming `len` bytes of the file at `path` from offset `start`.
async fn read_span(path: &std::path::Path, start: u64, len: u64) -> Result<RawBody, ApiError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(MediaError::from)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(MediaError::from)?;
    let stream = tokio_util::io::ReaderStream::new(file.take(len));
    Ok(RawBody::from_stream(stream))
}

/// The headers every download carries: its type (inert types inline, everything else an
/// attachment), length, range support and `nosniff`.
fn content_headers(h: &mut HeaderMap, mime: &str, len: u64) {
    let inline = INLINE.contains(&mime);
    let content_type = if inline {
        mime
    } else {
        "application/octet-stream"
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(if inline { "inline" } else { "attachment" }),
    );
}

/// One `bytes=` range within `size`; `None` when it cannot be satisfied.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::{parse_range, Signed};
    use crate::tokens::Signer;

    #[test]
    fn signed_links_table() {
        let signer = Signer::new(b"media key");
        let good = Signed::new(&signer, "m1", "alice", 100).sig;
        let first = if good.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{first}{}", &good[1..]);
        let other_key = Signed::new(&Signer::new(b"other"), "m1", "alice", 100).sig;
        // (case, the link's user, exp and sig, the media id asked for, now, valid)
        let cases: &[(&str, &str, i64, &str, &str, i64, bool)] = &[
            ("valid", "alice", 100, &good, "m1", 50, true),
            ("one second before exp", "alice", 100, &good, "m1", 99, true),
            ("expired at exp", "alice", 100, &good, "m1", 100, false),
            ("after exp", "alice", 100, &good, "m1", 101, false),
            ("wrong media id", "alice", 100, &good, "m2", 50, false),
            ("another user", "bob", 100, &good, "m1", 50, false),
            ("stretched expiry", "alice", 200, &good, "m1", 150, false),
            ("tampered sig", "alice", 100, &tampered, "m1", 50, false),
            ("another key", "alice", 100, &other_key, "m1", 50, false),
            ("not base64", "alice", 100, "not base64!", "m1", 50, false),
            ("empty signature", "alice", 100, "", "m1", 50, false),
        ];
        for &(what, user, exp, sig, id, now, want) in cases {
            let link = Signed {
                u: user.to_string(),
                exp,
                sig: sig.to_string(),
            };
            assert_eq!(link.valid(&signer, id, now), want, "{what}");
        }
    }

    #[test]
    fn link_query_carries_user_expiry_and_signature() {
        let signer = Signer::new(b"media key");
        let link = Signed::new(&signer, "m1", "alice", 100);
        assert_eq!(link.query(), format!("u=alice&exp=100&sig={}", link.sig));
        assert_eq!(link.sig, signer.mac("media|m1|alice|100"));
    }

    #[test]
    fn link_query_encodes_what_a_query_cannot_carry() {
        let signer = Signer::new(b"media key");
        let link = Signed::new(&signer, "m1", "a&u=b c+%/é", 100);
        let query = link.query();
        assert!(
            query.starts_with("u=a%26u%3Db%20c%2B%25%2F%C3%A9&exp=100&sig="),
            "{query}"
        );
        let back: Signed = parse_query(&query);
        assert_eq!(back.u, "a&u=b c+%/é");
        assert!(back.valid(&signer, "m1", 50));
    }

    /// Reads a query string back as the download route's `Query` extractor does.
    fn parse_query(query: &str) -> Signed {
        let uri: axum::http::Uri = format!("/media/m1?{query}").parse().unwrap();
        axum::extract::Query::<Signed>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn ranges_table() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("bytes=0-9", Some((0, 9))),
            ("bytes=90-", Some((90, 99))),
            ("bytes=-10", Some((90, 99))),
            ("bytes=50-500", Some((50, 99))),
            ("bytes=100-", None),
            ("bytes=9-1", None),
            ("bytes=0-1,5-6", None),
            ("bytes=-0", None),
            ("items=0-1", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_range(v, 100), *want, "{v}");
        }
    }
}
