//! The publish API's handlers: the server side of [`crate::protocol`].

use crate::conn::RequestBody;
use crate::protocol::{
    BlobsAnswer, BuildInfo, BuildList, CommitAnswer, CommitRequest, ErrorCode, FrameHeader, MissingAnswer,
    MissingRequest, TargetInfo, TargetList,
};
use crate::{
    App, Body, MANIFEST_BYTES_PER_FILE, MAX_MANIFEST_BODY, MAX_MISSING_BODY, WRITE_CHUNK, blocking, body_error, conn,
    json, read_json, refuse, short, target,
};
use airlock_host::publish::{Committed, PublishError, TargetStore};
use airlock_store::{TokenError, TokenUse, now_ms};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;

/// The answer to a refused publish.
pub(crate) fn publish_error(e: &PublishError) -> Response<Body> {
    refuse(ErrorCode::from(e), e.to_string())
}

/// The answer to a token that does not allow the call.
fn token_error(e: &TokenError) -> Response<Body> {
    refuse(ErrorCode::from(e), e.to_string())
}

/// What a publish call asks of its token: the call, and what it adds
/// to the token's quota (nothing, to check the token without charging it).
struct Charge<'a> {
    target: &'a str,
    build: &'a str,
    files: u64,
    bytes: u64,
}

impl Charge<'_> {
    fn of<'a>(target: &'a str, build: &'a str) -> Charge<'a> {
        Charge { target, build, files: 0, bytes: 0 }
    }

    fn token_use(&self, peer: SocketAddr) -> TokenUse<'_> {
        TokenUse {
            action: "publish",
            target: self.target,
            build_id: self.build,
            source: peer.ip().to_canonical(),
            files: self.files,
            bytes: self.bytes,
            now_ms: now_ms(),
        }
    }
}

/// Whether a token check charges the token.
#[derive(Clone, Copy)]
enum Check {
    /// Checked and charged: the call goes ahead.
    Charge,
    /// Only checked: done before a byte of a body whose size the call is
    /// charged for is read.
    Peek,
}

/// Checks the request's token for the call, charging it or not.
fn authorize(
    app: &App,
    peer: SocketAddr,
    headers: &hyper::HeaderMap,
    charge: Charge<'_>,
    check: Check,
) -> Result<(), Response<Body>> {
    let (token, use_) = (bearer(headers)?.trim(), charge.token_use(peer));
    let checked = match check {
        Check::Charge => app.store.use_token(token, &use_),
        Check::Peek => app.store.peek_token(token, &use_),
    };
    checked.map(drop).map_err(|e| token_error(&e))
}

/// The bearer token of a publish call.
fn bearer(headers: &hyper::HeaderMap) -> Result<&str, Response<Body>> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(
        || {
            refuse(
                ErrorCode::TokenMissing,
                "publishing needs a token: send `Authorization: Bearer alk_...` (see `airlock token create`)".into(),
            )
        },
    )
}

/// Target and build id of an API call, checked.
fn publish_place<'a>(app: &'a App, target_name: &str, build: &str) -> Result<&'a TargetStore, Response<Body>> {
    let t = target(app, target_name)?;
    airlock_host::publish::check_build_id(build).map_err(|e| publish_error(&e))?;
    Ok(t)
}

pub(crate) async fn missing(
    app: &App,
    peer: SocketAddr,
    t: &str,
    b: &str,
    req: Request<RequestBody>,
) -> Response<Body> {
    let result = async {
        let target = publish_place(app, t, b)?;
        authorize(app, peer, req.headers(), Charge::of(t, b), Check::Charge)?;
        let body: MissingRequest = read_json(app, req, MAX_MISSING_BODY).await?;
        let target = target.clone();
        let missing = blocking(move || target.missing(&body.digests)).await?.map_err(|e| publish_error(&e))?;
        Ok(json(StatusCode::OK, &MissingAnswer { missing }))
    };
    result.await.unwrap_or_else(|r| r)
}

