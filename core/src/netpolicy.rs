//! Which addresses the worker may send requests to: `event_bus.allowed_networks`, a
//! comma-separated list of CIDR blocks (`10.0.0.0/8, 2001:db8::/32`) or single addresses. Empty
//! allows every address. Pure Rust (no Postgres), applied to every address a host name resolves
//! to, at connect time — so a DNS answer pointing into an internal network is refused too.

use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Networks(Vec<(IpAddr, u8)>);

impl Networks {
    /// Parse the setting; an error names the entry that is wrong.
    pub fn parse(setting: &str) -> Result<Networks, String> {
        let mut nets = Vec::new();
        for entry in setting.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((a, b)) => (a.trim(), Some(b.trim())),
                None => (entry, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{entry:?} is not an address or CIDR block"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits =
                match bits {
                    None => max,
                    Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                        format!("{entry:?} has a prefix length outside 0..={max}")
                    })?,
                };
            nets.push((ip, bits));
        }
        Ok(Networks(nets))
    }

    /// No restriction configured?
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        // an IPv4 address reached as ::ffff:a.b.c.d is that IPv4 address
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| contains(*net, *bits, ip))
    }
}

fn contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits as u32)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits as u32)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::Networks;

    #[test]
    fn parse_and_match() {
        let n = Networks::parse("10.0.0.0/8, 192.168.1.7 ,2001:db8::/32").unwrap();
        for ok in ["10.1.2.3", "192.168.1.7", "2001:db8::1", "::ffff:10.9.9.9"] {
            assert!(n.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["11.0.0.1", "192.168.1.8", "127.0.0.1", "::1", "2001:db9::1"] {
            assert!(!n.allows(no.parse().unwrap()), "{no}");
        }
        let open = Networks::parse(" ").unwrap();
        assert!(open.is_open() && open.allows("127.0.0.1".parse().unwrap()));
        assert!(Networks::parse("0.0.0.0/0")
            .unwrap()
            .allows("8.8.8.8".parse().unwrap()));
        assert!(!Networks::parse("0.0.0.0/0")
            .unwrap()
            .allows("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
            assert!(Networks::parse(bad).is_err(), "{bad}");
        }
    }
}
