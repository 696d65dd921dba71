//! The web pages of the run API, under `/ui`: the list of runs, a run
//! with its DAG drawn and each step's state, a step's live log, a run's
//! artifacts, and the approval page.
//!
//! Pages are HTML made here, with one script (`/ui/app.js`) for what
//! needs one: following a log and sending a decision. A sign-in page
//! takes the user's API token once and sets a session cookie
//! (`HttpOnly`, `SameSite=Strict`); the token itself is never stored in
//! the browser. Every page answers with a content security policy that
//! allows only this server's own script and no framing. Published files,
//! served from the same origin, run in a CSP sandbox of their own origin
//! and never see the cookie.

use crate::api::{self, Need, RunDetail};
use crate::conn::RequestBody;
use crate::pages::escape;
use crate::{App, Body, respond};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::fmt::Write as _;

const COOKIE: &str = "airlock_session";
/// Largest sign-in form.
const MAX_FORM: usize = 4 << 10;
/// Horizontal and vertical spacing of the DAG drawing, in pixels.
const COLUMN: u32 = 190;
/// Height of a row of the DAG drawing, in pixels.
const ROW: u32 = 54;

/// The session cookie's value, if the request has one.
pub(crate) fn session_cookie(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

const SCRIPT: &str = include_str!("ui.js");

pub(crate) async fn route(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["app.js"]) => {
            let mut r = respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        (Method::GET, ["login"]) => login_page(None),
        (Method::POST, ["login" | "logout"]) if !same_site(req.headers()) => {
            let mut r = page(
                "Not from this site",
                "<p>Signing in and out is done from this server's own pages. <a href=\"/ui/login\">Sign in</a></p>",
                false,
            );
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        }
        (Method::POST, ["login"]) => sign_in(app, req).await,
        (Method::POST, ["logout"]) => {
            if let Some(session) = session_cookie(req.headers()) {
                app.sign_out(session);
            }
            let mut r = see_other("/ui/login");
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static("airlock_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
            );
            r
        }
        (Method::GET, rest) => {
            let Some(user) = app.authenticate(req.headers()) else { return see_other("/ui/login") };
            if !Need::Viewer.allows(&user.roles) {
                return page("Not allowed", &format!("<p>User <b>{}</b> has no role.</p>", escape(&user.name)), false);
            }
            match rest {
                [] => runs_page(app),
                ["agents"] => agents_page(app),
                ["runs", run] => run_page(app, run, &user.name, req.headers()).await,
                ["runs", run, "steps", step, "log"] => log_page(app, run, step),
                ["runs", run, "approvals", step] => approval_page(app, run, step, &user),
                _ => page("Not found", "<p>No such page. <a href=\"/ui\">All runs</a></p>", false),
            }
        }
        _ => page("Not found", "<p>No such page.</p>", false),
    }
}

/// Whether a form post comes from this server's own pages: browsers say
/// where a request comes from in `Sec-Fetch-Site` (newer ones) and
/// `Origin` (all of them, on a POST); another site's page cannot forge
/// either. A client that sends neither is not a browser on another
/// site's page, so it may go on.
fn same_site(headers: &hyper::HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin" | "none"))
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let origin = origin.to_str().unwrap_or_default();
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
}