pub(crate) async fn blobs(app: &App, peer: SocketAddr, t: &str, b: &str, req: Request<RequestBody>) -> Response<Body> {
    let result = async {
        let target = publish_place(app, t, b)?;
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                refuse(
                    ErrorCode::LengthRequired,
                    "a blob upload states its length (`Content-Length`) so the token can be charged first".into(),
                )
            })?;
        // One request never holds more than one publish may: the target's
        // limits bound what a token holder can make the server write.
        let most = target.limits().max_total.saturating_add(40 * target.limits().max_files);
        if length > most {
            return Err(refuse(
                ErrorCode::UploadTooLarge,
                format!(
                    "an upload of {length} bytes is more than one publish to `{t}` may hold ({most} bytes with framing)"
                ),
            ));
        }
        authorize(app, peer, req.headers(), Charge { bytes: length, ..Charge::of(t, b) }, Check::Charge)?;
        let (stored, new) = read_frames(app, target, req.into_body()).await?;
        Ok(json(StatusCode::OK, &BlobsAnswer { stored, new }))
    };
    result.await.unwrap_or_else(|r| r)
}

/// Reads `digest (32 bytes) | length (u64, big-endian) | bytes` frames
/// until the body ends, storing each blob. Returns (blobs, new blobs).
///
/// The body is read here, on the async side, so a client that sends
/// slowly holds no thread; what arrived is written to disk a chunk at a
/// time on the blocking pool.
async fn read_frames(app: &App, target: &TargetStore, body: RequestBody) -> Result<(u64, u64), Response<Body>> {
    let mut body = body;
    let timeout = app.limits.body_timeout;
    let (mut stored, mut new) = (0, 0);
    let mut buffered = bytes::BytesMut::new();
    let fail = |e: PublishError| publish_error(&e);
    loop {
        while buffered.len() < FrameHeader::LEN {
            match conn::next_chunk(&mut body, timeout).await.map_err(body_error)? {
                Some(chunk) => buffered.extend_from_slice(&chunk),
                None if buffered.is_empty() => return Ok((stored, new)),
                None => {
                    let got = buffered.len() as u64;
                    let expected = FrameHeader::LEN as u64;
                    return Err(fail(PublishError::Truncated { sha256: "(frame header)".into(), expected, got }));
                }
            }
        }
        let len = frame_len(&buffered);
        const HEAD: usize = FrameHeader::LEN;
        if len <= WRITE_CHUNK as u64 {
            // A small blob is taken whole, with every whole small blob
            // after it already here, and stored in one go on the blocking
            // pool: a publish of many small files costs one trip there
            // per chunk of them, not several per file.
            let whole = HEAD + len as usize;
            while buffered.len() < whole {
                match conn::next_chunk(&mut body, timeout).await.map_err(body_error)? {
                    Some(chunk) => buffered.extend_from_slice(&chunk),
                    None => {
                        let (sha256, got) = (hex::encode(&buffered[..32]), (buffered.len() - HEAD) as u64);
                        return Err(fail(PublishError::Truncated { sha256, expected: len, got }));
                    }
                }
            }
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            while buffered.len() >= HEAD && batch_bytes < WRITE_CHUNK {
                let len = frame_len(&buffered);
                if len > WRITE_CHUNK as u64 || buffered.len() < HEAD + len as usize {
                    break;
                }
                batch_bytes += len as usize;
                batch.push(buffered.split_to(HEAD + len as usize).freeze());
            }
            let storing = target.clone();
            let (n, fresh) = blocking(move || {
                let mut fresh = 0;
                for frame in &batch {
                    let digest = hex::encode(&frame[..32]);
                    if storing.put_blob(&digest, (frame.len() - HEAD) as u64, &frame[HEAD..])? {
                        fresh += 1;
                    }
                }
                Ok::<_, PublishError>((batch.len() as u64, fresh))
            })
            .await?
            .map_err(fail)?;
            stored += n;
            new += fresh;
            continue;
        }
        // A large blob goes to the disk a chunk at a time as it arrives.
        let digest = hex::encode(&buffered.split_to(HEAD)[..32]);
        let opened = target.clone();
        let mut writer = blocking(move || opened.blob_writer(&digest, len)).await?.map_err(fail)?;
        let mut left = len;
        let mut gathered = bytes::BytesMut::new();
        loop {
            if left > 0 && buffered.is_empty() {
                match conn::next_chunk(&mut body, timeout).await.map_err(body_error)? {
                    Some(chunk) => buffered.extend_from_slice(&chunk),
                    // Short: the writer finds it so when it is finished.
                    None => left = 0,
                }
            }
            let take = buffered.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            gathered.extend_from_slice(&buffered.split_to(take));
            left -= take as u64;
            // A chunk at a time (or the blob's end) goes to the disk.
            if gathered.len() >= WRITE_CHUNK || left == 0 {
                let chunk = std::mem::take(&mut gathered).freeze();
                writer = blocking(move || writer.write(&chunk).map(|()| writer)).await?.map_err(|e| fail(e.into()))?;
            }
            if left == 0 {
                break;
            }
        }
        let finishing = target.clone();
        if blocking(move || finishing.finish_blob(writer)).await?.map_err(fail)? {
            new += 1;
        }
        stored += 1;
    }
}

