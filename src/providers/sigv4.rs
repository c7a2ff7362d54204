//! AWS Signature Version 4 for Bedrock, and the Bedrock API-key alternative.
//!
//! The signature covers the exact path and body bytes that go on the wire, so `sign`
//! must be the last thing to touch the request. Bedrock is not S3: the canonical URI is
//! the sent (already percent-encoded) path encoded *once more*, segment by segment, so a
//! model id `a:b` sent as `a%3Ab` is signed as `a%253Ab`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::providers::{ProviderProfile, Secret, SignError, Signer};
use crate::upstream::UpstreamRequest;

type HmacSha256 = Hmac<Sha256>;

/// Static AWS credentials (environment style).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// How requests to Bedrock are authenticated.
#[derive(Debug, Clone)]
pub enum BedrockAuth {
    /// SigV4 with access keys.
    Sigv4(Credentials),
    /// Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`) sent as `Authorization: Bearer`.
    ApiKey(Secret),
    /// SigV4 with credentials from the AWS default chain (profile, web identity, ECS,
    /// IMDS), fetched and renewed in the background.
    Chain(std::sync::Arc<crate::providers::aws_chain::AwsChain>),
    /// Activated with incomplete credentials (an access key id without its secret): every
    /// request fails with this message rather than the whole gateway refusing to start.
    Unconfigured(String),
}

/// The `Signer` for `auth = "sigv4"` profiles.
#[derive(Debug)]
pub struct Sigv4Signer {
    auth: BedrockAuth,
    /// Region used when the host does not name one (custom endpoints, mocks).
    region: String,
    service: String,
    /// Also sign and send `x-amz-content-sha256` (S3 needs it; Bedrock accepts it).
    content_sha256_header: bool,
}

/// Env vars read by [`Sigv4Signer::from_env`].
pub const ENV_ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const ENV_BEARER: &str = "AWS_BEARER_TOKEN_BEDROCK";

