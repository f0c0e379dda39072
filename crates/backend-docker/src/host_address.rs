//! Where containers on an engine reach this machine: the address the daemon hands them for its
//! data API.
//!
//! Engines disagree on what they report. A freshly started Debian dockerd (20.10) gives its
//! default bridge an IPAM entry with a subnet and no gateway; others name the gateway. So the
//! address is found in steps, each saying why it was chosen, and a loopback address is never
//! the answer: from a bridge network, 127.0.0.1 is the container itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use bollard::models::NetworkInspect;

/// An address of this machine that an engine's containers can reach, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub ip: IpAddr,
    pub why: String,
}

/// The option of a bridge network that names its Linux interface.
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";

/// The host's address on an engine's bridge network: its IPAM gateway when the engine names
/// one, else the address of the bridge's interface (`iface_addr` looks it up on this machine),
/// else the first host of its subnet (where Docker puts the gateway when it picks one itself).
pub fn on_bridge(
    net: &NetworkInspect,
    iface_addr: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Option<HostAddress> {
    let configs = net
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_deref())
        .unwrap_or_default();
    let usable = |ip: &IpAddr| !ip.is_loopback() && !ip.is_unspecified();
    if let Some(ip) = configs
        .iter()
        .filter_map(|c| c.gateway.as_deref()?.parse::<IpAddr>().ok())
        .find(usable)
    {
        return Some(HostAddress {
            ip,
            why: "the gateway of the engine's bridge network".into(),
        });
    }
    if let Some(name) = net.options.as_ref().and_then(|o| o.get(BRIDGE_NAME))
        && let Some(ip) = iface_addr(name).map(IpAddr::V4).filter(usable)
    {
        return Some(HostAddress {
            ip,
            why: format!(
                "the address of the bridge interface {name} (the engine names no gateway)"
            ),
        });
    }
    configs.iter().find_map(|c| {
        let subnet = c.subnet.as_deref()?;
        let ip = first_host(subnet)?;
        Some(HostAddress {
            ip: IpAddr::V4(ip),
            why: format!(
                "the first host of the bridge network's subnet {subnet} (the engine names no gateway and its bridge interface is not on this machine)"
            ),
        })
    })
}

/// `172.17.0.0/16` → `172.17.0.1`. IPv4 only: Docker's bridges are.
pub fn first_host(cidr: &str) -> Option<Ipv4Addr> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(1..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some(Ipv4Addr::from((u32::from(addr) & mask) + 1))
}

/// The IPv4 address of one of this machine's interfaces.
pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find_map(|i| match (i.name == name, i.ip()) {
            (true, IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
}

/// The address this machine sends from toward `host:port`, which is how a remote engine (and
/// its containers, through their bridge's NAT) sees it. No packet is sent: connecting a UDP
/// socket only picks the route. `None` when the engine is on this machine (a loopback route).
pub fn toward(host: &str, port: u16) -> Option<HostAddress> {
    use std::net::ToSocketAddrs;
    let target: SocketAddr = (host, port).to_socket_addrs().ok()?.next()?;
    if target.ip().is_loopback() {
        return None;
    }
    let socket = match target {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
    .ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    // An engine at one of this machine's own addresses is local, whatever address names it.
    (!ip.is_loopback() && ip != target.ip()).then(|| HostAddress {
        ip,
        why: format!("this machine's address toward the engine at {host}"),
    })
}

/// `tcp://HOST:PORT` (or `http://`, `https://`) → `(HOST, PORT)`; `None` for a local socket.
pub fn tcp_endpoint(engine: &str) -> Option<(String, u16)> {
    let rest = ["tcp://", "http://", "https://"]
        .iter()
        .find_map(|p| engine.strip_prefix(p))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']')?;
            let port = rest
                .strip_prefix(':')
                .map_or(Some(2375), |p| p.parse().ok())?;
            (h, port)
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 2375),
        },
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(json: &str) -> NetworkInspect {
        serde_json::from_str(json).unwrap()
    }

    /// What a freshly started Debian dockerd 20.10 answers for `GET /networks/bridge`.
    const FRESH_DEBIAN: &str = r#"{
        "Name": "bridge", "Driver": "bridge",
        "IPAM": {"Driver": "default", "Options": null, "Config": [{"Subnet": "172.17.0.0/16"}]},
        "Options": {"com.docker.network.bridge.default_bridge": "true",
                    "com.docker.network.bridge.name": "docker0"}
    }"#;

    #[test]
    fn the_engines_gateway_comes_first() {
        let net = network(
            r#"{"IPAM": {"Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]},
                "Options": {"com.docker.network.bridge.name": "docker0"}}"#,
        );
        let a = on_bridge(&net, |_| Some(Ipv4Addr::new(10, 9, 9, 9))).unwrap();
        assert_eq!(a.ip, "172.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(a.why, "the gateway of the engine's bridge network");
    }

    #[test]
    fn without_a_gateway_the_bridge_interfaces_address_is_used() {
        let net = network(FRESH_DEBIAN);
        let a = on_bridge(&net, |name| {
            (name == "docker0").then_some(Ipv4Addr::new(172, 17, 0, 1))
        })
        .unwrap();
        assert_eq!(a.ip, "172.17.0.1".parse::<IpAddr>().unwrap());
        assert!(a.why.contains("bridge interface docker0"), "{}", a.why);
    }

    #[test]
    fn without_gateway_or_interface_the_first_host_of_the_subnet_is_used() {
        let net = network(FRESH_DEBIAN);
        let a = on_bridge(&net, |_| None).unwrap();
        assert_eq!(a.ip, "172.17.0.1".parse::<IpAddr>().unwrap());
        assert!(a.why.contains("172.17.0.0/16"), "{}", a.why);
    }

    #[test]
    fn a_bridge_without_addresses_gives_none_and_loopback_is_never_an_answer() {
        assert_eq!(on_bridge(&network(r#"{"Name": "bridge"}"#), |_| None), None);
        let net = network(
            r#"{"IPAM": {"Config": [{"Gateway": "127.0.0.1"}]},
                "Options": {"com.docker.network.bridge.name": "lo"}}"#,
        );
        assert_eq!(on_bridge(&net, |_| Some(Ipv4Addr::LOCALHOST)), None);
    }

    #[test]
    fn first_hosts_of_subnets() {
        assert_eq!(
            first_host("172.17.0.0/16"),
            Some(Ipv4Addr::new(172, 17, 0, 1))
        );
        assert_eq!(
            first_host("10.1.2.128/25"),
            Some(Ipv4Addr::new(10, 1, 2, 129))
        );
        assert_eq!(first_host("10.1.2.3/24"), Some(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(first_host("10.1.2.3/32"), None);
        assert_eq!(first_host("fd00::/64"), None);
        assert_eq!(first_host("nonsense"), None);
    }

    #[test]
    fn engine_addresses_are_split_into_host_and_port() {
        assert_eq!(
            tcp_endpoint("tcp://10.0.0.5:2376"),
            Some(("10.0.0.5".into(), 2376))
        );
        assert_eq!(
            tcp_endpoint("tcp://docker-1"),
            Some(("docker-1".into(), 2375))
        );
        assert_eq!(
            tcp_endpoint("http://[fd00::1]:2375"),
            Some(("fd00::1".into(), 2375))
        );
        assert_eq!(tcp_endpoint("unix:///var/run/docker.sock"), None);
    }

    #[test]
    fn an_engine_on_this_machine_is_not_remote() {
        assert_eq!(toward("127.0.0.1", 2375), None);
        assert_eq!(toward("localhost", 2375), None);
    }
}
