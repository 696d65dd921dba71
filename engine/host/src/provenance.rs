//! Signed provenance: an in-toto Statement (v1) with a SLSA Provenance
//! (v1) predicate, in a DSSE envelope signed with ed25519.
//!
//! The statement says which files (its subjects, by sha256) a run made,
//! from what (the pipeline, its parameters, what started it, the commit,
//! every plugin, tool and source by digest) and when, and who says so
//! (the builder id of the admin policy). The envelope signs the
//! statement's exact bytes with the Pre-Authentication Encoding of DSSE
//! v1, so any DSSE implementation verifies it with the public key.
//!
//! The signing key is the admin policy's, read from where the policy
//! says (an environment variable of the engine, or a file), as PKCS#8 PEM
//! (`openssl genpkey -algorithm ed25519`). It lives in the host: no step
//! sees it, no log or record holds it.

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The payload type of an in-toto statement in a DSSE envelope.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What airlock's statements call their build type; the book's
/// provenance page says what its parameters mean.
pub const BUILD_TYPE: &str = "urn:airlock:build-type:pipeline:v1";

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): what
/// comes before the 32 bytes of the key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why provenance could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The signing key is not an ed25519 PKCS#8 key.
    #[error(
        "the signing key is not an ed25519 private key in PKCS#8 PEM ({0}); make one with `openssl genpkey -algorithm ed25519`"
    )]
    BadKey(String),
    /// A public key that is not an ed25519 one.
    #[error("not an ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`): {0}")]
    BadPublicKey(String),
    /// The envelope is not a DSSE envelope of an in-toto statement.
    #[error("not a DSSE envelope of an in-toto statement: {0}")]
    Malformed(String),
    /// No signature verifies with the key.
    #[error("no signature of the envelope verifies with the key {keyid}: it was changed, or signed with another key")]
    BadSignature {
        /// The key's id.
        keyid: String,
    },
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The statement, base64.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Its signatures.
    pub signatures: Vec<Signature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The key's id: the sha256 (hex) of its 32 public bytes.
    pub keyid: String,
    /// The ed25519 signature of the PAE, base64.
    pub sig: String,
}

/// DSSE v1's Pre-Authentication Encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The id airlock gives an ed25519 public key.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))
}

/// The policy's signing key, ready to sign.
pub struct Signer {
    pair: Ed25519KeyPair,
    keyid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("keyid", &self.keyid).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a PKCS#8 PEM private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ProvenanceError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| ProvenanceError::BadKey(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| ProvenanceError::BadKey(e.to_string()))?;
        let keyid = key_id(pair.public_key().as_ref());
        Ok(Self { pair, keyid })
    }

    /// The key's id.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), for
    /// verifiers.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// The statement, signed in an envelope.
    pub fn sign(&self, statement: &serde_json::Value) -> Envelope {
        let body = serde_json::to_vec(statement).unwrap_or_default();
        let sig = self.pair.sign(&pae(PAYLOAD_TYPE, &body));
        let b64 = base64::engine::general_purpose::STANDARD;
        Envelope {
            payload: b64.encode(&body),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![Signature { keyid: self.keyid.clone(), sig: b64.encode(sig.as_ref()) }],
        }
    }
}

/// The 32 bytes of an ed25519 public key in PEM.
pub fn public_key_from_pem(pem: &[u8]) -> Result<Vec<u8>, ProvenanceError> {
    let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|e| ProvenanceError::BadPublicKey(e.to_string()))?;
    let bytes: &[u8] = der.as_ref();
    match bytes.strip_prefix(&SPKI_PREFIX[..]) {
        Some(key) if key.len() == 32 => Ok(key.to_vec()),
        _ => Err(ProvenanceError::BadPublicKey("it is a key of another algorithm".into())),
    }
}

/// An in-toto statement of `subjects` (`(name, sha256)`) with a SLSA
/// provenance predicate.
pub fn statement(subjects: &[(String, String)], predicate: serde_json::Value) -> serde_json::Value {
    let subject: Vec<serde_json::Value> = subjects
        .iter()
        .map(|(name, sha256)| serde_json::json!({ "name": name, "digest": { "sha256": sha256 } }))
        .collect();
    serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    })
}

/// Checks an envelope (its JSON text) against a public key; answers the
/// statement it signs.
pub fn verify(text: &[u8], public: &[u8]) -> Result<serde_json::Value, ProvenanceError> {
    let envelope: Envelope = serde_json::from_slice(text)
        .map_err(|e| ProvenanceError::Malformed(format!("not JSON of an envelope: {e}")))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(ProvenanceError::Malformed(format!("its payload type is `{}`", envelope.payload_type)));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.decode(&envelope.payload).map_err(|e| ProvenanceError::Malformed(format!("payload: {e}")))?;
    let signed = pae(&envelope.payload_type, &body);
    let key = UnparsedPublicKey::new(&ED25519, public);
    let good =
        envelope.signatures.iter().filter_map(|s| b64.decode(&s.sig).ok()).any(|sig| key.verify(&signed, &sig).is_ok());
    if !good {
        return Err(ProvenanceError::BadSignature { keyid: key_id(public) });
    }
    let statement: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ProvenanceError::Malformed(format!("statement: {e}")))?;
    if statement["_type"] != STATEMENT_TYPE {
        return Err(ProvenanceError::Malformed(format!("its statement type is {}", statement["_type"])));
    }
    Ok(statement)
}

/// The `(name, sha256)` subjects of a statement.
pub fn subjects(statement: &serde_json::Value) -> Vec<(String, String)> {
    statement["subject"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["digest"]["sha256"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// RFC 3339 (UTC, seconds) of a time in ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        Signer::from_pem(format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n").as_bytes())
            .expect("signer")
    }

    #[test]
    fn the_pae_is_dsses() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn an_envelope_verifies_and_a_changed_one_does_not() {
        let signer = signer();
        let public = public_key_from_pem(signer.public_pem().as_bytes()).expect("public key");
        let statement = statement(&[("a.tar.gz".into(), "ab".repeat(32))], serde_json::json!({}));
        let envelope = signer.sign(&statement);
        let text = serde_json::to_vec(&envelope).expect("JSON");
        assert_eq!(verify(&text, &public).expect("verifies"), statement);
        assert_eq!(envelope.signatures[0].keyid, signer.keyid());
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut changed = statement.clone();
        changed["subject"][0]["digest"]["sha256"] = "cd".repeat(32).into();
        let forged = Envelope { payload: b64.encode(serde_json::to_vec(&changed).expect("JSON")), ..envelope };
        let e = verify(&serde_json::to_vec(&forged).expect("JSON"), &public).expect_err("forged");
        assert!(matches!(e, ProvenanceError::BadSignature { .. }), "{e}");
        let other = public_key_from_pem(self::signer().public_pem().as_bytes()).expect("public key");
        assert!(verify(&text, &other).is_err(), "another key verified it");
    }
}