fn see_other(to: &'static str) -> Response<Body> {
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "see other\n");
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn page(title: &str, body: &str, refresh: bool) -> Response<Body> {
    let refresh = if refresh { "<meta http-equiv=\"refresh\" content=\"2\">" } else { "" };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · airlock</title><style>{style}\
         .state{{font-weight:600}}.succeeded,.cached{{color:#137333}}.failed{{color:#b3261e}}.running,.retrying{{color:#0b57d0}}\
         .queued,.pending{{color:#667}}.skipped,.cancelled{{color:#8a6d00}}\
         pre{{background:#0f1419;color:#e6e1cf;padding:1rem;overflow:auto;min-height:8rem;white-space:pre-wrap}}\
         .box{{border:1px solid #ccd;padding:1rem;margin:1rem 0}}input{{font:inherit;padding:.3rem}}\
         button{{font:inherit;padding:.3rem 1rem;margin-right:.5rem}}#result{{font-weight:600}}\
         </style></head><body><nav><a href=\"/ui\">runs</a> · <a href=\"/ui/agents\">agents</a> · <form method=\"post\" action=\"/ui/logout\" \
         style=\"display:inline\"><button type=\"submit\" id=\"sign-out\">sign out</button></form></nav><h1>{t}</h1>\n{body}\
         <script src=\"/ui/app.js\"></script></body></html>\n",
        t = escape(title),
        style = crate::pages::STYLE,
    );
    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn login_page(problem: Option<&str>) -> Response<Body> {
    let problem = problem.map(|p| format!("<p class=\"failed\">{}</p>", escape(p))).unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "{problem}<form method=\"post\" action=\"/ui/login\"><p>Your API token (<code>airlock user token</code> \
             made it; the policy has its sha256):</p><p><input type=\"password\" name=\"token\" id=\"token\" \
             size=\"70\" autocomplete=\"off\"> <button type=\"submit\" id=\"sign-in\">Sign in</button></p></form>"
        ),
        false,
    )
}

async fn sign_in(app: &App, req: Request<RequestBody>) -> Response<Body> {
    let body = match crate::conn::read_all(req.into_body(), MAX_FORM, &app.limits).await {
        Ok(b) => b,
        Err(crate::conn::BodyError::TooLarge(_)) => return login_page(Some("the form is too big")),
        Err(_) => return login_page(Some("the form did not arrive whole; send it again")),
    };
    let token = form_value(&body, "token").unwrap_or_default();
    match app.sign_in(&token) {
        Ok(session) => {
            let mut r = see_other("/ui");
            let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(why) => login_page(Some(why)),
    }
}

/// A value of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let value = pair.strip_prefix(name)?.strip_prefix('=')?.replace('+', " ");
        percent_encoding::percent_decode_str(&value).decode_utf8().ok().map(|v| v.into_owned())
    })
}

fn state_span(state: &str) -> String {
    format!("<span class=\"state {state}\">{state}</span>")
}

fn ago(ms: u64) -> String {
    let secs = airlock_store::now_ms().saturating_sub(ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string() + " ago"
}

fn runs_page(app: &App) -> Response<Body> {
    let runs = match app.store.runs() {
        Ok(r) => r,
        Err(e) => return page("Runs", &format!("<p class=\"failed\">{}</p>", escape(&e.to_string())), false),
    };
    let mut body = String::from(
        "<table id=\"runs\"><tr><th>run</th><th>pipeline</th><th>state</th><th>started</th><th>by</th></tr>\n",
    );
    let mut live = false;
    for r in runs.iter().take(200) {
        live |= !r.state.is_final();
        let by = r.submission.as_ref().map(|s| s.requester.as_str()).unwrap_or("local");
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/ui/runs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.pipeline),
            state_span(r.state.as_str()),
            ago(r.created_ms),
            escape(by),
            id = escape(&r.id),
        );
    }
    body.push_str("</table>\n");
    if runs.is_empty() {
        body.push_str("<p>No runs yet. <code>airlock run --server URL PIPELINE</code> submits one.</p>");
    }
    page("Runs", &body, live)
}

/// The agents that asked this server for work lately, with their labels
/// and the steps they hold; then every step waiting for an agent or held
/// by one, whichever server offered it.
fn agents_page(app: &App) -> Response<Body> {
    let jobs = match app.store.jobs() {
        Ok(j) => j,
        Err(e) => return page("Agents", &format!("<p class=\"failed\">{}</p>", escape(&e.to_string())), false),
    };
    let open: Vec<_> = jobs.iter().filter(|j| j.state != airlock_store::JobState::Done).collect();
    let step_link = |j: &airlock_store::JobRecord| {
        format!(
            "<a href=\"/ui/runs/{r}\">{r}</a> / <a href=\"/ui/runs/{r}/steps/{s}/log\">{s}</a> (attempt {})",
            j.attempt,
            r = escape(&j.run),
            s = escape(&j.step)
        )
    };
    let mut body = String::from(
        "<h2>Agents</h2><p>Those that asked this server for work in the last minute.</p>\n\
         <table id=\"agents\"><tr><th>agent</th><th>labels</th><th>asked</th><th>running</th></tr>\n",
    );
    let seen = app.agents_lately();
    for (agent, labels, ago) in &seen {
        let running: Vec<String> = open
            .iter()
            .filter(|j| j.state == airlock_store::JobState::Leased && j.agent.as_deref() == Some(agent.as_str()))
            .map(|j| step_link(j))
            .collect();
        let _ = writeln!(
            body,
            "<tr data-agent=\"{a}\"><td>{a}</td><td>{}</td><td>{}s ago</td><td>{}</td></tr>",
            escape(&labels.join(", ")),
            ago.as_secs(),
            if running.is_empty() { "idle".into() } else { running.join("<br>") },
            a = escape(agent),
        );
    }
    body.push_str("</table>\n");
    if seen.is_empty() {
        body.push_str("<p>No agent asked lately. <code>airlock agent --server URL</code> starts one.</p>");
    }
    body.push_str(
        "<h2>Steps for agents</h2>\n<table id=\"jobs\"><tr><th>step</th><th>state</th><th>agent</th>\
         <th>labels wanted</th><th>offered</th></tr>\n",
    );
    for j in &open {
        let state = match j.state {
            airlock_store::JobState::Waiting => "queued",
            _ => "running",
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            step_link(j),
            state_span(state),
            escape(j.agent.as_deref().unwrap_or("-")),
            escape(&j.labels.join(", ")),
            ago(j.created_ms),
        );
    }
    body.push_str("</table>\n");
    page("Agents", &body, !open.is_empty() || !seen.is_empty())
}

/// The DAG as SVG: each step in the column of its longest path from a
/// root, edges from what it needs.
fn dag_svg(detail: &RunDetail) -> String {
    let names: Vec<&str> = detail.steps.iter().map(|s| s.name.as_str()).collect();
    let index = |n: &str| names.iter().position(|m| *m == n);
    let mut depth = vec![0u32; names.len()];
    // Steps are in pipeline order, which validation made acyclic; a few
    // passes settle the depths whatever the order.
    for _ in 0..names.len() {
        let mut changed = false;
        for (i, n) in names.iter().enumerate() {
            for need in detail.needs.get(*n).into_iter().flatten() {
                if let Some(j) = index(need)
                    && depth[i] < depth[j] + 1
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows = std::collections::HashMap::<u32, u32>::new();
    let place: Vec<(u32, u32)> = depth
        .iter()
        .map(|d| {
            let row = rows.entry(*d).or_default();
            *row += 1;
            (*d, *row - 1)
        })
        .collect();
    let width = (depth.iter().max().copied().unwrap_or(0) + 1) * COLUMN;
    let height = rows.values().max().copied().unwrap_or(1) * ROW + 10;
    let mut svg = format!(
        "<svg id=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"system-ui,sans-serif\" font-size=\"13\">"
    );
    for (i, n) in names.iter().enumerate() {
        for need in detail.needs.get(*n).into_iter().flatten() {
            if let Some(j) = index(need) {
                let (x1, y1) = (place[j].0 * COLUMN + 160, place[j].1 * ROW + 25);
                let (x2, y2) = (place[i].0 * COLUMN, place[i].1 * ROW + 25);
                let _ = write!(svg, "<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#99a\"/>");
            }
        }
    }
    for (i, step) in detail.steps.iter().enumerate() {
        let (x, y) = (place[i].0 * COLUMN, place[i].1 * ROW + 5);
        let fill = match step.state.as_str() {
            "succeeded" => "#e6f4ea",
            "failed" => "#fce8e6",
            "running" | "retrying" => "#e8f0fe",
            "skipped" | "cancelled" => "#fef7e0",
            _ => "#f1f3f4",
        };
        let _ = write!(
            svg,
            "<a href=\"/ui/runs/{run}/steps/{name}/log\"><g class=\"step\" data-step=\"{name}\" data-state=\"{state}\">\
             <rect x=\"{x}\" y=\"{y}\" width=\"160\" height=\"40\" rx=\"6\" fill=\"{fill}\" stroke=\"#889\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{name}</text><text x=\"{tx}\" y=\"{sy}\" fill=\"#556\" font-size=\"11\">{state}</text></g></a>",
            run = escape(&detail.run.id),
            name = escape(&step.name),
            state = step.state.as_str(),
            tx = x + 8,
            ty = y + 17,
            sy = y + 33,
        );
    }
    svg.push_str("</svg>");
    svg
}

async fn run_page(app: &App, run: &str, user: &str, headers: &hyper::HeaderMap) -> Response<Body> {
    let detail = match api::run_detail_anywhere(app, run, user, headers).await {
        Ok(d) => d,
        Err(_) => return page("Not found", &format!("<p>No run <code>{}</code>.</p>", escape(run)), false),
    };
    let r = &detail.run;
    let mut body = format!(
        "<p>Pipeline <b>{}</b> (<code>{}</code>) · {} · started {}{}</p>",
        escape(&r.pipeline),
        escape(&r.file),
        state_span(r.state.as_str()),
        ago(r.created_ms),
        r.reason.as_deref().map(|x| format!(" · {}", escape(x))).unwrap_or_default()
    );
    if let Some(o) = &r.origin {
        let what = match o.pull_request {
            Some(n) => format!("pull request #{n} (branch <code>{}</code>)", escape(&o.git_ref)),
            None => format!("push of <code>{}</code>", escape(&o.git_ref)),
        };
        let _ = write!(
            body,
            "<p id=\"origin\">From <b>{}</b>: {what} by {}, commit <code>{}</code>{}</p>",
            escape(&o.repository),
            escape(&o.sender),
            escape(&o.commit),
            o.untrusted
                .as_deref()
                .map(|u| format!(" · <span class=\"untrusted\">untrusted: {}</span>", escape(u)))
                .unwrap_or_default()
        );
    }
    if let Some(f) = &detail.forge_status {
        let said = match (&f.error, f.delivered) {
            (_, true) => format!("commit status <b>{}</b> reported", escape(&f.state)),
            (Some(e), false) => format!(
                "commit status <b>{}</b> not reported after {} attempts: {}",
                escape(&f.state),
                f.attempts,
                escape(e)
            ),
            (None, false) => format!("commit status <b>{}</b> being reported", escape(&f.state)),
        };
        let _ = write!(body, "<p id=\"forge-status\">{said}</p>");
    }
    if r.state.as_str() != "queued" && !r.state.is_final() {
        body.push_str("<p><button id=\"cancel\" data-run=\"");
        body.push_str(&escape(&r.id));
        body.push_str("\">Cancel run</button> <span id=\"result\"></span></p>");
    }
    body.push_str(&dag_svg(&detail));
    body.push_str(
        "<h2>Steps</h2><table id=\"steps\"><tr><th>step</th><th>state</th><th>attempts</th><th>detail</th></tr>",
    );
    for s in &detail.steps {
        let _ = write!(
            body,
            "<tr data-step=\"{n}\"><td><a href=\"/ui/runs/{run}/steps/{n}/log\">{n}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            match &s.cached {
                Some(_) => state_span("cached"),
                None => state_span(s.state.as_str()),
            },
            s.attempts,
            match &s.cached {
                Some(c) => format!(
                    "outputs of run <a href=\"/ui/runs/{r}\">{r}</a> / {st}",
                    r = escape(&c.run),
                    st = escape(&c.step)
                ),
                None => match &s.cache_check {
                    Some(c) if !c.same => format!(
                        "<span class=\"failed\">CACHE CHECK FAILED</span>: other bytes than run \
                         <a href=\"/ui/runs/{r}\">{r}</a> / {st} from the same inputs",
                        r = escape(&c.run),
                        st = escape(&c.step)
                    ),
                    _ => escape(s.reason.as_deref().unwrap_or("")),
                },
            },
            run = escape(&r.id),
            n = escape(&s.name),
        );
    }
    body.push_str("</table>");
    let pending: Vec<_> = detail.approvals.iter().filter(|a| a.state == crate::views::ApprovalState::Pending).collect();
    if !pending.is_empty() {
        body.push_str("<h2>Waiting for approval</h2><ul>");
        for a in pending {
            let _ = write!(
                body,
                "<li><a class=\"approval\" href=\"/ui/runs/{run}/approvals/{step}\">{step}</a>: deploy to <b>{}</b>{}</li>",
                escape(&a.environment),
                detail
                    .codes
                    .get(&a.step)
                    .map(|c| format!(
                        " · your one-time code is <code id=\"code-{}\">{}</code>: give it to an approver",
                        escape(&a.step),
                        escape(c)
                    ))
                    .unwrap_or_default(),
                run = escape(&r.id),
                step = escape(&a.step),
            );
        }
        body.push_str("</ul>");
    }
    body.push_str(
        "<h2>Artifacts</h2><table id=\"artifacts\"><tr><th>step</th><th>path</th><th>size</th><th>sha256</th></tr>",
    );
    for s in &detail.steps {
        for o in &s.outputs {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><a href=\"/api/v1/artifacts/{sha}\" download=\"{file}\">{}</a></td><td>{}</td><td><code>{sha}</code></td></tr>",
                escape(&s.name),
                escape(&o.path),
                airlock_model::format_size(o.size),
                sha = escape(&o.sha256),
                file = escape(o.path.rsplit('/').next().unwrap_or(&o.path)),
            );
        }
    }
    body.push_str("</table>");
    page(&format!("Run {}", r.id), &body, !r.state.is_final())
}

fn log_page(app: &App, run: &str, step: &str) -> Response<Body> {
    let Ok(found) = app.store.find_run(run) else {
        return page("Not found", &format!("<p>No run <code>{}</code>.</p>", escape(run)), false);
    };
    let state = match app.store.step(&found.id, step) {
        Ok(s) => s.state,
        Err(_) => return page("Not found", &format!("<p>No step <code>{}</code>.</p>", escape(step)), false),
    };
    let body = format!(
        "<p><a href=\"/ui/runs/{run}\">run {run}</a> · step <b>{s}</b> · <span id=\"log-state\">{}</span></p>\
         <pre id=\"log\" data-src=\"/api/v1/runs/{run}/steps/{s}/log\"></pre>",
        state_span(state.as_str()),
        run = escape(&found.id),
        s = escape(step),
    );
    page(&format!("{step} log"), &body, false)
}

fn approval_page(app: &App, run: &str, step: &str, user: &api::Caller) -> Response<Body> {
    let Ok(found) = app.store.find_run(run) else {
        return page("Not found", &format!("<p>No run <code>{}</code>.</p>", escape(run)), false);
    };
    let Ok(Some(a)) = app.store.approval(&found.id, step) else {
        return page("Not found", "<p>No approval request for that step.</p>", false);
    };
    let deadline =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.deadline_ms));
    let mut body = format!(
        "<div class=\"box\" id=\"request\"><p>Run <a href=\"/ui/runs/{run}\">{run}</a>, step <b>{step}</b>, asked by \
         <b>{}</b>, wants to deploy to environment <b id=\"environment\">{}</b> with the <b>{}</b> provider at \
         <code id=\"target\">{}</code>.</p><p>State: {} · {} approval(s) needed · approvers: {} · until {deadline}</p>\
         <table id=\"deploy-artifacts\"><tr><th>path</th><th>size</th><th>sha256</th></tr>",
        escape(&a.requester),
        escape(&a.environment),
        escape(&a.provider),
        escape(&a.target),
        state_span(a.state.as_str()),
        a.required,
        escape(&a.approvers.join(", ")),
        run = escape(&found.id),
        step = escape(step),
    );
    for f in &a.artifacts {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&f.path),
            airlock_model::format_size(f.size),
            escape(&f.sha256)
        );
    }
    body.push_str("</table>");
    for d in &a.decisions {
        let _ = write!(
            body,
            "<p>{} {} {}</p>",
            escape(&d.user),
            if d.approve { "approved" } else { "denied" },
            d.reason.as_deref().map(|r| format!("— {}", escape(r))).unwrap_or_default()
        );
    }
    body.push_str("</div>");
    if a.state == airlock_store::ApprovalState::Pending {
        if Need::Approver.allows(&user.roles) {
            let _ = write!(
                body,
                "<form id=\"decide\" data-run=\"{}\" data-step=\"{}\"><p>One-time code (from the person who started \
                 the run): <input id=\"code\" autocomplete=\"off\" size=\"24\"></p><p>Reason: <input id=\"reason\" \
                 size=\"50\"></p><p><button type=\"button\" id=\"approve\">Approve</button><button type=\"button\" \
                 id=\"deny\">Deny</button></p><p id=\"result\"></p></form>",
                escape(&found.id),
                escape(step)
            );
        } else {
            let _ = write!(body, "<p>User <b>{}</b> may not decide approvals.</p>", escape(&user.name));
        }
    }
    page(&format!("Approve deploy to {}", a.environment), &body, false)
}