fn env(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

impl Sigv4Signer {
    pub fn new(auth: BedrockAuth, region: &str, service: &str) -> Self {
        Sigv4Signer {
            auth,
            region: region.to_string(),
            service: service.to_string(),
            content_sha256_header: false,
        }
    }

    pub fn with_content_sha256_header(mut self, on: bool) -> Self {
        self.content_sha256_header = on;
        self
    }

    /// Credentials from the environment. A Bedrock API key wins over access keys, as in
    /// the AWS SDKs; access keys need both the id and the secret.
    pub fn from_env(profile: &ProviderProfile) -> Result<Self, SignError> {
        let region = profile
            .extra
            .region
            .as_deref()
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|v| !v.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".to_string());
        let service = profile
            .extra
            .service
            .as_deref()
            .unwrap_or("bedrock")
            .to_string();
        let bearer_vars = profile.api_key_vars();
        let bearer_var = bearer_vars.first().copied().unwrap_or(ENV_BEARER);
        let auth = if let Some(key) = env(bearer_var) {
            BedrockAuth::ApiKey(key)
        } else {
            match (env(ENV_ACCESS_KEY), env(ENV_SECRET_KEY)) {
                (Some(id), Some(secret)) => BedrockAuth::Sigv4(Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: env(ENV_SESSION_TOKEN),
                }),
                (Some(_), None) => {
                    return Err(SignError::Missing(format!(
                        "{ENV_ACCESS_KEY} is set but {ENV_SECRET_KEY} is not"
                    )))
                }
                // No keys in the environment: the rest of the AWS chain (shared profile,
                // web identity, ECS, IMDS), resolved in the background.
                _ => BedrockAuth::Chain(std::sync::Arc::new(
                    crate::providers::aws_chain::AwsChain::new(&region),
                )),
            }
        };
        Ok(Sigv4Signer::new(auth, &region, &service))
    }

    /// The region to sign for: the one in an AWS host name (`bedrock-runtime.<region>.amazonaws.com`)
    /// so the signature always matches where the request goes, else the configured one.
    pub fn region_for_host<'a>(&'a self, host: &'a str) -> &'a str {
        region_from_host(host).unwrap_or(&self.region)
    }

    /// Sign with an explicit timestamp (`YYYYMMDDTHHMMSSZ`); `sign` uses the clock.
    pub fn sign_at(
        &self,
        req: &mut UpstreamRequest,
        host: &str,
        amz_date: &str,
    ) -> Result<(), SignError> {
        let creds = match &self.auth {
            BedrockAuth::ApiKey(key) => {
                req.headers
                    .push(("authorization".into(), format!("Bearer {}", key.expose())));
                return Ok(());
            }
            BedrockAuth::Sigv4(c) => c,
            BedrockAuth::Unconfigured(msg) => return Err(SignError::Missing(msg.clone())),
            BedrockAuth::Chain(chain) => {
                let now = chrono::Utc::now().timestamp().max(0) as u64;
                let Some(cached) = chain.current(now) else {
                    return Err(SignError::NotReady(
                        "AWS credentials not fetched yet".into(),
                    ));
                };
                return self.sign_with(req, host, amz_date, &cached.creds);
            }
        };
        self.sign_with(req, host, amz_date, creds)
    }

    fn sign_with(
        &self,
        req: &mut UpstreamRequest,
        host: &str,
        amz_date: &str,
        creds: &Credentials,
    ) -> Result<(), SignError> {
        // Drop stale signing headers (a retried request is signed again).
        req.headers.retain(|(n, _)| {
            !matches!(
                n.to_ascii_lowercase().as_str(),
                "authorization" | "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
            )
        });
        let payload_hash = hex::encode(Sha256::digest(&req.body));
        req.headers
            .push(("x-amz-date".into(), amz_date.to_string()));
        if let Some(token) = &creds.session_token {
            req.headers
                .push(("x-amz-security-token".into(), token.expose().to_string()));
        }
        if self.content_sha256_header {
            req.headers
                .push(("x-amz-content-sha256".into(), payload_hash.clone()));
        }
        let region = self.region_for_host(host).to_string();
        let auth = authorization(
            creds,
            &region,
            &self.service,
            req.method,
            host,
            &req.path,
            &req.headers,
            &payload_hash,
            amz_date,
        )?;
        req.headers.push(("authorization".into(), auth));
        Ok(())
    }
}

#[async_trait::async_trait]
impl Signer for Sigv4Signer {
    fn sign(&self, req: &mut UpstreamRequest, host: &str) -> Result<(), SignError> {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        self.sign_at(req, host, &now)
    }

    async fn refresh(&self) -> Result<(), SignError> {
        match &self.auth {
            BedrockAuth::Chain(chain) => chain.refresh().await,
            _ => Ok(()),
        }
    }

    fn refresh_in(&self) -> Option<u64> {
        match &self.auth {
            BedrockAuth::Chain(chain) => Some(chain.refresh_in()),
            _ => None,
        }
    }
}

/// `bedrock-runtime.us-west-2.amazonaws.com` → `us-west-2` (also `-fips` hosts and ports).
pub fn region_from_host(host: &str) -> Option<&str> {
    let host = host.split(':').next().unwrap_or(host);
    let rest = host
        .strip_prefix("bedrock-runtime-fips.")
        .or_else(|| host.strip_prefix("bedrock-runtime."))
        .or_else(|| host.strip_prefix("bedrock."))?;
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
    (!region.is_empty() && !region.contains('.')).then_some(region)
}

/// Headers that take part in the signature: host, content-type and every `x-amz-*`.
fn is_signed(name: &str) -> bool {
    name == "content-type" || name.starts_with("x-amz-")
}

/// The SigV4 `Authorization` header value for a request.
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    payload_hash: &str,
    amz_date: &str,
) -> Result<String, SignError> {
    if amz_date.len() != 16 {
        return Err(SignError::Credential("bad x-amz-date".into()));
    }
    let (creq, signed_headers) =
        canonical_request(method, host, path_and_query, headers, payload_hash);
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", creds.secret_access_key.expose()).as_bytes(),
        date.as_bytes(),
    )?;
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes())?;
    }
    let signature = hex::encode(hmac(&key, sts.as_bytes())?);
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        creds.access_key_id.expose()
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut m = HmacSha256::new_from_slice(key)
        .map_err(|_| SignError::Credential("bad HMAC key".into()))?;
    m.update(data);
    Ok(m.finalize().into_bytes().to_vec())
}

