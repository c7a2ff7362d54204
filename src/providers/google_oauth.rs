//! Google Application Default Credentials for Vertex AI (`auth = "google_oauth"`).
//!
//! Sources, in ADC order: the JSON in `VERTEX_CREDENTIALS_JSON`, the file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's default file
//! (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`/`application_default_credentials.json`), then
//! the metadata server (`GCE_METADATA_HOST`, default `metadata.google.internal`). A file
//! holds a service account (a JWT signed RS256 with its key, exchanged at its `token_uri`,
//! RFC 7523) or an authorized user (`gcloud auth application-default login`: its refresh
//! token exchanged at the token endpoint).
//!
//! Hand-written on purpose: `gcp_auth` cannot read an authorized-user file named by
//! `GOOGLE_APPLICATION_CREDENTIALS` nor point any source at another endpoint, and
//! `google-cloud-auth` brings a second HTTP/TLS stack (reqwest 0.13, aws-lc); this code
//! uses the gateway's own client and is tested against mocks of every source.
//!
//! The request path never waits on Google: [`GoogleOauth::sign`] only reads the cached
//! token (an `ArcSwap`) and reports `NotReady` before the first fetch; the credential
//! refresher background service calls [`GoogleOauth::refresh`] when [`refresh_in`]
//! says so, five minutes before the token expires.
//!
//! [`refresh_in`]: crate::providers::Signer::refresh_in

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ProviderProfile, Secret, SignError, Signer};
use crate::upstream::UpstreamRequest;

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Env var naming the key file (Google's standard name).
pub const CREDENTIALS_FILE_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// Env var holding the key JSON itself (containers without a file).
pub const CREDENTIALS_JSON_ENV: &str = "VERTEX_CREDENTIALS_JSON";
/// Env var overriding the metadata server's host (Google's standard name).
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
const METADATA_HOST: &str = "metadata.google.internal";
/// gcloud's ADC file, under `$CLOUDSDK_CONFIG` or `~/.config/gcloud`.
const GCLOUD_ADC_FILE: &str = "application_default_credentials.json";
/// Form values: everything but RFC 3986's unreserved characters is escaped.
const FORM_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Lifetime asked for in the JWT (Google's maximum).
const JWT_LIFETIME: u64 = 3600;
/// Refresh this long before the access token expires.
const REFRESH_AHEAD: u64 = 300;
/// A token this close to expiry is not used for new requests.
const MIN_LEFT: u64 = 10;
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// gcloud's application-default credentials file (it may not exist).
fn gcloud_adc_file() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("CLOUDSDK_CONFIG").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config/gcloud"),
    };
    Some(dir.join(GCLOUD_ADC_FILE))
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// A parsed service-account key.
pub struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: String,
    scope: String,
    project_id: Option<String>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .field("key", &"***")
            .finish()
    }
}

/// PEM (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`) → key pair.
fn parse_pem(pem: &str) -> Result<RsaKeyPair, SignError> {
    let bad = |m: &str| SignError::Credential(format!("service-account private_key: {m}"));
    let (label, rest) = if let Some(i) = pem.find("-----BEGIN PRIVATE KEY-----") {
        ("PRIVATE KEY", &pem[i + 27..])
    } else if let Some(i) = pem.find("-----BEGIN RSA PRIVATE KEY-----") {
        ("RSA PRIVATE KEY", &pem[i + 31..])
    } else {
        return Err(bad("no PEM private key block"));
    };
    let end = rest
        .find("-----END ")
        .ok_or_else(|| bad("unterminated PEM block"))?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|_| bad("PEM body is not base64"))?;
    let key = if label == "PRIVATE KEY" {
        RsaKeyPair::from_pkcs8(&der)
    } else {
        RsaKeyPair::from_der(&der)
    };
    // ring's error says only what was wrong, never the key material.
    key.map_err(|e| bad(&format!("not a usable RSA key ({e})")))
}

