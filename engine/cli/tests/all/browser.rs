//! The web pages, end to end in headless Chromium (Debian's `chromium`
//! and `chromium-driver`, driven over WebDriver): sign in, the list of
//! runs, a run with its DAG, a log followed while its step writes it, and
//! a deployment approved from the approval page with the one-time code.
//!
//! Screenshots of each page are kept in `target/tmp/screenshots/`.

use crate::server::tick;
use crate::support::{Scratch, Server, approval_code, call, http, submit_run, user_token, wait_for_end};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        assert!(
            Path::new(CHROMEDRIVER).is_file() && Path::new(CHROMIUM).is_file(),
            "the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver \
             (.ci/test-setup does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            // The machine has no network: without these, Chromium keeps
            // trying to reach Google's services.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.expect("text")
}

/// Waits until the element's text satisfies `ok`.
async fn wait_text(client: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && ok(&t)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "{css} never showed what was expected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn pages_show_runs_and_a_deploy_is_approved_from_the_browser() {
    let s = Scratch::new();
    let (alice, bob) = (user_token(s.path()), user_token(s.path()));
    // The deploy target: what it receives comes back on a channel.
    let receiver = tiny_http::Server::http("127.0.0.1:0").expect("receiver");
    let target = format!("http://{}/deploy", receiver.server_addr().to_ip().expect("ip"));
    let (tx, received) = mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for mut req in receiver.incoming_requests() {
            let mut body = Vec::new();
            let _ = req.as_reader().read_to_end(&mut body);
            let _ = tx.send((req.url().to_owned(), body));
            let _ = req.respond(tiny_http::Response::from_string("ok").with_status_code(201));
        }
    });
    let policy = s.file(
        "policy.yaml",
        format!(
            "users:\n  alice: {{ token_sha256: {}, roles: [runner] }}\n  bob: {{ token_sha256: {}, roles: [approver] }}\n\
             groups:\n  approvers: [bob]\n\
             environments:\n  staging:\n    provider: {{ type: http, url: '{target}' }}\n    pipelines: [web]\n    \
             approvals: {{ required: 1, groups: [approvers], timeout: 10m }}\n",
            alice.digest, bob.digest
        ),
    );
    let tick = tick();
    s.file(
        "pipes/web.yaml",
        format!(
            "name: web\nsteps:\n  build:\n    uses: {tick}\n    args: [\"3\", \"10\", site.txt]\n    outputs: [site.txt]\n  \
             slow:\n    uses: {tick}\n    args: [\"300\", \"100\"]\n  \
             ship:\n    needs: [build]\n    deploy: {{ environment: staging, from: [build] }}\n"
        ),
    );
    let server = Server::start(&s.state(), &policy, &s.path().join("pipes"), &[]);
    let (agent, url) = (http(), server.url.clone());
    let id = submit_run(&agent, &url, &alice.token, "web.yaml");
    // alice, who started the run, is shown the one-time code.
    let code = approval_code(&agent, &url, &alice.token, &id, "ship");
    let (status, pending) =
        call(&agent, "GET", &format!("{url}/api/v1/approvals"), Some(&bob.token), None, &[]).expect("list");
    assert_eq!(
        (status, &pending["pending"][0]["run"], &pending["pending"][0]["step"]),
        (200, &json!(id), &json!("ship"))
    );
    assert!(pending["pending"][0].get("code").is_none(), "{pending}");
    let (_, as_bob) =
        call(&agent, "GET", &format!("{url}/api/v1/runs/{id}"), Some(&bob.token), None, &[]).expect("get");
    assert_eq!(as_bob["codes"], json!({}), "the code is shown to the requester only");
    let (_, listed) = call(&agent, "GET", &format!("{url}/api/v1/runs/{id}/artifacts"), Some(&bob.token), None, &[])
        .expect("artifacts");
    let digest = listed["artifacts"][0]["sha256"].as_str().expect("digest").to_owned();

    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = browser(&driver, profile.path()).await;
        // Signing in.
        client.goto(&format!("{url}/ui")).await.expect("goto");
        assert!(client.current_url().await.expect("url").as_str().ends_with("/ui/login"));
        client.find(Locator::Id("token")).await.expect("token field").send_keys("alu_wrong").await.expect("type");
        client.find(Locator::Id("sign-in")).await.expect("button").click().await.expect("click");
        wait_text(&client, "body", |t| t.contains("no user's")).await;
        client.find(Locator::Id("token")).await.expect("token field").send_keys(&bob.token).await.expect("type");
        client.find(Locator::Id("sign-in")).await.expect("button").click().await.expect("click");
        let runs = wait_text(&client, "#runs", |t| t.contains(&id)).await;
        assert!(runs.contains("web") && runs.contains("alice"), "{runs}");
        shoot(&client, "runs.png").await;

        // The run: its DAG, each step's state, the request waiting.
        client.goto(&format!("{url}/ui/runs/{id}")).await.expect("goto");
        let steps = client.find_all(Locator::Css("#dag g.step")).await.expect("dag");
        assert_eq!(steps.len(), 3);
        let mut drawn = Vec::new();
        for g in &steps {
            drawn.push((g.attr("data-step").await.expect("attr"), g.attr("data-state").await.expect("attr")));
        }
        assert!(drawn.contains(&(Some("build".into()), Some("succeeded".into()))), "{drawn:?}");
        assert!(drawn.contains(&(Some("ship".into()), Some("running".into()))), "{drawn:?}");
        let edges = client.find_all(Locator::Css("#dag line")).await.expect("edges");
        assert_eq!(edges.len(), 1, "build -> ship");
        let artifacts = text(&client, "#artifacts").await;
        assert!(artifacts.contains("site.txt") && artifacts.contains(&digest), "{artifacts}");
        shoot(&client, "run.png").await;

        // A log, followed while its step writes it.
        client.goto(&format!("{url}/ui/runs/{id}/steps/slow/log")).await.expect("goto");
        wait_text(&client, "#log", |t| t.contains("tick 3")).await;
        let (_, detail) =
            call(&agent, "GET", &format!("{url}/api/v1/runs/{id}"), Some(&bob.token), None, &[]).expect("get");
        let slow = detail["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "slow").cloned();
        assert_eq!(slow.expect("slow")["state"], "running", "the log was not live");
        // The page follows the log without being reloaded.
        wait_text(&client, "#log", |t| t.contains("tick 8")).await;
        shoot(&client, "log.png").await;

        // The approval page shows what will be deployed, and takes the code.
        client.goto(&format!("{url}/ui/runs/{id}")).await.expect("goto");
        client.find(Locator::Css("a.approval")).await.expect("link").click().await.expect("click");
        assert_eq!(text(&client, "#environment").await, "staging");
        assert_eq!(text(&client, "#target").await, target);
        let what = text(&client, "#deploy-artifacts").await;
        assert!(what.contains("site.txt") && what.contains(&digest), "{what}");
        client.find(Locator::Id("code")).await.expect("code").send_keys("not-the-code").await.expect("type");
        client.find(Locator::Id("approve")).await.expect("approve").click().await.expect("click");
        wait_text(&client, "#result", |t| t.contains("code")).await;
        let code_field = client.find(Locator::Id("code")).await.expect("code");
        code_field.clear().await.expect("clear");
        code_field.send_keys(&code).await.expect("type");
        client.find(Locator::Id("reason")).await.expect("reason").send_keys("looks right").await.expect("type");
        shoot(&client, "approval.png").await;
        client.find(Locator::Id("approve")).await.expect("approve").click().await.expect("click");
        let result = wait_text(&client, "#result", |t| t.contains("Approved")).await;
        assert!(result.contains("approved"), "{result}");
        shoot(&client, "approved.png").await;
        // Signing out ends the session on the server too.
        client.find(Locator::Id("sign-out")).await.expect("sign out").click().await.expect("click");
        client.goto(&format!("{url}/ui/runs/{id}")).await.expect("goto");
        assert!(client.current_url().await.expect("url").as_str().ends_with("/ui/login"));
        client.close().await.expect("close");
    });

    let detail = wait_for_end(&agent, &url, &bob.token, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let approval = &detail["approvals"][0];
    assert_eq!((&approval["state"], &approval["decisions"][0]["user"]), (&json!("approved"), &json!("bob")));
    let (path, body) = received.recv_timeout(Duration::from_secs(10)).expect("the deployment arrived");
    assert_eq!((path.as_str(), body.as_slice()), ("/deploy/site.txt", b"tick 1\ntick 2\ntick 3\n".as_slice()));
}
