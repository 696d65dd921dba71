//! Browsing: index pages of targets, builds and directories, and file
//! downloads with their digests.
//!
//! URLs are `/TARGET/BUILD/PATH`. Every name shown comes from a manifest
//! that passed the publish checks (no control or bidi characters), and is
//! HTML-escaped and percent-encoded all the same.

use crate::{App, Body, error, publish_error, respond, send_blob, short};
use airlock_host::publish::{ManifestEntry, Published, TargetStore};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use std::fmt::Write as _;

/// What is encoded in a path segment of a link.
const SEGMENT: &AsciiSet =
    &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}');

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn href(path: &str) -> String {
    escape(&utf8_percent_encode(path, SEGMENT).to_string())
}

/// The look every page of the server shares: the published trees' and
/// the run pages' (which add their own rules after it).
pub(crate) const STYLE: &str = "\
    body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1d232a}\
    table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .75rem .25rem 0;vertical-align:top}\
    th{border-bottom:1px solid #ccd}code{font-size:12px;color:#556}\
    a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}nav{color:#667;margin-bottom:1rem}";

fn page(title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · airlock</title><style>{STYLE}td.n{{text-align:right;white-space:nowrap}}\
         </style></head><body><h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    );
    respond(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = respond(StatusCode::MOVED_PERMANENTLY, "text/plain; charset=utf-8", "moved\n");
    if let Ok(v) = HeaderValue::from_str(&utf8_percent_encode(to, SEGMENT).to_string()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn not_found(what: String) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", what)
}

/// Answers a GET or HEAD of a browse URL.
pub(crate) async fn browse(app: &App, raw_path: &str, head: bool) -> Response<Body> {
    let Ok(path) = percent_decode_str(raw_path).decode_utf8() else {
        return not_found("that path is not UTF-8".into());
    };
    let rest = path.trim_start_matches('/');
    if rest.is_empty() {
        return targets_page(app);
    }
    let (target_name, rest) = rest.split_once('/').map_or((rest, None), |(t, r)| (t, Some(r)));
    let Some(target) = app.targets.get(target_name) else {
        return not_found(format!("no publish target `{}`", short(target_name)));
    };
    let Some(rest) = rest else { return redirect(&format!("/{target_name}/")) };
    if rest.is_empty() {
        return builds_page(target);
    }
    let (build, inner) = rest.split_once('/').map_or((rest, None), |(b, r)| (b, Some(r)));
    // A build's provenance, beside its tree.
    if inner.is_none()
        && let Some(build) = build.strip_suffix(airlock_host::publish::PROVENANCE_SUFFIX)
        && airlock_host::publish::check_build_id(build).is_ok()
    {
        return match target.provenance(build) {
            Ok(Some(bytes)) => {
                let mut r = respond(StatusCode::OK, "application/json", if head { Vec::new() } else { bytes });
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
            Ok(None) => not_found(format!("`{target_name}/{build}` has no provenance (or is not published)")),
            Err(e) => publish_error(&e),
        };
    }
    if airlock_host::publish::check_build_id(build).is_err() {
        return not_found(format!("nothing is published as `{target_name}/{}`", short(build)));
    }
    let published = match app.manifest(target, build) {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(format!("nothing is published as `{target_name}/{build}`")),
        Err(e) => return publish_error(&e),
    };
    let Some(inner) = inner else { return redirect(&format!("/{target_name}/{build}/")) };
    if inner.is_empty() || inner.ends_with('/') {
        return dir_page(&published, inner);
    }
    match published.files.binary_search_by(|f| f.path.as_str().cmp(inner)) {
        Ok(i) => file(target, &published.files[i], head).await,
        Err(i) => {
            // A directory asked for without its `/`.
            let dir = format!("{inner}/");
            if published.files.get(i).is_some_and(|f| f.path.starts_with(&dir)) {
                redirect(&format!("/{target_name}/{build}/{dir}"))
            } else {
                not_found(format!("`{target_name}/{build}` has no file `{}`", short(inner)))
            }
        }
    }
}

fn targets_page(app: &App) -> Response<Body> {
    let mut body = String::from("<table><tr><th>target</th><th>what it holds</th></tr>\n");
    for t in app.targets.values() {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/{}/\">{}</a></td><td>{}</td></tr>",
            href(t.name()),
            escape(t.name()),
            escape(t.limits().description.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table>\n");
    page("Published trees", &body)
}

fn builds_page(target: &TargetStore) -> Response<Body> {
    let builds = match target.builds() {
        Ok(b) => b,
        Err(e) => return publish_error(&e),
    };
    let mut body = String::from("<nav><a href=\"/\">targets</a></nav>\n");
    if builds.is_empty() {
        body.push_str("<p>Nothing is published here yet.</p>\n");
    } else {
        body.push_str("<table><tr><th>build</th><th>published</th></tr>\n");
        for (build, ms) in builds {
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}/\">{}</a></td><td>{}</td></tr>",
                href(&build),
                escape(&build),
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
            );
        }
        body.push_str("</table>\n");
    }
    page(target.name(), &body)
}

fn dir_page(p: &Published, dir: &str) -> Response<Body> {
    let start = p.files.partition_point(|f| f.path.as_str() < dir);
    let inside = p.files[start..].iter().take_while(|f| f.path.starts_with(dir));
    let mut subdirs: Vec<(&str, usize, u64)> = Vec::new();
    let mut files: Vec<&ManifestEntry> = Vec::new();
    for f in inside {
        let rel = &f.path[dir.len()..];
        match rel.split_once('/') {
            Some((sub, _)) => match subdirs.last_mut() {
                Some(last) if last.0 == sub => {
                    last.1 += 1;
                    last.2 += f.size;
                }
                _ => subdirs.push((sub, 1, f.size)),
            },
            None => files.push(f),
        }
    }
    if subdirs.is_empty() && files.is_empty() && !dir.is_empty() {
        return not_found(format!("`{}/{}` has no directory `{}`", p.target, p.build, short(dir)));
    }
    let mut body = format!(
        "<nav><a href=\"/\">targets</a> / <a href=\"/{t}/\">{te}</a> / <a href=\"/{t}/{b}/\">{be}</a>",
        t = href(&p.target),
        te = escape(&p.target),
        b = href(&p.build),
        be = escape(&p.build)
    );
    let mut so_far = String::new();
    for part in dir.trim_end_matches('/').split('/').filter(|s| !s.is_empty()) {
        so_far.push_str(part);
        so_far.push('/');
        let _ = write!(
            body,
            " / <a href=\"/{}/{}/{}\">{}</a>",
            href(&p.target),
            href(&p.build),
            href(&so_far),
            escape(part)
        );
    }
    let _ = writeln!(
        body,
        "</nav>\n<p>{} files, {} in all · <a href=\"/api/v1/targets/{}/builds/{}\">manifest (JSON)</a></p>",
        p.files.len(),
        airlock_model::format_size(p.bytes()),
        href(&p.target),
        href(&p.build)
    );
    body.push_str("<table><tr><th>name</th><th>size</th><th>sha256</th></tr>\n");
    for (sub, count, bytes) in subdirs {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"{}/\">{}/</a></td><td class=\"n\">{}</td><td>{count} files</td></tr>",
            href(sub),
            escape(sub),
            airlock_model::format_size(bytes)
        );
    }
    for f in files {
        let name = &f.path[dir.len()..];
        let _ = writeln!(
            body,
            "<tr><td><a href=\"{}\">{}</a></td><td class=\"n\">{}</td><td><code>{}</code></td></tr>",
            href(name),
            escape(name),
            airlock_model::format_size(f.size),
            f.sha256
        );
    }
    body.push_str("</table>\n");
    page(&format!("{}/{}/{dir}", p.target, p.build), &body)
}

async fn file(target: &TargetStore, f: &ManifestEntry, head: bool) -> Response<Body> {
    let blob = match target.open_blob(&f.sha256) {
        Ok(b) => b,
        Err(e) => return publish_error(&e),
    };
    let body = if head { crate::full(bytes::Bytes::new()) } else { send_blob(blob, f.sha256.clone()) };
    let mut r = Response::new(body);
    let mime = mime_guess::from_path(&f.path).first_or_octet_stream();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(f.size));
    if let Ok(v) = HeaderValue::from_str(&f.sha256) {
        h.insert("x-airlock-sha256", v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", f.sha256)) {
        h.insert(header::ETAG, v);
    }
    // Published files never change; a build id names them forever.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A published page may run its scripts, but in an origin of its own:
    // it cannot act as this server's pages or read what they show.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox allow-scripts allow-popups"));
    r
}
