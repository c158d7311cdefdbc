//! Who may use a node's HTTP API, decided the way the kubelet decides it: the caller's bearer
//! token is authenticated with a TokenReview, and what it asks for is authorized with a
//! SubjectAccessReview on a resource that names it (a [`Right`]). Decisions are kept briefly in
//! bounded caches (allowed for [`ALLOWED_TTL`], refused for [`DENIED_TTL`]), so a burst of
//! requests costs one review each. When the apiserver cannot be asked, the request is refused
//! with 503 ([`Error::ReviewFailed`]): the API fails closed.
//!
//! Which request needs which right is each role's own pure decision (`kdiag_agent::access`);
//! this module only asks the apiserver and remembers its answers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use warp::Reply;
use warp::http::StatusCode;

use crate::error::Error;

/// How long an allowed decision (and an accepted token) is reused.
pub const ALLOWED_TTL: Duration = Duration::from_secs(30);
/// How long a refusal (and a rejected token) is reused: short, so a grant takes effect soon.
pub const DENIED_TTL: Duration = Duration::from_secs(5);
/// The most entries each cache (tokens, decisions) holds.
pub const CACHE_ENTRIES: usize = 4096;

/// The attributes of one SubjectAccessReview: what a request amounts to. Empty strings mean
/// "not set" (the core group, no subresource, cluster-scoped, any name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Right {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Right {
    /// `get nodes/proxy` on `node`: what the kubelet asks for its own node-wide endpoints.
    pub fn node_proxy(node: &str) -> Self {
        Self {
            verb: "get".into(),
            group: String::new(),
            resource: "nodes".into(),
            subresource: "proxy".into(),
            namespace: String::new(),
            name: node.into(),
        }
    }

    /// `verb abnormals/<subresource>` in group diagnosis.netease.com, in `namespace`, on `name`.
    pub fn abnormals(verb: &str, subresource: &str, namespace: &str, name: &str) -> Self {
        Self {
            verb: verb.into(),
            group: kdiag_api::DIAGNOSIS_GROUP.into(),
            resource: "abnormals".into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The `kubectl auth can-i` line that checks this right.
    pub fn can_i(&self) -> String {
        let mut resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        if !self.name.is_empty() {
            resource = format!("{resource}/{}", self.name);
        }
        let mut line = format!("kubectl auth can-i {} {resource}", self.verb);
        if !self.subresource.is_empty() {
            line.push_str(&format!(" --subresource={}", self.subresource));
        }
        if !self.namespace.is_empty() {
            line.push_str(&format!(" -n {}", self.namespace));
        }
        line
    }

    fn attributes(&self) -> ResourceAttributes {
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ResourceAttributes {
            verb: Some(self.verb.clone()),
            group: Some(self.group.clone()),
            resource: Some(self.resource.clone()),
            subresource: set(&self.subresource),
            namespace: set(&self.namespace),
            name: set(&self.name),
            ..Default::default()
        }
    }
}

/// "get abnormals/profile (diagnosis.netease.com) named x in namespace team-a".
impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.group.is_empty() {
            write!(f, " ({})", self.group)?;
        }
        if !self.name.is_empty() {
            write!(f, " named {}", self.name)?;
        }
        if !self.namespace.is_empty() {
            write!(f, " in namespace {}", self.namespace)?;
        }
        Ok(())
    }
}

/// Who a token belongs to, as the TokenReview said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer_token(header: Option<&str>) -> Result<&str, Error> {
    let Some(header) = header else {
        return Err(Error::Unauthenticated {
            reason: "the request has no Authorization header".into(),
        });
    };
    let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Error::Unauthenticated {
            reason: "the Authorization header is not 'Bearer <token>'".into(),
        });
    }
    Ok(token)
}

