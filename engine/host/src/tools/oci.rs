//! Tools from OCI registries.
//!
//! WebAssembly tools are also published as OCI artifacts, the way `wkg`
//! and Spin push them: an image manifest whose layer is the `.wasm`
//! (media type `application/wasm`), or a tarball of a tool with its
//! files. A pipeline names one by reference, `oci://REGISTRY/REPO:TAG`
//! (`oci+http://` for a registry that speaks plain HTTP, such as a mirror
//! on the local network), and pins the layer by `sha256:`.
//!
//! The pin is what counts, as for an HTTPS URL: the host reads the
//! manifest the tag points to, takes the layer whose digest is the pinned
//! one, and streams that blob into the cache, hashing it on the way. A
//! tag moved to other content finds no such layer, and the error lists
//! the layers it has instead. Pulls are anonymous (public images, or a
//! registry on a trusted network); the registry client is `oci-client`,
//! which does the token exchange registries such as ghcr.io and Docker
//! Hub ask for.

use super::{BODY_TIMEOUT, CONNECT_TIMEOUT, Incoming, MAX_FETCH_BYTES, ToolError, USER_AGENT};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{ImageIndexEntry, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::sync::mpsc::{SyncSender, sync_channel};

/// An image a tool URL names.
pub(super) struct Location<'a> {
    url: &'a str,
    /// `REGISTRY/REPO[:TAG][@DIGEST]`.
    reference: &'a str,
    plain_http: bool,
}

impl<'a> Location<'a> {
    /// The image `url` names, if it names one.
    pub(super) fn of(url: &'a str) -> Option<Self> {
        if let Some(reference) = url.strip_prefix("oci://") {
            return Some(Self { url, reference, plain_http: false });
        }
        url.strip_prefix("oci+http://").map(|reference| Self { url, reference, plain_http: true })
    }
}

/// What the pulling thread hands to the one writing the cache.
enum Event {
    Length(u64),
    Chunk(bytes::Bytes),
}

/// Pulls the layer with digest `sha256` of the image at `location` into
/// `sink`.
pub(super) fn pull(location: &Location<'_>, sha256: &str, sink: &mut Incoming<'_>) -> Result<(), ToolError> {
    // The registry client is asynchronous; this runs in whatever thread
    // fetches tools (a blocking one, or the CLI's own), so the pull gets a
    // thread and a small runtime of its own and hands the bytes over a
    // short queue: memory stays bounded, and a sink that stops (a write
    // error, a size over the limit) stops the pull at its next chunk.
    let (tx, rx) = sync_channel::<Event>(4);
    std::thread::scope(|scope| {
        let puller = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the registry client: {e}"))?;
            runtime.block_on(async {
                match tokio::time::timeout(BODY_TIMEOUT, pull_layer(location, sha256, tx)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "fetching {} took longer than {}",
                        location.url,
                        humantime::format_duration(BODY_TIMEOUT)
                    )),
                }
            })
        });
        let mut written: Result<(), ToolError> = Ok(());
        for event in rx.iter() {
            written = match event {
                Event::Length(n) => sink.expect(Some(n)),
                Event::Chunk(bytes) => sink.write(&bytes),
            };
            if written.is_err() {
                break;
            }
        }
        // Dropping the queue ends a pull still sending.
        drop(rx);
        written?;
        match puller.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(sink.error(message)),
            Err(_) => Err(sink.error(format!("fetching {} failed inside the registry client", location.url))),
        }
    })
}

async fn pull_layer(location: &Location<'_>, sha256: &str, tx: SyncSender<Event>) -> Result<(), String> {
    let url = location.url;
    let image: Reference = location
        .reference
        .parse()
        .map_err(|e| format!("`{url}` is not an image reference ({e}); write oci://REGISTRY/REPOSITORY:TAG"))?;
    // One crypto provider for the process: the same ring that the HTTPS
    // fetches use. Installing it again is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig {
        protocol: if location.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(CONNECT_TIMEOUT),
        user_agent: USER_AGENT,
        // An index is resolved here, for WebAssembly, not for this host.
        platform_resolver: None,
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let unreachable = |e: oci_client::errors::OciDistributionError| {
        format!(
            "cannot fetch {url}: {}; check the reference (registry, repository, tag) and the network, or fetch it with `airlock fetch` on a machine that can and copy the tool cache",
            chain(&e)
        )
    };
    let (image, manifest) = match client.pull_manifest(&image, &auth).await.map_err(unreachable)? {
        (OciManifest::Image(manifest), _) => (image, manifest),
        (OciManifest::ImageIndex(index), _) => {
            let entry = wasm_entry(&index.manifests)
                .ok_or_else(|| format!("{url} is an index of images for {}, none of them for WebAssembly (wasm or wasi); name one image by its digest", platforms(&index.manifests)))?;
            let one = Reference::with_digest(
                image.registry().to_owned(),
                image.repository().to_owned(),
                entry.digest.clone(),
            );
            match client.pull_manifest(&one, &auth).await.map_err(unreachable)? {
                (OciManifest::Image(manifest), _) => (one, manifest),
                (OciManifest::ImageIndex(_), _) => {
                    return Err(format!(
                        "{url} is an index whose WebAssembly entry is another index; name the image by its digest"
                    ));
                }
            }
        }
    };
    let wanted = format!("sha256:{sha256}");
    let Some(layer) = manifest.layers.iter().find(|l| l.digest == wanted) else {
        return Err(format!(
            "the image at {url} has no layer with sha256 {sha256}, the digest the pipeline pins; its layers are {}. If the tool changed on purpose, put the new layer's digest in `sha256:`",
            layers(&manifest)
        ));
    };
    let size = u64::try_from(layer.size).unwrap_or(0);
    if size > MAX_FETCH_BYTES {
        return Err(format!(
            "the layer of {url} is {} long, more than the {} a tool may be",
            airlock_model::format_size(size),
            airlock_model::format_size(MAX_FETCH_BYTES)
        ));
    }
    if tx.send(Event::Length(size)).is_err() {
        return Ok(());
    }
    let mut stream = client.pull_blob_stream(&image, layer).await.map_err(unreachable)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("fetching {url} stopped: {}", chain(&e)))?;
        if tx.send(Event::Chunk(chunk)).is_err() {
            // The sink stopped, and says why.
            return Ok(());
        }
    }
    Ok(())
}

/// The entry of an index for WebAssembly: architecture `wasm`, or an
/// operating system `wasi…`; or the only entry there is.
fn wasm_entry(entries: &[ImageIndexEntry]) -> Option<&ImageIndexEntry> {
    let wasm = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.architecture.to_string() == "wasm" || p.os.to_string().starts_with("wasi"))
    });
    wasm.or(match entries {
        [only] => Some(only),
        _ => None,
    })
}

fn platforms(entries: &[ImageIndexEntry]) -> String {
    let names: Vec<String> = entries
        .iter()
        .map(|e| match &e.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "an unnamed platform".into(),
        })
        .collect();
    names.join(", ")
}

/// `application/wasm sha256:… (1.2 MiB), …`: the layers of an image.
fn layers(manifest: &OciImageManifest) -> String {
    if manifest.layers.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = manifest
        .layers
        .iter()
        .take(8)
        .map(|l| {
            let size = airlock_model::format_size(u64::try_from(l.size).unwrap_or(0));
            format!("{} {} ({size})", l.media_type, l.digest)
        })
        .collect();
    let more = manifest.layers.len().saturating_sub(shown.len());
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// An error and its causes, on one line: the registry client's errors say
/// little on their own ("error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
