//! Limits that protect the api and the API server behind it from one client:
//!
//! - **per client address, before authentication**: every request on the public listener that
//!   could cost a TokenReview (no token, or one without a live review in the cache) takes a cell
//!   from its address's bucket first, so a flood (bogus tokens included) is answered 429 without
//!   a TokenReview, while users already signed in are not locked out by it. IPv6 clients are keyed by their /64, which one host usually holds
//!   whole. Behind a proxy every client shares the proxy's address unless the proxy is trusted
//!   (`--trusted-proxy`): then the client is the last `X-Forwarded-For` hop the trusted proxies
//!   did not add themselves.
//! - **per principal, after authentication**: the same kind of bucket per user name, one for
//!   reads and one for writes ([`RequestKind`]), so that writes (a script's flood) never starve
//!   reads (the web UI's polling) and the other way round.
//! - **open event streams per principal** (`StreamSlots`).
//!
//! The buckets are `governor`'s GCRA limiters; idle ones are dropped by [`Limits::forget_idle`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::config::Config;
use crate::errors::ApiError;

/// A token bucket per key: `rps` sustained, `burst` at once.
pub struct KeyedLimiter<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedLimiter<K> {
    /// `rps` cells per second per key (at least one per 1000 s), at most `burst` (at least 1) at
    /// once.
    pub fn new(rps: f64, burst: f64) -> Self {
        let rps = if rps.is_finite() { rps.max(0.001) } else { 0.001 };
        let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(if burst.is_finite() { burst.clamp(1.0, u32::MAX as f64) as u32 } else { 1 })
            .unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX)).allow_burst(burst);
        Self { limiter: DefaultKeyedRateLimiter::keyed(quota) }
    }

    /// Takes one cell for `key`; `Err(whole seconds to wait, at least 1)` when there is none.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Drops the buckets that are full again (indistinguishable from a new key).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys with state.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// No key has state.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Which budget of a principal a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// GET, HEAD, OPTIONS: answered from caches.
    Read,
    /// Everything else: may publish a command.
    Write,
}

impl RequestKind {
    /// The kind of a request with `method`.
    pub fn of(method: &axum::http::Method) -> Self {
        use axum::http::Method;
        if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
            RequestKind::Read
        } else {
            RequestKind::Write
        }
    }
}

/// A principal's two budgets.
pub struct PrincipalLimits {
    /// Reads per user name.
    pub reads: KeyedLimiter<String>,
    /// Writes per user name.
    pub writes: KeyedLimiter<String>,
}

impl PrincipalLimits {
    /// Takes one cell of `user`'s `kind` budget; `Err(seconds to wait)` when it is empty.
    pub fn check(&self, user: &str, kind: RequestKind) -> Result<(), u64> {
        let user = user.to_string();
        match kind {
            RequestKind::Read => self.reads.check(&user),
            RequestKind::Write => self.writes.check(&user),
        }
    }

    /// Drops idle buckets.
    pub fn forget_idle(&self) {
        self.reads.forget_idle();
        self.writes.forget_idle();
    }
}

/// Every limit of the api.
pub struct Limits {
    /// Per client address (see [`client_key`]), before authentication.
    pub per_address: KeyedLimiter<IpAddr>,
    /// Per principal (user name) and kind of request, after authentication.
    pub per_principal: PrincipalLimits,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Open event streams per principal.
    pub streams: Arc<StreamSlots>,
}

impl Limits {
    /// The limits `config` asks for.
    pub fn new(config: &Config) -> Self {
        Self {
            per_address: KeyedLimiter::new(config.pre_auth_rate_limit_rps, config.pre_auth_rate_limit_burst),
            per_principal: PrincipalLimits {
                reads: KeyedLimiter::new(config.read_rate_limit_rps, config.read_rate_limit_burst),
                writes: KeyedLimiter::new(config.rate_limit_rps, config.rate_limit_burst),
            },
            trusted_proxies: config.trusted_proxies.clone(),
            streams: Arc::new(StreamSlots::new(config.sse_max_streams_per_caller)),
        }
    }

    /// Drops idle buckets (run every minute or so: memory stays proportional to recent clients).
    pub fn forget_idle(&self) {
        self.per_address.forget_idle();
        self.per_principal.forget_idle();
    }
}

