//! A real OCI registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry 2.8), its storage in a temporary directory.
//! Images are pushed with the distribution API's own requests, written
//! out here, so the client airlock pulls with is not also the one that
//! pushed.

use sha2::{Digest, Sha256};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry process, stopped when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

/// `sha256:HEX` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr) = launch(dir.path(), "");
        Self { child, addr, _dir: dir }
    }

    /// Starts the registry again on the same storage, now taking only
    /// bearer tokens that `tokens` signed, as registries that hand out
    /// anonymous pull tokens (ghcr.io, Docker Hub) do.
    pub fn require_tokens(&mut self, tokens: &TokenService) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm,
            TokenService::SERVICE,
            TokenService::ISSUER,
            tokens.cert.display()
        );
        let (child, addr) = launch(self._dir.path(), &auth);
        (self.child, self.addr) = (child, addr);
    }

    /// Uploads a blob to `repo`; returns its digest.
    pub fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = digest(bytes);
        let start =
            ureq::post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.addr)).send_empty().expect("start upload");
        assert_eq!(start.status(), 202);
        let location = start.headers().get("location").and_then(|v| v.to_str().ok()).expect("location").to_owned();
        let location = if location.starts_with('/') { format!("http://{}{location}", self.addr) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let done = ureq::put(&format!("{location}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .expect("upload");
        assert_eq!(done.status(), 201);
        digest
    }

    /// Puts a manifest (or index) of `media_type` at `repo:tag`; returns
    /// its digest and size.
    pub fn manifest(&self, repo: &str, tag: &str, media_type: &str, body: &serde_json::Value) -> (String, usize) {
        let bytes = serde_json::to_vec(body).expect("json");
        let answer = ureq::put(&format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .header("content-type", media_type)
            .send(&bytes[..])
            .expect("put manifest");
        assert_eq!(answer.status(), 201);
        (digest(&bytes), bytes.len())
    }

    /// Pushes an image of one layer at `repo:tag` the way `wkg` pushes a
    /// WebAssembly module or component: a `application/vnd.wasm.config.v0+json`
    /// config and one `application/wasm` layer. Returns the manifest's
    /// digest and size.
    pub fn push_wasm(&self, repo: &str, tag: &str, wasm: &[u8]) -> (String, usize) {
        let layer = self.blob(repo, wasm);
        let config = serde_json::json!({ "architecture": "wasm", "os": "wasip1", "layerDigests": [layer] });
        self.image(repo, tag, "application/vnd.wasm.config.v0+json", &config, &[("application/wasm", wasm)])
    }

    /// Pushes an image at `repo:tag` with a config of `config_type` and
    /// the layers given by media type and bytes.
    pub fn image(
        &self,
        repo: &str,
        tag: &str,
        config_type: &str,
        config: &serde_json::Value,
        layers: &[(&str, &[u8])],
    ) -> (String, usize) {
        let config = serde_json::to_vec(config).expect("json");
        let config_digest = self.blob(repo, &config);
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(media_type, bytes)| {
                let digest = self.blob(repo, bytes);
                serde_json::json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": layers,
        });
        self.manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", &manifest)
    }
}

/// Runs `docker-registry` on `dir`'s storage, with `extra` config, on a
/// free loopback port; answers it once it answers.
fn launch(dir: &std::path::Path, extra: &str) -> (Child, String) {
    let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect(
            "Debian's docker-registry is not installed; .ci/test-setup installs it (apt-get install docker-registry)",
        );
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
                dir.join("data").display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("log");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            // With token auth, `/v2/` answers 401 and a challenge.
            let up = ureq::get(&format!("http://{addr}/v2/"))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401));
            if up {
                return (child, addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    panic!("docker-registry did not start: {log}");
}

/// A token service as the distribution spec's token authentication
/// describes it: `GET REALM?service=…&scope=repository:NAME:pull` answers
/// a JWT (ES256, its certificate in `x5c`) that grants what the scope
/// asks, to anyone (anonymous pulls). The registry checks it against
/// the certificate it was given.
pub struct TokenService {
    /// Where clients ask for tokens.
    pub realm: String,
    /// The signing certificate, PEM.
    pub cert: std::path::PathBuf,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TokenService {
    /// The registry's name in tokens (`aud`).
    pub const SERVICE: &str = "airlock-test-registry";
    /// Who signs them (`iss`).
    pub const ISSUER: &str = "airlock-test-tokens";

    /// A key and a self-signed certificate made with `openssl`, and a
    /// loopback server that signs tokens with them.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"]);
        openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der"]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=airlock-test-tokens",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ]);
        openssl(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = std::fs::read(dir.path().join("key.der")).expect("key");
        let key =
            ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .expect("an ES256 key");
        let cert = std::fs::read(dir.path().join("cert.der")).expect("cert");
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let realm = format!("http://{}/token", server.server_addr().to_ip().expect("ip"));
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        std::thread::spawn(move || {
            use base64::Engine as _;
            let (b64, url) =
                (base64::engine::general_purpose::STANDARD, base64::engine::general_purpose::URL_SAFE_NO_PAD);
            for req in server.incoming_requests() {
                let query = req.url().split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
                seen.lock().expect("lock").push(query.clone());
                let scope =
                    query.split('&').find_map(|p| p.strip_prefix("scope=")).map(percent_decode).unwrap_or_default();
                let access: Vec<serde_json::Value> = scope
                    .split(' ')
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
                    })
                    .collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
                let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [b64.encode(&cert)] });
                let claims = serde_json::json!({
                    "iss": Self::ISSUER, "sub": "", "aud": Self::SERVICE, "exp": now + 300, "nbf": now - 10,
                    "iat": now, "jti": hex::encode(rand::random::<[u8; 8]>()), "access": access,
                });
                let signed = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
                let signature = key.sign(&ring::rand::SystemRandom::new(), signed.as_bytes()).expect("sign");
                let token = format!("{signed}.{}", url.encode(signature.as_ref()));
                let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 });
                let _ = req.respond(
                    tiny_http::Response::from_string(body.to_string())
                        .with_header("content-type: application/json".parse::<tiny_http::Header>().expect("header")),
                );
            }
        });
        Self { realm, cert: dir.path().join("cert.pem"), asked, _dir: dir }
    }

    /// The query of every token request so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

/// A query value with its `%XX` escapes (and `+` for space) undone.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
