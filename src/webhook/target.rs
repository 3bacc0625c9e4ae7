//! Where webhooks may be sent (API.md: targets in loopback, private,
//! link-local or metadata ranges are refused, at creation and at each send
//! after DNS resolution, unless `WEBHOOK_ALLOW_PRIVATE_TARGETS=true`).
//!
//! The same rule serves both moments: [`TargetUrl::parse`] checks the URL
//! and, at creation, the addresses its host resolves to; at send time the
//! delivery client resolves through [`CheckedResolver`], which refuses a
//! name that resolves to any refused address, and connects only to the
//! addresses it checked (so a name that changes its answer between check
//! and connect gains nothing: there is no second lookup).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The longest URL accepted.
pub const MAX_URL_CHARS: usize = 2048;
/// How long a lookup may take, at creation and at send.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook URL that passed the rules (scheme, length, literal address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl(url::Url);

impl TargetUrl {
    /// Checks the URL as written: `https://` (`http://` too if
    /// `allow_private`), at most [`MAX_URL_CHARS`], a host, no user info,
    /// and a literal address outside the refused ranges. Resolution is
    /// [`check_resolved`](Self::check_resolved)'s.
    pub fn parse(raw: &str, allow_private: bool) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars > MAX_URL_CHARS {
            return Err(format!(
                "must be at most {MAX_URL_CHARS} characters (got {chars})"
            ));
        }
        let url = url::Url::parse(raw).map_err(|err| format!("is not a URL ({err})"))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_private => {}
            "http" => {
                return Err(
                    "must be https:// (http:// only with WEBHOOK_ALLOW_PRIVATE_TARGETS=true)"
                        .to_owned(),
                );
            }
            _ => return Err("must be an https:// URL".to_owned()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry user info".to_owned());
        }
        let target = Self(url);
        match target.0.host() {
            None => return Err("must name a host".to_owned()),
            Some(url::Host::Domain("")) => {
                return Err("must name a host".to_owned());
            }
            _ => {}
        }
        if !allow_private && let Some(ip) = target.literal_ip() {
            refuse_if_private(ip)?;
        }
        Ok(target)
    }

    /// The host's address when the URL names one literally.
    #[must_use]
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }

    /// At creation: a host name must resolve, within [`RESOLVE_TIMEOUT`],
    /// to addresses none of which is refused (unless `allow_private`, when
    /// nothing is looked up).
    pub async fn check_resolved(&self, allow_private: bool) -> Result<(), String> {
        if allow_private || self.literal_ip().is_some() {
            return Ok(());
        }
        let host = self.0.host_str().unwrap_or_default();
        let port = self.0.port_or_known_default().unwrap_or(443);
        resolve_checked(host, port).await.map(|_| ())
    }

    /// The URL as stored and sent to.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// `Err` with the reason when `ip` is in a refused range.
pub fn refuse_if_private(ip: IpAddr) -> Result<(), String> {
    if is_refused(ip) {
        Err(format!(
            "names a refused address ({ip}: loopback, private, link-local, shared, metadata or reserved)"
        ))
    } else {
        Ok(())
    }
}

/// Loopback, private, link-local (metadata `169.254.169.254` among them),
/// shared (CGNAT), unspecified, documentation, benchmarking, multicast,
/// broadcast and reserved ranges, and IPv6 equivalents, including IPv4
/// addresses embedded in IPv6 ones (mapped, compatible, NAT64, 6to4).
#[must_use]
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_refused_v4(ip),
        IpAddr::V6(ip) => is_refused_v6(ip),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10, shared address space (CGNAT).
        || (a == 100 && (b & 0xc0) == 64)
        // 192.0.0.0/24, IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4, reserved.
        || a >= 240
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_refused_v4(v4);
    }
    let embedded = |high: u16, low: u16| {
        let [h1, h2] = high.to_be_bytes();
        let [l1, l2] = low.to_be_bytes();
        Ipv4Addr::new(h1, h2, l1, l2)
    };
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // fc00::/7, unique local (AWS's metadata fd00:ec2::254 among them).
        || (segments[0] & 0xfe00) == 0xfc00
        // fe80::/10, link-local; fec0::/10, deprecated site-local.
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32, documentation.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // ::/96, IPv4-compatible (deprecated): the embedded address decides.
        || (segments[..6] == [0; 6] && is_refused_v4(embedded(segments[6], segments[7])))
        // 64:ff9b::/96 (NAT64) and 2002::/16 (6to4) reach IPv4 addresses.
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            && is_refused_v4(embedded(segments[6], segments[7])))
        || (segments[0] == 0x2002 && is_refused_v4(embedded(segments[1], segments[2])))
}

/// Resolves `host`, within [`RESOLVE_TIMEOUT`], and refuses it if any
/// address is refused or there is none.
async fn resolve_checked(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    // `[::1]` arrives bracketed from URLs.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::net::lookup_host((bare, port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| format!("host {host} did not resolve within {RESOLVE_TIMEOUT:?}"))?
        .map_err(|err| format!("host {host} does not resolve ({err})"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("host {host} resolves to no address"));
    }
    for addr in &addrs {
        refuse_if_private(addr.ip()).map_err(|reason| format!("host {host} {reason}"))?;
    }
    Ok(addrs)
}

/// The delivery client's resolver: every lookup checked against the
/// refused ranges (unless private targets are allowed), and the client
/// connects only to the addresses returned here.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    /// `WEBHOOK_ALLOW_PRIVATE_TARGETS`.
    pub allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let addrs = if allow_private {
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0)))
                    .await
                    .map_err(|_| format!("host {host} did not resolve within {RESOLVE_TIMEOUT:?}"))?
                    .map_err(|err| format!("host {host} does not resolve ({err})"))?
                    .collect()
            } else {
                resolve_checked(host, 0).await?
            };
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> bool {
        is_refused(raw.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "169.253.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
        ] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn urls_must_be_https_short_and_not_name_refused_addresses() {
        assert!(TargetUrl::parse("https://hooks.example.com/x", false).is_ok());
        assert!(TargetUrl::parse("http://hooks.example.com/x", false).is_err());
        assert!(TargetUrl::parse("http://127.0.0.1:9/x", true).is_ok());
        assert!(TargetUrl::parse("ftp://hooks.example.com/x", true).is_err());
        assert!(TargetUrl::parse("https://127.0.0.1/x", false).is_err());
        assert!(TargetUrl::parse("https://[::1]/x", false).is_err());
        assert!(TargetUrl::parse("https://[::ffff:a9fe:a9fe]/x", false).is_err());
        assert!(TargetUrl::parse("https://0x7f000001/x", false).is_err());
        assert!(TargetUrl::parse("https://2130706433/x", false).is_err());
        assert!(TargetUrl::parse("https://u:p@hooks.example.com/", false).is_err());
        assert!(TargetUrl::parse("not a url", false).is_err());
        let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
        assert!(TargetUrl::parse(&long, false).is_err());
    }

    #[tokio::test]
    async fn names_that_resolve_to_refused_addresses_are_refused() {
        let url = TargetUrl::parse("https://localhost:8443/hook", false).unwrap();
        assert!(url.check_resolved(false).await.is_err());
        assert!(url.check_resolved(true).await.is_ok());
    }
}