/// The address a request is limited by: the peer, unless the peer is a trusted proxy; then the
/// nearest `X-Forwarded-For` hop that is not a trusted proxy (hops are read right to left, as
/// each proxy appends the address it was reached from; a client can only forge hops left of the
/// ones trusted proxies added). An unparseable hop stops the walk at the last trusted one. A
/// request without a peer address (never on a socket) counts as `::`.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*a)));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else { break };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, optionally `[v6]` or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(a) = hop.parse::<IpAddr>() {
        return Some(a);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip()).or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// The bucket key of an address: IPv4 as is, IPv6 by its /64 (one host usually holds a whole
/// /64, so keying by full address would give it 2^64 buckets).
pub fn client_key(a: IpAddr) -> IpAddr {
    match canonical(a) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Counts the open event streams of each principal, up to a cap.
pub struct StreamSlots {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; its slot is freed when this is dropped (the stream's task ends).
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    who: String,
}

impl StreamSlots {
    /// At most `max` streams open per principal.
    pub fn new(max: usize) -> Self {
        Self { max, open: Mutex::new(HashMap::new()) }
    }

    /// A slot for one more stream of `who`, or 429 when `who` has `max` open.
    pub fn open(self: &Arc<Self>, who: &str) -> Result<StreamSlot, ApiError> {
        // A poisoned lock (a panic while holding it) fails closed.
        let Ok(mut open) = self.open.lock() else { return Err(ApiError::TooManyRequests { retry_after_secs: 1 }) };
        let n = open.entry(who.to_string()).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                open.remove(who);
            }
            return Err(ApiError::TooManyRequests { retry_after_secs: 5 });
        }
        *n += 1;
        Ok(StreamSlot { slots: self.clone(), who: who.to_string() })
    }

    /// Streams `who` has open.
    pub fn count(&self, who: &str) -> usize {
        self.open.lock().map(|o| o.get(who).copied().unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(n) = open.get_mut(&self.who)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn reads_and_writes_of_a_principal_draw_on_separate_budgets() {
        use axum::http::Method;
        for (m, kind) in [
            (Method::GET, RequestKind::Read),
            (Method::HEAD, RequestKind::Read),
            (Method::OPTIONS, RequestKind::Read),
            (Method::POST, RequestKind::Write),
            (Method::PUT, RequestKind::Write),
            (Method::PATCH, RequestKind::Write),
            (Method::DELETE, RequestKind::Write),
        ] {
            assert_eq!(RequestKind::of(&m), kind, "{m}");
        }
        let l = PrincipalLimits { reads: KeyedLimiter::new(0.001, 3.0), writes: KeyedLimiter::new(0.001, 2.0) };
        assert!(l.check("u", RequestKind::Write).is_ok());
        assert!(l.check("u", RequestKind::Write).is_ok());
        assert!(l.check("u", RequestKind::Write).is_err(), "writes exhausted");
        for _ in 0..3 {
            assert!(l.check("u", RequestKind::Read).is_ok(), "reads untouched by the writes");
        }
        assert!(l.check("u", RequestKind::Read).is_err());
        assert!(l.check("v", RequestKind::Write).is_ok(), "another principal untouched");
    }

    use super::*;
    use crate::config::parse_proxy;

    #[test]
    fn buckets_limit_per_key_and_refill() {
        let l = KeyedLimiter::new(1000.0, 3.0);
        assert!(l.check(&"a").is_ok());
        assert!(l.check(&"a").is_ok());
        assert!(l.check(&"a").is_ok());
        assert!(l.check(&"a").is_err());
        assert!(l.check(&"b").is_ok(), "another key has its own bucket");
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.check(&"a").is_ok());
        let slow = KeyedLimiter::new(0.5, 1.0);
        assert!(slow.check(&"x").is_ok());
        assert_eq!(slow.check(&"x"), Err(2), "one cell every 2 s");
        // Nonsense configuration still limits.
        let odd = KeyedLimiter::new(f64::NAN, -3.0);
        assert!(odd.check(&"x").is_ok());
        assert!(odd.check(&"x").is_err());
        let huge = KeyedLimiter::new(1e12, 1e12);
        assert!((0..1000).all(|_| huge.check(&"x").is_ok()));
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let l = KeyedLimiter::new(1000.0, 1.0);
        for k in 0..100 {
            assert!(l.check(&k).is_ok());
        }
        assert_eq!(l.len(), 100);
        std::thread::sleep(Duration::from_millis(10));
        l.forget_idle();
        assert!(l.is_empty(), "full buckets are dropped");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_keys() {
        for (addr, key) in [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("2001:db8:1:3::1", "2001:db8:1:3::"),
            ("::1", "::"),
        ] {
            assert_eq!(client_key(ip(addr)), ip(key), "{addr}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = ["127.0.0.1", "10.0.0.0/8"].iter().map(|s| parse_proxy(s).unwrap()).collect();
        let h = |xff: &[&str]| {
            let mut m = HeaderMap::new();
            for v in xff {
                m.append("x-forwarded-for", v.parse().unwrap());
            }
            m
        };
        let cases: &[(&str, &[&str], &[IpNet], &str)] = &[
            // Not trusted: the header is whatever the client says.
            ("198.51.100.1", &["203.0.113.9"], &trusted, "198.51.100.1"),
            ("127.0.0.1", &["203.0.113.9"], &[], "127.0.0.1"),
            // Trusted peer: the last hop it added.
            ("127.0.0.1", &["203.0.113.9"], &trusted, "203.0.113.9"),
            // A forged hop left of the real one is ignored.
            ("127.0.0.1", &["1.2.3.4, 203.0.113.9"], &trusted, "203.0.113.9"),
            ("127.0.0.1", &["1.2.3.4", "203.0.113.9"], &trusted, "203.0.113.9"),
            // Through two trusted proxies.
            ("127.0.0.1", &["1.2.3.4, 203.0.113.9, 10.1.2.3"], &trusted, "203.0.113.9"),
            // Every hop trusted: the leftmost.
            ("127.0.0.1", &["10.9.9.9, 10.1.2.3"], &trusted, "10.9.9.9"),
            // No header: the proxy itself.
            ("127.0.0.1", &[], &trusted, "127.0.0.1"),
            // Garbage stops at the last trusted hop.
            ("127.0.0.1", &["203.0.113.9, garbage"], &trusted, "127.0.0.1"),
            ("127.0.0.1", &["garbage, 10.1.2.3"], &trusted, "10.1.2.3"),
            // Ports and brackets.
            ("127.0.0.1", &["203.0.113.9:4711"], &trusted, "203.0.113.9"),
            ("127.0.0.1", &["[2001:db8::1]"], &trusted, "2001:db8::1"),
            ("127.0.0.1", &["[2001:db8::1]:443"], &trusted, "2001:db8::1"),
            // A v4-mapped peer matches a v4 network.
            ("::ffff:127.0.0.1", &["203.0.113.9"], &trusted, "203.0.113.9"),
        ];
        for (peer, xff, trusted, want) in cases {
            assert_eq!(client_address(Some(ip(peer)), &h(xff), trusted), ip(want), "{peer} {xff:?}");
        }
        assert_eq!(client_address(None, &h(&["203.0.113.9"]), &[]), ip("::"));
    }

    #[test]
    fn proxies_parse() {
        assert_eq!(parse_proxy("127.0.0.1").unwrap(), "127.0.0.1/32".parse::<IpNet>().unwrap());
        assert_eq!(parse_proxy(" 10.0.0.0/8 ").unwrap(), "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(parse_proxy("::1").unwrap(), "::1/128".parse::<IpNet>().unwrap());
        assert_eq!(parse_proxy("::ffff:10.0.0.0/104").unwrap(), "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.local").is_err());
    }

    #[test]
    fn stream_slots_cap_per_principal_and_free_on_drop() {
        let s = Arc::new(StreamSlots::new(2));
        let a1 = s.open("alice").unwrap();
        let _a2 = s.open("alice").unwrap();
        assert!(matches!(s.open("alice"), Err(ApiError::TooManyRequests { .. })));
        let _b = s.open("bob").expect("another principal is not affected");
        drop(a1);
        let _a3 = s.open("alice").expect("a closed stream frees its slot");
        assert_eq!(s.count("alice"), 2);
        let none = Arc::new(StreamSlots::new(0));
        assert!(none.open("alice").is_err());
        assert_eq!(none.count("alice"), 0);
        assert!(none.open.lock().unwrap().is_empty(), "a refusal leaves no entry");
    }
}