/// Canonical request and the `SignedHeaders` list.
pub fn canonical_request(
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    payload_hash: &str,
) -> (String, String) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let mut hs: Vec<(String, String)> = vec![("host".into(), host.to_string())];
    for (n, v) in headers {
        let n = n.to_ascii_lowercase();
        if n != "host" && is_signed(&n) {
            hs.push((n, v.clone()));
        }
    }
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    // Repeated headers are joined with commas in their original order.
    let mut merged: Vec<(String, String)> = Vec::with_capacity(hs.len());
    for (n, v) in hs {
        let v = collapse_spaces(&v);
        match merged.last_mut() {
            Some((ln, lv)) if *ln == n => {
                lv.push(',');
                lv.push_str(&v);
            }
            _ => merged.push((n, v)),
        }
    }
    let signed: Vec<&str> = merged.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let mut creq = String::with_capacity(256 + path.len());
    creq.push_str(&method.to_ascii_uppercase());
    creq.push('\n');
    creq.push_str(&canonical_uri(path));
    creq.push('\n');
    creq.push_str(&canonical_query(query));
    creq.push('\n');
    for (n, v) in &merged {
        creq.push_str(n);
        creq.push(':');
        creq.push_str(v);
        creq.push('\n');
    }
    creq.push('\n');
    creq.push_str(&signed);
    creq.push('\n');
    creq.push_str(payload_hash);
    (creq, signed)
}

fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3986 encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~` becomes `%XX`.
pub fn uri_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
}

/// Non-S3 canonical URI: each segment of the sent path encoded again.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() || path == "/" {
        return "/".into();
    }
    let mut out = String::with_capacity(path.len() * 2);
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        uri_encode(seg, &mut out);
    }
    out
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&dec(k), &mut ek);
            uri_encode(&dec(v), &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "20150830T123600Z";
    const HOST: &str = "example.amazonaws.com";

    fn suite_creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: Secret::new("AKIDEXAMPLE".into()),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: token.map(|t| Secret::new(t.into())),
        }
    }

    fn suite_signer() -> Sigv4Signer {
        Sigv4Signer::new(
            BedrockAuth::Sigv4(suite_creds(None)),
            "us-east-1",
            "service",
        )
    }

    fn sign(
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> UpstreamRequest {
        let mut req = UpstreamRequest {
            method,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: bytes::Bytes::copy_from_slice(body),
        };
        suite_signer().sign_at(&mut req, HOST, DATE).unwrap();
        req
    }

    fn header<'a>(req: &'a UpstreamRequest, name: &str) -> &'a str {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    // Vectors from AWS's published SigV4 test suite (credentials AKIDEXAMPLE, 2015-08-30).
    #[test]
    fn aws_suite_get_vanilla() {
        let r = sign("GET", "/", &[], b"");
        assert_eq!(
            header(&r, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(header(&r, "x-amz-date"), DATE);
    }

    #[test]
    fn aws_suite_post_vanilla() {
        let r = sign("POST", "/", &[], b"");
        assert!(header(&r, "authorization").ends_with(
            "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        ));
    }

    #[test]
    fn aws_suite_post_vanilla_query() {
        let r = sign("POST", "/?Param1=value1", &[], b"");
        assert!(header(&r, "authorization").ends_with(
            "Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
        ));
    }

    #[test]
    fn aws_suite_post_x_www_form_urlencoded() {
        let r = sign(
            "POST",
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"Param1=value1",
        );
        assert_eq!(
            header(&r, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    #[test]
    fn canonical_uri_double_encodes_for_bedrock() {
        let (creq, signed) = canonical_request(
            "POST",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            &[
                ("content-type".into(), "application/json".into()),
                ("x-amz-date".into(), DATE.into()),
            ],
            "abc",
        );
        assert_eq!(signed, "content-type;host;x-amz-date");
        assert!(creq
            .starts_with("POST\n/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n\n"));
    }

    /// Cross-checked with botocore's `SigV4Auth` (service bedrock, us-west-2, session token).
    #[test]
    fn bedrock_shaped_request_with_session_token() {
        let signer = Sigv4Signer::new(
            BedrockAuth::Sigv4(suite_creds(Some("FQoGZXIvYXdzEXAMPLETOKEN"))),
            "eu-central-1",
            "bedrock",
        );
        let mut req = UpstreamRequest {
            method: "POST",
            path: "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes::Bytes::from_static(
                br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#,
            ),
        };
        let host = "bedrock-runtime.us-west-2.amazonaws.com";
        signer.sign_at(&mut req, host, "20240115T093000Z").unwrap();
        assert_eq!(
            header(&req, "x-amz-security-token"),
            "FQoGZXIvYXdzEXAMPLETOKEN"
        );
        assert_eq!(
            header(&req, "authorization"),
            BOTOCORE_BEDROCK_AUTHZ,
            "region must come from the host, token must be signed"
        );
        // Signing again (retry) replaces, not duplicates, the signing headers.
        signer.sign_at(&mut req, host, "20240115T093000Z").unwrap();
        assert_eq!(
            req.headers
                .iter()
                .filter(|(n, _)| n == "authorization")
                .count(),
            1
        );
        assert_eq!(header(&req, "authorization"), BOTOCORE_BEDROCK_AUTHZ);
    }

    const BOTOCORE_BEDROCK_AUTHZ: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240115/us-west-2/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=bcc8ef8b911f796b4b0fb8f71ff00cc271ad252626f3cc532159557790dae6fa";

    #[test]
    fn api_key_is_bearer() {
        let s = Sigv4Signer::new(
            BedrockAuth::ApiKey(Secret::new("bedrock-api-key-xyz".into())),
            "us-east-1",
            "bedrock",
        );
        let mut req = UpstreamRequest {
            method: "POST",
            path: "/".into(),
            ..Default::default()
        };
        s.sign_at(&mut req, "bedrock-runtime.us-east-1.amazonaws.com", DATE)
            .unwrap();
        assert_eq!(
            req.headers,
            vec![(
                "authorization".to_string(),
                "Bearer bedrock-api-key-xyz".to_string()
            )]
        );
        assert!(!format!("{s:?}").contains("xyz"));
    }

    #[test]
    fn from_env_prefers_api_key_and_unconfigured_fails_per_request() {
        std::env::set_var("LG_TEST_BEDROCK_BEARER_9", "k-123");
        let p = ProviderProfile::parse(
            "name = \"bedrock\"\ndialect = \"bedrock\"\nbase_url = \"http://127.0.0.1:1\"\nauth = \"sigv4\"\napi_key_env = \"LG_TEST_BEDROCK_BEARER_9\"\n[extra]\nregion = \"eu-west-3\"\n",
            "t",
        )
        .unwrap();
        let s = Sigv4Signer::from_env(&p).unwrap();
        assert!(matches!(s.auth, BedrockAuth::ApiKey(_)));
        assert_eq!(s.region_for_host("127.0.0.1:1"), "eu-west-3");
        let u = Sigv4Signer::new(
            BedrockAuth::Unconfigured("no AWS credentials".into()),
            "us-east-1",
            "bedrock",
        );
        let mut req = UpstreamRequest {
            method: "POST",
            path: "/".into(),
            ..Default::default()
        };
        assert!(
            matches!(u.sign_at(&mut req, HOST, DATE), Err(SignError::Missing(m)) if m.contains("credentials"))
        );
    }

    #[test]
    fn regions_from_hosts() {
        assert_eq!(
            region_from_host("bedrock-runtime.us-west-2.amazonaws.com"),
            Some("us-west-2")
        );
        assert_eq!(
            region_from_host("bedrock-runtime-fips.us-east-1.amazonaws.com:443"),
            Some("us-east-1")
        );
        assert_eq!(region_from_host("127.0.0.1:9000"), None);
    }
}