/// A map of at most `capacity` entries that expire. Pure: the caller says what time it is. When
/// full, expired entries go first, then the one closest to expiring.
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> TtlCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` unless it has expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| v)
    }

    /// Keeps `value` for `key` until `now + ttl`.
    pub fn insert(&mut self, key: K, value: V, now: Instant, ttl: Duration) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (value, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Asks the apiserver who callers are and what they may do, and remembers the answers briefly.
pub struct Authorizer {
    client: kube::Client,
    /// By the token's SHA-256, so no token is kept: the user, or why the token was refused.
    tokens: Mutex<TtlCache<[u8; 32], Result<User, String>>>,
    /// Allowed, or refused with the authorizer's reason.
    decisions: Mutex<TtlCache<(User, Right), Result<(), String>>>,
}

impl Authorizer {
    /// Reviews with `client`, whose identity needs `create` on tokenreviews and
    /// subjectaccessreviews.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            tokens: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
            decisions: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
        }
    }

    /// The caller of a request with this Authorization header, if it may do `right`.
    pub async fn check(&self, authorization: Option<&str>, right: &Right) -> Result<User, Error> {
        let user = self.authenticate(bearer_token(authorization)?).await?;
        self.authorize(&user, right).await?;
        Ok(user)
    }

    /// Who `token` belongs to (TokenReview).
    pub async fn authenticate(&self, token: &str) -> Result<User, Error> {
        self.authenticate_for(token, None).await
    }

    /// Who `token` belongs to, if it was issued for `audience` (a TokenReview with
    /// `spec.audiences`; the apiserver answers with the audiences the token is valid for, which
    /// must include it). `None`: the apiserver's own audiences, as [`Self::authenticate`].
    pub async fn authenticate_for(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<User, Error> {
        let key = match audience {
            None => sha256(token),
            Some(a) => sha256(&format!("{a}\n{token}")),
        };
        let cached = lock(&self.tokens).get(&key, Instant::now()).cloned();
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.review_token(token, audience).await?;
                let ttl = if answer.is_ok() {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                lock(&self.tokens).insert(key, answer.clone(), Instant::now(), ttl);
                answer
            }
        };
        answer.map_err(|reason| Error::Unauthenticated { reason })
    }

    /// Whether `user` may do `right` (SubjectAccessReview).
    pub async fn authorize(&self, user: &User, right: &Right) -> Result<(), Error> {
        let key = (user.clone(), right.clone());
        let cached = lock(&self.decisions).get(&key, Instant::now()).cloned();
        let decision = match cached {
            Some(decision) => decision,
            None => {
                let decision = self.review_access(user, right).await?;
                let ttl = if decision.is_ok() {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                lock(&self.decisions).insert(key, decision.clone(), Instant::now(), ttl);
                decision
            }
        };
        decision.map_err(|reason| Error::Forbidden {
            user: user.name.clone(),
            right: right.to_string(),
            can_i: right.can_i(),
            reason: if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            },
        })
    }

    async fn review_token(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Result<User, String>, Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: audience.map(|a| vec![a.to_owned()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::ReviewFailed {
                review: "TokenReview",
                source: Box::new(e),
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_default();
            return Ok(Err(if why.is_empty() {
                "the cluster did not accept the bearer token".to_owned()
            } else {
                format!("the cluster did not accept the bearer token: {why}")
            }));
        }
        if let Some(audience) = audience
            && !status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|x| x == audience))
        {
            return Ok(Err(format!(
                "the bearer token was not issued for the audience {audience:?}"
            )));
        }
        let info = status.user.unwrap_or_default();
        Ok(Ok(User {
            name: info.username.unwrap_or_default(),
            uid: info.uid.unwrap_or_default(),
            groups: info.groups.unwrap_or_default(),
            extra: info.extra.unwrap_or_default(),
        }))
    }

    async fn review_access(&self, user: &User, right: &Right) -> Result<Result<(), String>, Error> {
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: set(&user.name),
                uid: set(&user.uid),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(right.attributes()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::ReviewFailed {
                review: "SubjectAccessReview",
                source: Box::new(e),
            })?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            return Ok(Ok(()));
        }
        let reason = [status.reason, status.evaluation_error]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Err(reason))
    }
}

/// A random secret: 32 bytes from the system's generator, as 64 hex digits.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A request refused by a node API's authentication or authorization, as a warp rejection (for
/// routes such as static files that answer only once allowed); [`crate::server::rejection`]
/// answers it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for Refusal {}

impl Refusal {
    /// The HTTP answer to an authentication or authorization error: 401 for no or a bad token
    /// (with `WWW-Authenticate: Bearer`), 403 for a missing right, 503 when the apiserver could
    /// not be asked.
    pub fn of(e: &Error) -> Self {
        let status = match e {
            Error::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::ReviewFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "a node API request was refused: it could not be checked");
        }
        Self {
            status,
            message: e.to_string(),
        }
    }

    pub fn response(&self) -> warp::reply::Response {
        let reply = crate::server::text(self.status, self.message.clone());
        if self.status == StatusCode::UNAUTHORIZED {
            warp::reply::with_header(reply, "www-authenticate", "Bearer realm=\"kdiag\"")
                .into_response()
        } else {
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_header_gives_its_token_in_any_case_of_the_scheme() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
    }

    #[test]
    fn no_header_another_scheme_or_no_token_is_unauthenticated() {
        for header in [
            None,
            Some("Basic dXNlcjpwdw=="),
            Some("Bearer"),
            Some("Bearer  "),
        ] {
            let e = bearer_token(header).unwrap_err();
            assert!(matches!(e, Error::Unauthenticated { .. }), "{header:?}");
            assert!(e.to_string().contains("Authorization: Bearer"), "{e}");
        }
    }

    #[test]
    fn a_right_names_itself_and_the_can_i_line_that_checks_it() {
        let node = Right::node_proxy("n1");
        assert_eq!(node.to_string(), "get nodes/proxy named n1");
        assert_eq!(
            node.can_i(),
            "kubectl auth can-i get nodes/n1 --subresource=proxy"
        );
        let profile = Right::abnormals("get", "profile", "team-a", "oom");
        assert_eq!(
            profile.to_string(),
            "get abnormals/profile (diagnosis.netease.com) named oom in namespace team-a"
        );
        assert_eq!(
            profile.can_i(),
            "kubectl auth can-i get abnormals.diagnosis.netease.com/oom --subresource=profile -n team-a"
        );
        let a = profile.attributes();
        assert_eq!(a.group.as_deref(), Some("diagnosis.netease.com"));
        assert_eq!(a.subresource.as_deref(), Some("profile"));
        assert_eq!(node.attributes().namespace, None);
    }

    #[test]
    fn a_cached_answer_is_reused_until_it_expires() {
        let now = Instant::now();
        let mut c = TtlCache::new(4);
        c.insert("a", 1, now, Duration::from_secs(30));
        assert_eq!(c.get(&"a", now + Duration::from_secs(29)), Some(&1));
        assert_eq!(c.get(&"a", now + Duration::from_secs(30)), None);
    }

    #[test]
    fn a_full_cache_drops_the_expired_then_the_soonest_to_expire() {
        let now = Instant::now();
        let mut c = TtlCache::new(2);
        c.insert("short", 1, now, Duration::from_secs(5));
        c.insert("long", 2, now, Duration::from_secs(30));
        // Nothing expired yet: the one closest to expiring makes room.
        c.insert("new", 3, now, Duration::from_secs(30));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"short", now), None);
        assert_eq!(c.get(&"long", now), Some(&2));
        // Later, expired entries go first.
        let later = now + Duration::from_secs(31);
        c.insert("newer", 4, later, Duration::from_secs(5));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&"newer", later), Some(&4));
    }

    #[test]
    fn refusals_answer_401_403_or_503() {
        let unauth = Refusal::of(&Error::Unauthenticated { reason: "x".into() });
        assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
        let resp = unauth.response();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"kdiag\"");
        let right = Right::node_proxy("n1");
        let forbidden = Refusal::of(&Error::Forbidden {
            user: "alice".into(),
            right: right.to_string(),
            can_i: right.can_i(),
            reason: String::new(),
        });
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        assert!(
            forbidden
                .message
                .contains("alice may not get nodes/proxy named n1")
                && forbidden
                    .message
                    .contains("kubectl auth can-i get nodes/n1 --subresource=proxy --as alice"),
            "{}",
            forbidden.message
        );
        let failed = Refusal::of(&Error::ReviewFailed {
            review: "TokenReview",
            source: Box::new(kube::Error::Service("connection refused".into())),
        });
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            failed.message.contains("could not be asked"),
            "{}",
            failed.message
        );
    }
}
