//! serve's blob store on the wire (see `storage::embedded` for the client):
//! - `GET /deviceUpdate/{instance}/otaforge/storage` → where uploads go
//! - `PUT /deviceUpdate/{instance}/otaforge/blobs/{container}/{blob}` (`x-otaforge-sha256`)
//! - `GET /deviceUpdate/{instance}/otaforge/urls/{container}/{blob}?ttl=SECONDS` → a read URL
//!
//! guarded like the Device Update API; and the signed URLs themselves, which carry their own
//! signature: `GET /blobs/{container}/{blob}?se=...&sp=r&sig=...` (uploads), `GET
//! /files/content/SHA256HEX?...` (imported content, as deployments hand it to devices), and
//! Azure's Put Blob under a container grant, `PUT /blobs/{container}/{blob}?se=...&sr=c&sp=cw&sig=...`
//! with `x-ms-blob-type: BlockBlob` (how a device uploads its logs for a log collection).

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures::StreamExt as _;

use super::Q;
use crate::server::Shared;
use crate::server::error::ApiError;
use crate::storage::embedded::{BlobReceipt, ReadUrl, SHA256_HEADER, StorageInfo};
use crate::storage::{BlobName, BlobStore as _, ContainerName, NameError};

/// The upload and read-URL routes of the Device Update surface.
pub(super) fn storage_router() -> Router<Shared> {
    Router::new()
        .route("/deviceUpdate/{instance}/otaforge/storage", get(storage_info))
        .route("/deviceUpdate/{instance}/otaforge/blobs/{container}/{*blob}", put(put_blob))
        .route("/deviceUpdate/{instance}/otaforge/urls/{container}/{*blob}", get(blob_url))
}

/// The signed read URLs.
pub(super) fn read_router() -> Router<Shared> {
    Router::new()
        .route("/blobs/{*path}", get(get_blob).put(put_granted))
        .route("/files/content/{*path}", get(get_content))
}

async fn get_blob(State(s): State<Shared>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let path = uri.path().strip_prefix("/blobs").unwrap_or_default();
    serve_file(&s.blobs, path, uri.query().unwrap_or_default()).await
}

/// The most a device may upload as one blob through a write grant (log files: the agent's
/// default is 50 KB per log folder).
const MAX_GRANTED_BLOB: u64 = 64 << 20;

/// Azure's Put Blob under a container grant ([`crate::storage::dir::DirStore::write_url`]):
/// the body becomes the blob (201), replacing one of the same name.
async fn put_granted(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use std::io::Write as _;
    let path = uri.path().strip_prefix("/blobs").unwrap_or_default();
    let (c, b) = s
        .blobs
        .resolve_write(path, uri.query().unwrap_or_default(), SystemTime::now())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "AuthenticationFailed", e.to_string()))?;
    // Azure requires the blob type of a Put Blob.
    if headers.get("x-ms-blob-type").and_then(|v| v.to_str().ok()) != Some("BlockBlob") {
        return Err(ApiError::bad_request(
            "MissingRequiredHeader",
            "x-ms-blob-type: BlockBlob is required",
        ));
    }
    let mut tmp = crate::fsutil::AtomicFile::new(&s.incoming_dir.join("granted"))
        .map_err(ApiError::internal)?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("IncompleteBody", format!("the upload broke off: {e}"))
        })?;
        total += chunk.len() as u64;
        if total > MAX_GRANTED_BLOB {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                format!("a blob uploaded with a write grant is at most {MAX_GRANTED_BLOB} bytes"),
            ));
        }
        sha2::Digest::update(&mut hasher, &chunk);
        tmp.write_all(&chunk).map_err(ApiError::internal)?;
    }
    let sha = crate::Sha256::from_bytes(sha2::Digest::finalize(hasher).into());
    let blobs = s.blobs.clone();
    tokio::task::spawn_blocking(move || blobs.put_received(&c, &b, tmp, total, sha))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut r = StatusCode::CREATED.into_response();
    let etag = format!("\"0x{}\"", &sha.to_hex()[..16].to_uppercase());
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

