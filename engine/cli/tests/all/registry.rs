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
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect("Debian's docker-registry is not installed; .ci/test-setup installs it (apt-get install docker-registry)");
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    dir.path().join("data").display()
                ),
            )
            .expect("config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
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
                let up = ureq::get(&format!("http://{addr}/v2/")).call().is_ok_and(|r| r.status() == 200);
                if up {
                    return Self { child, addr, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start: {log}");
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

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
