//! Webhook intake of `airlock serve`: GitHub's own example payloads,
//! signed as GitHub signs them, and what an attacker would send instead.

use crate::support::{Scratch, Server, http, repo};

const SECRET: &str = "canary-webhook-secret-8d2e";

fn sign(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body)))
}

/// The first example of `event` in `@octokit/webhooks-examples` that
/// `pick` accepts.
fn example(event: &str, pick: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let index = repo().join("target/tools/octokit/node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let text = std::fs::read(&index).unwrap_or_else(|e| panic!("{}: {e}; run `bash .ci/test-setup`", index.display()));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&text).expect("JSON");
    let found = all.into_iter().find(|e| e["name"] == event).expect("event");
    found["examples"].as_array().expect("examples").iter().find(|e| pick(e)).expect("an example").clone()
}

/// Delivers `body` as GitHub would; answers status and body.
fn deliver(url: &str, event: &str, id: &str, body: &[u8], signature: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = ureq::http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id);
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    let resp = http().run(req.body(body.to_vec()).expect("request")).expect("deliver");
    let status = resp.status().as_u16();
    let text = resp.into_body().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn start(scratch: &Scratch) -> Server {
    let policy = scratch.file(
        "policy.yaml",
        "repositories:\n  hello:\n    forge: github\n    url: https://github.com/Codertocat/Hello-World.git\n    \
         webhook_secret: { env: HELLO_WEBHOOK_SECRET }\n    trusted: { branches: [master] }\n",
    );
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).expect("mkdir");
    Server::start(&scratch.state(), &policy, &pipelines, &[("HELLO_WEBHOOK_SECRET", SECRET)])
}

#[test]
fn a_signed_delivery_is_recorded_once_and_a_bad_one_not_at_all() {
    let scratch = Scratch::new();
    let mut server = start(&scratch);
    let url = format!("{}/hooks/hello", server.url);
    let push = serde_json::to_vec(&example("push", |e| e["ref"] == "refs/heads/master")).expect("JSON");

    // Refused before anything is recorded: no signature, a wrong one, a
    // signature of another body.
    let other = sign(b"{}");
    for signature in [None, Some("sha256=00"), Some(other.as_str())] {
        let (status, answer) = deliver(&url, "push", "delivery-1", &push, signature);
        assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("bad_signature")), "{answer}");
    }
    // So the same delivery id, signed, is new.
    let (status, answer) = deliver(&url, "push", "delivery-1", &push, Some(&sign(&push)));
    assert_eq!(status, 202, "{answer}");
    assert_eq!((answer["state"].as_str(), answer["duplicate"].as_bool()), (Some("received"), Some(false)));
    // A replay (or the forge's retry) is a duplicate.
    let (status, answer) = deliver(&url, "push", "delivery-1", &push, Some(&sign(&push)));
    assert_eq!((status, answer["duplicate"].as_bool()), (202, Some(true)), "{answer}");

    // An event airlock does not run on is acknowledged, and ignored.
    let ping = serde_json::to_vec(&example("ping", |_| true)).expect("JSON");
    let (status, answer) = deliver(&url, "ping", "delivery-2", &ping, Some(&sign(&ping)));
    assert_eq!((status, answer["state"].as_str()), (202, Some("ignored")), "{answer}");
    // A deleted branch starts nothing either.
    let deleted = serde_json::to_vec(&example("push", |e| e["deleted"] == true)).expect("JSON");
    let (_, answer) = deliver(&url, "push", "delivery-3", &deleted, Some(&sign(&deleted)));
    assert_eq!(answer["state"].as_str(), Some("ignored"), "{answer}");

    // Signed, but with a ref git would refuse: a clear 400.
    let mut bad = example("push", |e| e["ref"] == "refs/heads/master");
    bad["ref"] = "refs/heads/../../etc\u{1b}[2J".into();
    let bad = serde_json::to_vec(&bad).expect("JSON");
    let (status, answer) = deliver(&url, "push", "delivery-4", &bad, Some(&sign(&bad)));
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("bad_delivery")), "{answer}");

    // 25 MiB is refused from its declared length, before a byte of it
    // is sent.
    {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        let head = format!(
            "POST /hooks/hello HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: delivery-5\r\n\
             X-Hub-Signature-256: sha256=00\r\nContent-Length: {}\r\n\r\n",
            25 << 20
        );
        stream.write_all(head.as_bytes()).expect("send");
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).expect("answer");
        assert_eq!(&answer, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&answer));
    }
    // Another repository, or a GET: not taken.
    let (status, _) = deliver(&format!("{}/hooks/nope", server.url), "push", "d", &push, Some(&sign(&push)));
    assert_eq!(status, 404);
    let resp = http().get(&url).call().expect("get");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));

    // The server is still fine, and what it recorded survives it.
    server.stop();
    let store = airlock_store::Store::open(&scratch.state()).expect("store");
    let recorded: Vec<(String, String)> =
        store.deliveries().expect("deliveries").into_iter().map(|d| (d.id, d.state.as_str().to_owned())).collect();
    assert_eq!(
        recorded,
        [
            ("delivery-1".to_owned(), "received".to_owned()),
            ("delivery-2".to_owned(), "ignored".to_owned()),
            ("delivery-3".to_owned(), "ignored".to_owned()),
        ]
    );
    // The secret is in nothing the server wrote.
    for file in crate::support::files_below(&scratch.state()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(memchr::memmem::find(&bytes, SECRET.as_bytes()).is_none(), "{} holds the secret", file.display());
    }
}