/// Imported content, by the signed URLs a deployment writes into device twins.
async fn get_content(State(s): State<Shared>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let path = uri.path().strip_prefix("/files").unwrap_or_default();
    serve_file(&s.files, path, uri.query().unwrap_or_default()).await
}

/// Streams the file a signed read URL of `store` grants.
async fn serve_file(
    store: &crate::storage::dir::DirStore,
    path: &str,
    query: &str,
) -> Result<Response, ApiError> {
    // Azure answers a bad or expired SAS with 403.
    let file = store
        .resolve(path, query, SystemTime::now())
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "AuthenticationFailed", e.to_string()))?;
    let f = tokio::fs::File::open(&file)
        .await
        .map_err(|_| ApiError::not_found("BlobNotFound", "the blob does not exist"))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 16);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

async fn storage_info(State(s): State<Shared>) -> Response {
    let base = format!("/deviceUpdate/{}/otaforge", s.instance);
    axum::Json(StorageInfo {
        upload_path: format!("{base}/blobs"),
        url_path: format!("{base}/urls"),
    })
    .into_response()
}

fn blob_address(container: &str, blob: &str) -> Result<(ContainerName, BlobName), ApiError> {
    let invalid = |e: NameError| ApiError::bad_request("InvalidBlobName", e.to_string());
    Ok((container.parse().map_err(invalid)?, blob.parse().map_err(invalid)?))
}

/// Receives a blob: streamed to a temp file while hashed, checked against `x-otaforge-sha256`,
/// then stored; a mismatch stores nothing.
async fn put_blob(
    State(s): State<Shared>,
    Path((_, container, blob)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use std::io::Write as _;
    let (c, b) = blob_address(&container, &blob)?;
    let declared = headers
        .get(SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<crate::Sha256>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "MissingContentHash",
                format!("{SHA256_HEADER} with the base64 SHA-256 of the body is required"),
            )
        })?;
    let mut tmp = crate::fsutil::AtomicFile::new(&s.incoming_dir.join("upload"))
        .map_err(ApiError::internal)?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("IncompleteBody", format!("the upload broke off: {e}"))
        })?;
        total += chunk.len() as u64;
        if total > crate::limits::MAX_FILE_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BlobTooLarge",
                "a blob is at most 2 GB",
            ));
        }
        sha2::Digest::update(&mut hasher, &chunk);
        tmp.write_all(&chunk).map_err(ApiError::internal)?;
    }
    let actual = crate::Sha256::from_bytes(sha2::Digest::finalize(hasher).into());
    if actual != declared {
        return Err(ApiError::bad_request(
            "Md5Mismatch",
            format!(
                "the body's sha256 is {actual}, {SHA256_HEADER} says {declared}; nothing was stored"
            ),
        ));
    }
    let blobs = s.blobs.clone();
    let already_present =
        tokio::task::spawn_blocking(move || blobs.put_received(&c, &b, tmp, total, actual))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(axum::Json(BlobReceipt { size_in_bytes: total, sha256: actual, already_present })
        .into_response())
}

/// A signed read URL for a blob of the store, valid `ttl` seconds (default 4 h, at most 7 d).
async fn blob_url(
    State(s): State<Shared>,
    Path((_, container, blob)): Path<(String, String, String)>,
    axum::extract::Query(q): Q,
) -> Result<Response, ApiError> {
    let (c, b) = blob_address(&container, &blob)?;
    let ttl = match q.get("ttl").map(|t| t.parse::<u64>()) {
        None => Duration::from_secs(4 * 3600),
        Some(Ok(secs)) if (1..=7 * 86_400).contains(&secs) => Duration::from_secs(secs),
        Some(_) => return Err(ApiError::bad_request("InvalidTtl", "ttl is 1 to 604800 seconds")),
    };
    if !s.blobs.blob_path(&c, &b).is_file() {
        return Err(ApiError::not_found("BlobNotFound", format!("{c}/{b} does not exist")));
    }
    let url = s.blobs.read_url(&c, &b, ttl).await.map_err(ApiError::internal)?;
    Ok(axum::Json(ReadUrl { url }).into_response())
}