impl ServiceAccount {
    /// Parse a key file's JSON. Errors never echo the file's content.
    pub fn from_json(text: &str) -> Result<ServiceAccount, SignError> {
        let k: KeyFile = serde_json::from_str(text).map_err(|e| {
            SignError::Credential(format!(
                "service-account key is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if let Some(kind) = k.kind.as_deref() {
            if kind != "service_account" {
                return Err(SignError::Credential(format!(
                    "credentials of type '{kind}' are not supported; use a service-account key"
                )));
            }
        }
        let email = k.client_email.filter(|e| !e.is_empty()).ok_or_else(|| {
            SignError::Credential("service-account key has no client_email".into())
        })?;
        let pem = k.private_key.ok_or_else(|| {
            SignError::Credential("service-account key has no private_key".into())
        })?;
        Ok(ServiceAccount {
            email,
            key_id: k.private_key_id.filter(|s| !s.is_empty()),
            key: parse_pem(&pem)?,
            token_uri: k
                .token_uri
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            scope: SCOPE.to_string(),
            project_id: k.project_id,
        })
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The signed JWT assertion for the token exchange, issued at `iat`.
    pub fn assertion(&self, iat: u64, rng: &SystemRandom) -> Result<String, SignError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = Value::String(kid.clone());
        }
        let claims = json!({
            "iss": self.email,
            "scope": self.scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + JWT_LIFETIME,
        });
        let mut jwt = String::with_capacity(1024);
        jwt.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, rng, jwt.as_bytes(), &mut sig)
            .map_err(|_| SignError::Credential("RS256 signing failed".into()))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

/// An `authorized_user` credentials file (`gcloud auth application-default login`).
pub struct AuthorizedUser {
    client_id: String,
    client_secret: Secret,
    refresh_token: Secret,
    token_uri: String,
}

impl AuthorizedUser {
    fn from_key(k: KeyFile) -> Result<AuthorizedUser, SignError> {
        let need = |v: Option<String>, what: &str| {
            v.filter(|s| !s.is_empty()).ok_or_else(|| {
                SignError::Credential(format!("authorized_user credentials have no {what}"))
            })
        };
        Ok(AuthorizedUser {
            client_id: need(k.client_id, "client_id")?,
            client_secret: Secret::new(need(k.client_secret, "client_secret")?),
            refresh_token: Secret::new(need(k.refresh_token, "refresh_token")?),
            token_uri: k
                .token_uri
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
        })
    }
}

/// Where access tokens come from.
pub enum Source {
    // Boxed: the parsed RSA key is large.
    ServiceAccount(Box<ServiceAccount>),
    AuthorizedUser(AuthorizedUser),
    /// The metadata server's default service account (GCE, GKE, Cloud Run).
    Metadata {
        host: String,
    },
}

impl Source {
    /// A credentials JSON document: a service account or an authorized user.
    pub fn from_json(text: &str) -> Result<Source, SignError> {
        let k: KeyFile = serde_json::from_str(text).map_err(|e| {
            SignError::Credential(format!(
                "credentials are not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        match k.kind.as_deref() {
            Some("authorized_user") => Ok(Source::AuthorizedUser(AuthorizedUser::from_key(k)?)),
            _ => ServiceAccount::from_json(text).map(|a| Source::ServiceAccount(Box::new(a))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::ServiceAccount(a) => format!("service account {}", a.email),
            Source::AuthorizedUser(_) => "authorized user (gcloud application-default)".into(),
            Source::Metadata { host } => format!("metadata server {host}"),
        }
    }
}

struct Token {
    value: Secret,
    expires_at: u64,
}

/// ADC signer: `Authorization: Bearer <access token>`.
pub struct GoogleOauth {
    source: Source,
    token: ArcSwapOption<Token>,
    rng: SystemRandom,
    /// One token exchange at a time, however many callers ask.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for GoogleOauth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoogleOauth")
            .field("source", &self.source.describe())
            .field("has_token", &self.token.load().is_some())
            .finish()
    }
}

impl GoogleOauth {
    pub fn new(account: ServiceAccount) -> GoogleOauth {
        GoogleOauth::with_source(Source::ServiceAccount(Box::new(account)))
    }

    pub fn with_source(source: Source) -> GoogleOauth {
        GoogleOauth {
            source,
            token: ArcSwapOption::empty(),
            rng: SystemRandom::new(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// From a profile, in ADC order: `extra.credentials_json` / `extra.credentials_file`
    /// (usually `${...}` references to the standard variables), gcloud's default file, the
    /// metadata server. `extra.token_uri` and `extra.oauth_scope` override a file's token
    /// endpoint and the scope. Reads files only: no network I/O here.
    pub fn from_profile(profile: &ProviderProfile) -> Result<GoogleOauth, SignError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let read = |file: &str| {
            std::fs::read_to_string(file).map_err(|e| {
                SignError::Credential(format!("cannot read credentials file {file}: {e}"))
            })
        };
        let json = match profile
            .extra
            .credentials_json
            .as_deref()
            .map(str::to_string)
            .or_else(|| env(CREDENTIALS_JSON_ENV))
        {
            Some(j) => Some(j),
            None => match profile
                .extra
                .credentials_file
                .as_deref()
                .map(str::to_string)
                .or_else(|| env(CREDENTIALS_FILE_ENV))
            {
                Some(file) => Some(read(&file)?),
                None => match gcloud_adc_file().filter(|p| p.is_file()) {
                    Some(p) => Some(read(&p.display().to_string())?),
                    None => None,
                },
            },
        };
        let mut source = match json {
            Some(j) => Source::from_json(&j)?,
            None => Source::Metadata {
                host: env(METADATA_HOST_ENV).unwrap_or_else(|| METADATA_HOST.to_string()),
            },
        };
        if let Some(uri) = profile.extra.token_uri.as_deref() {
            match &mut source {
                Source::ServiceAccount(a) => a.token_uri = uri.to_string(),
                Source::AuthorizedUser(u) => u.token_uri = uri.to_string(),
                Source::Metadata { .. } => {}
            }
        }
        if let (Some(scope), Source::ServiceAccount(a)) =
            (profile.extra.oauth_scope.as_deref(), &mut source)
        {
            a.scope = scope.to_string();
        }
        Ok(GoogleOauth::with_source(source))
    }

    /// The service account, when that is the source.
    pub fn account(&self) -> Option<&ServiceAccount> {
        match &self.source {
            Source::ServiceAccount(a) => Some(a.as_ref()),
            _ => None,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    fn fresh_token(&self, now: u64) -> Option<Arc<Token>> {
        self.token
            .load_full()
            .filter(|t| t.expires_at > now + MIN_LEFT)
    }

    async fn fetch(&self) -> Result<(), SignError> {
        let now = now_secs();
        let form_headers = || {
            vec![
                (
                    "content-type".to_string(),
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept".to_string(), "application/json".to_string()),
            ]
        };
        let (method, url, headers, body) = match &self.source {
            Source::ServiceAccount(a) => {
                let assertion = a.assertion(now, &self.rng)?;
                // The assertion is base64url and dots: nothing to escape.
                let form = format!(
                    "grant_type={}&assertion={assertion}",
                    GRANT_TYPE.replace(':', "%3A")
                );
                (
                    "POST",
                    a.token_uri.clone(),
                    form_headers(),
                    Bytes::from(form),
                )
            }
            Source::AuthorizedUser(u) => {
                let enc =
                    |v: &str| percent_encoding::utf8_percent_encode(v, FORM_VALUE).to_string();
                let form = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    enc(&u.client_id),
                    enc(u.client_secret.expose()),
                    enc(u.refresh_token.expose())
                );
                (
                    "POST",
                    u.token_uri.clone(),
                    form_headers(),
                    Bytes::from(form),
                )
            }
            Source::Metadata { host } => (
                "GET",
                format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token"),
                vec![("metadata-flavor".to_string(), "Google".to_string())],
                Bytes::new(),
            ),
        };
        let (status, body) = crate::upstream::oneshot(method, &url, &headers, body, TOKEN_TIMEOUT)
            .await
            .map_err(|e| {
                SignError::Credential(format!(
                    "Google token request ({}) failed: {e}; set GOOGLE_APPLICATION_CREDENTIALS to a service-account or authorized-user file, or run `gcloud auth application-default login`",
                    self.source.describe()
                ))
            })?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 {
            let err = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error");
            let desc: String = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(500)
                .collect();
            return Err(SignError::Credential(format!(
                "Google token endpoint returned HTTP {status}: {err} {desc}"
            )));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                SignError::Credential("Google token response has no access_token".into())
            })?;
        let expires_in = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(JWT_LIFETIME);
        self.token.store(Some(Arc::new(Token {
            value: Secret::new(token.to_string()),
            expires_at: now + expires_in,
        })));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Signer for GoogleOauth {
    fn sign(&self, req: &mut UpstreamRequest, _host: &str) -> Result<(), SignError> {
        match self.fresh_token(now_secs()) {
            Some(t) => {
                req.headers.push((
                    "authorization".into(),
                    format!("Bearer {}", t.value.expose()),
                ));
                Ok(())
            }
            None => Err(SignError::NotReady(format!(
                "no current Google access token ({})",
                self.source.describe()
            ))),
        }
    }

    async fn refresh(&self) -> Result<(), SignError> {
        let _one = self.fetching.lock().await;
        // Someone else refreshed while we waited.
        if self.refresh_in().is_some_and(|s| s > 0) {
            return Ok(());
        }
        self.fetch().await
    }

    /// Seconds until the token enters its last five minutes (0: refresh now).
    fn refresh_in(&self) -> Option<u64> {
        let now = now_secs();
        Some(match self.token.load().as_ref() {
            Some(t) => t.expires_at.saturating_sub(now + REFRESH_AHEAD),
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A throwaway RSA key generated with `openssl genpkey` for these tests only. It
    /// authorises nothing anywhere.
    const TEST_KEY: &str = concat!(
        "-----BEGIN PRIVATE KEY-----\n",
        "MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQCsygcHuCxwJSRU\n",
        "Q/0sWuTAEwzjPIeQt3O30JG3Mt3/nvl4A/huX0oYAUTnwJSghnwNzh6chhKTwpHn\n",
        "Ql7GOR9ycwuHi7f8/4Vf7iQ4fx5La21SSgquAmk4/OyQR+Ut1ufeAm493N9evAPs\n",
        "d+62sVkR7GtHPvlEPgnsbRG6lZWy/UTn0Amds7nuM+piq+6xsBoRHBiq+kZFBQei\n",
        "Y7ICGS2oZkUXb8rwrVjb/dtciw3eirxxILQJDbh0fWYzEERmoMTyUY6ZuDMnuGOt\n",
        "PURjhbmyHK9iwH6+FtI1/NjEc+kBucgSZCK5bYYMlAYNBIQzNToDVqDQgLNcEtEi\n",
        "wsh7b/PhAgMBAAECggEADlYGxkuwGC/ktz8a2trBvvP1rkbf4pBt//LEnEQSqjpI\n",
        "7X2614F9dsdoLahLTJRL56NR49+129+ZVmwpy92Cb+7+pmTfw5R5vu9VvwBBBbXo\n",
        "kJrHDw/xJgLKJ+BnMenyO/fMqMJSIByOYMjEnBDT2IpajkM50EErdpvIDEiL7pk0\n",
        "/PJjXmvbAQjUb4K07I8rbXVnjzcCmS3prfqsHZeEJlBuX7hRRk/ZM8cT635LLWIz\n",
        "8WVF7sdZ/mJuj0qIBcuwDl8T9h8EKY7Ycc7UM6/NapcZnrF0Pc2VEiIS3gNZkFyc\n",
        "QUJj15VMsF4kZe4qXr41AqeVui7DQytIvVse3mikyQKBgQDXUv2fea/ENsDx2Xgr\n",
        "XsBbVDixCdfxYfHP+zedakAJ6ID+CBVDkNlitTn+fTPm/XCkxHJmJUJM/oLWL3Fv\n",
        "+fWzokTy2PsCl6sqAe6XqQeY6HVq8ZtU2z2Q5j6JIi6GgLLNPehv4HGB9BDKl7QR\n",
        "GpMe8GNuFOBnEz3wEmTLFotLTQKBgQDNbg6XlRGR0SmxBzraBxvoO7UZrp6P6r+n\n",
        "/fjUMryY9uG82SGn5p0QptubBuzQB/LuAPHZaQrfFFBYhPI30cmDGncixTBt57EK\n",
        "pvCDaiZRc06a3i4WpENzdzClXQFln/l2VARwZRDQEGArGCmeG8izJoHnlHSoMFLw\n",
        "/nuv3+/45QKBgQCFgtP32j/97eVdEHbOjYXAG0y7mVroNM73ItGtLYBfpGa3HNPy\n",
        "fRINfkljXsab53G8+IHmjBu8GeOOYwR3ZgnPREJ0Qc4CIYDkHyaNqyUmzpxfn0et\n",
        "KfPWsKz94s/uXkZ/tG83T3eSGH+A3uer40pt2KgOTauGvgudnAobUvMz0QKBgQDD\n",
        "1PXOJMoB8p3G57h/naVJ5plGqUL4uPUJZT+uscs+GqOpDmhaEaqK9DWG/LwFuH4p\n",
        "yvbCpbM6Y7gQGnR5J+DsvO7zU31OWD9agzfmXuu2W7CES+ctqFuwl9/k09uAEFeU\n",
        "KJWuu3mijunOSxNpaN0Tg1L0+32V07NNj5tDVrwBzQKBgQCRFCBCzV3sZuzjtBtI\n",
        "ajqhi5QYxmZ2kpzpYE6DKh7oe++9tWa5+A7/4Ss1BNGPqRAubhbwaAOdovZLaTst\n",
        "qntBGeIAFFOZ54Vyv1fj2xNnCvd6ybRa7kLcaGmvTRJBpeQLRmAhlN8/CUTX+LMU\n",
        "EHSo0kaFd3iDctuzjrGgeVSVyQ==\n",
        "-----END PRIVATE KEY-----\n",
    );

    fn key_json(token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "test-proj",
            "private_key_id": "kid-1",
            "private_key": TEST_KEY,
            "client_email": "gw@test-proj.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn decode_part(p: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn jwt_is_well_formed_and_verifies() {
        let acct = ServiceAccount::from_json(&key_json(DEFAULT_TOKEN_URI)).unwrap();
        assert_eq!(acct.project_id(), Some("test-proj"));
        let jwt = acct.assertion(1_700_000_000, &SystemRandom::new()).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
        );
        let claims = decode_part(parts[1]);
        assert_eq!(claims["iss"], "gw@test-proj.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], DEFAULT_TOKEN_URI);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            acct.key.public().as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &sig).unwrap();
        assert!(public.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn bad_keys_never_echo_content() {
        let e =
            ServiceAccount::from_json("{\"private_key\": \"SECRETSECRET\", \"client_email\": 5}")
                .unwrap_err();
        assert!(!e.to_string().contains("SECRETSECRET"), "{e}");
        let e = ServiceAccount::from_json(
            &json!({"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n"}).to_string(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("SECRETSECRET"), "{e}");
        let e =
            ServiceAccount::from_json(&json!({"type": "authorized_user"}).to_string()).unwrap_err();
        assert!(e.to_string().contains("service-account"));
        let acct = ServiceAccount::from_json(&key_json(DEFAULT_TOKEN_URI)).unwrap();
        assert!(!format!("{acct:?}").contains("BEGIN"));
    }

    #[test]
    fn sign_without_token_is_not_ready() {
        let s = GoogleOauth::new(ServiceAccount::from_json(&key_json(DEFAULT_TOKEN_URI)).unwrap());
        let mut req = UpstreamRequest::default();
        assert!(matches!(s.sign(&mut req, "x"), Err(SignError::NotReady(_))));
        assert_eq!(s.refresh_in(), Some(0));
        assert!(req.headers.is_empty());
    }

    /// Serve `n` token requests on loopback; each answer is produced by `reply`.
    async fn token_server(
        n: usize,
        reply: fn(&str) -> (u16, String),
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for _ in 0..n {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers and the Content-Length body, bounded.
                let body = loop {
                    let k = s.read(&mut chunk).await.unwrap();
                    assert!(k > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text[..i]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            assert!(text.starts_with("POST /token HTTP/1.1\r\n"), "{text}");
                            assert!(text
                                .to_ascii_lowercase()
                                .contains("content-type: application/x-www-form-urlencoded"));
                            break text[i + 4..].to_string();
                        }
                    }
                    assert!(buf.len() < 1 << 20);
                };
                let (status, resp) = reply(&body);
                let out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{resp}",
                    resp.len()
                );
                s.write_all(out.as_bytes()).await.unwrap();
                s.shutdown().await.ok();
                bodies.push(body);
            }
            bodies
        });
        (url, h)
    }

    #[tokio::test]
    async fn exchanges_jwt_for_token_and_signs() {
        let (url, server) = token_server(1, |_| {
            (
                200,
                r#"{"access_token":"ya29.test-token","expires_in":3599,"token_type":"Bearer"}"#
                    .to_string(),
            )
        })
        .await;
        let s = GoogleOauth::new(ServiceAccount::from_json(&key_json(&url)).unwrap());
        tokio::time::timeout(Duration::from_secs(10), s.refresh())
            .await
            .unwrap()
            .unwrap();
        let mut req = UpstreamRequest::default();
        s.sign(&mut req, "aiplatform.googleapis.com").unwrap();
        assert_eq!(
            req.headers,
            vec![(
                "authorization".to_string(),
                "Bearer ya29.test-token".to_string()
            )]
        );
        let left = s.refresh_in().unwrap();
        assert!((3290..=3299).contains(&left), "{left}");
        assert!(!format!("{s:?}").contains("ya29"));
        // A second refresh right away is a no-op (no second request to the server).
        s.refresh().await.unwrap();
        let bodies = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        let form = &bodies[0];
        assert!(form.starts_with(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
        ));
        let jwt = form.split("assertion=").nth(1).unwrap();
        assert_eq!(decode_part(jwt.split('.').nth(1).unwrap())["aud"], url);
    }

    #[tokio::test]
    async fn token_endpoint_errors_are_reported() {
        let (url, server) = token_server(1, |_| {
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
                    .to_string(),
            )
        })
        .await;
        let s = GoogleOauth::new(ServiceAccount::from_json(&key_json(&url)).unwrap());
        let e = tokio::time::timeout(Duration::from_secs(10), s.refresh())
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("invalid_grant"), "{e}");
        assert_eq!(s.refresh_in(), Some(0));
        server.await.unwrap();
    }

    #[test]
    fn from_profile_reads_json_and_overrides_token_uri() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        std::fs::write(&path, key_json(DEFAULT_TOKEN_URI)).unwrap();
        let toml = format!(
            "name = \"vertex\"\ndialect = \"vertex\"\nbase_url = \"https://aiplatform.googleapis.com\"\nauth = \"google_oauth\"\n\
             [extra]\nproject = \"p\"\ncredentials_file = \"{}\"\ntoken_uri = \"http://127.0.0.1:9/token\"\n",
            path.display()
        );
        let p = ProviderProfile::parse(&toml, "t.toml").unwrap();
        let s = GoogleOauth::from_profile(&p).unwrap();
        let a = s.account().unwrap();
        assert_eq!(a.token_uri(), "http://127.0.0.1:9/token");
        assert_eq!(a.email(), "gw@test-proj.iam.gserviceaccount.com");
    }
}