/// The length of the frame whose header starts `buffered`, which holds
/// at least a header.
fn frame_len(buffered: &[u8]) -> u64 {
    FrameHeader::decode(buffered).map_or(0, |h| h.len)
}

pub(crate) async fn commit(app: &App, peer: SocketAddr, t: &str, b: &str, req: Request<RequestBody>) -> Response<Body> {
    let result = async {
        let target = publish_place(app, t, b)?;
        // The token is checked before a byte of the manifest is read, and
        // charged after: its file count is what the file quota counts. A
        // manifest can be no longer than the target's file limit needs.
        let headers = req.headers().clone();
        authorize(app, peer, &headers, Charge::of(t, b), Check::Peek)?;
        let most = target.limits().max_files.saturating_mul(MANIFEST_BYTES_PER_FILE).saturating_add(4096);
        let limit = usize::try_from(most).unwrap_or(usize::MAX).min(MAX_MANIFEST_BODY);
        let body: CommitRequest = read_json(app, req, limit).await?;
        if body.tree.is_some() && !body.files.is_empty() {
            authorize(app, peer, &headers, Charge::of(t, b), Check::Charge)?;
            return Err(refuse(ErrorCode::BadJson, "a commit names its `files` or its `tree`, not both".into()));
        }
        // The tree is checked before the token is charged for its files:
        // a refused commit costs the token a call and no files, so a
        // client can go back, upload what was missing, and commit again.
        let checking = target.clone();
        let checked = blocking(move || match body.tree {
            Some(tree) => checking.check_tree(&tree),
            None => checking.check(body.files),
        });
        let checked = match checked.await? {
            Ok(checked) => checked,
            Err(e) => {
                authorize(app, peer, &headers, Charge::of(t, b), Check::Charge)?;
                return Err(publish_error(&e));
            }
        };
        let files = checked.file_count();
        authorize(app, peer, &headers, Charge { files, ..Charge::of(t, b) }, Check::Charge)?;
        let (target, build) = (target.clone(), b.to_owned());
        let (committed, published) =
            blocking(move || target.commit_checked(&build, checked)).await?.map_err(|e| publish_error(&e))?;
        let status = match committed {
            Committed::Created => StatusCode::CREATED,
            Committed::AlreadyThere => StatusCode::OK,
        };
        Ok(json(
            status,
            &CommitAnswer {
                files: published.files,
                bytes: published.bytes,
                created: committed == Committed::Created,
                url: format!("/{}/{}/", published.target, published.build),
                tree: published.tree,
                target: published.target,
                build: published.build,
            },
        ))
    };
    result.await.unwrap_or_else(|r| r)
}

pub(crate) fn list_targets(app: &App) -> Response<Body> {
    let targets = app
        .targets
        .values()
        .map(|t| TargetInfo { name: t.name().to_owned(), description: t.limits().description.clone() })
        .collect();
    json(StatusCode::OK, &TargetList { targets })
}

pub(crate) fn list_builds(t: &TargetStore) -> Response<Body> {
    match t.builds() {
        Ok(builds) => {
            let builds = builds.into_iter().map(|(build, published_ms)| BuildInfo { build, published_ms }).collect();
            json(StatusCode::OK, &BuildList { builds })
        }
        Err(e) => publish_error(&e),
    }
}

pub(crate) fn get_manifest(app: &App, t: &TargetStore, b: &str) -> Response<Body> {
    match app.manifest(t, b) {
        Ok(Some(p)) => json(StatusCode::OK, &*p),
        Ok(None) => refuse(ErrorCode::NoBuild, format!("nothing is published as `{}/{}`", t.name(), short(b))),
        Err(e) => publish_error(&e),
    }
}
